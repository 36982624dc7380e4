"""Model-agnostic machinery of a VLM critic: prompts, batching, Yes/No token ids, logits at the
answer position, reference-feature handling, and differentiable image preprocessing.

A critic = `VLMCritic(layout)`, where the layout is the model-specific part (see `VLMLayout`):
how an image tensor becomes the model's pixel input (differentiably), how pixel inputs become
LM input embeddings, and how the language model turns embeddings into next-token logits.
Adding a VLM family (LLaVA-OneVision, InternVL, Qwen2.5-VL) means writing a new layout.

Prompts are built with the model's own processor and chat template: one user turn with the images
first (reference, then edited) and the question text after, plus the generation prompt. Token ids
come from the real processor run on blank images of the actual images' sizes, so the number of
image tokens is the one the model expects (also where it depends on the size); the image-token
embeddings are then replaced by the features of the actual images. Sequences are right-padded and
the logits read at each one's last real token.
"""
from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn

# PIL resampling filters (PIL.Image.Resampling values) -> torch interpolate modes. LANCZOS has no
# torch equivalent and is approximated by bicubic; NEAREST has no antialiasing.
_RESAMPLE = {0: "nearest-exact", 1: "bicubic", 2: "bilinear", 3: "bicubic"}
PROMPT_CACHE_SIZE = 4096  # tokenized prompts kept (an image-heavy prompt is ~1-2k ids)


# ---------------------------------------------------------------------------------------------
# Differentiable preprocessing


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> [0, 1], clamped as saving the image would, with a straight-through gradient: a pixel
    the generator pushed past the range still gets the critic's gradient (a plain clamp gives it
    none, and the built-in world's references sit at exactly -1 and 1, where outputs overshoot)."""
    x = (images.float() + 1) / 2
    return x + (x.clamp(0, 1) - x).detach()


def _quantize(x: torch.Tensor) -> torch.Tensor:
    """Round to 8-bit levels in the forward pass, identity gradient (straight-through)."""
    return x + ((x * 255).round() / 255 - x).detach()


def resize(images01: torch.Tensor, size: tuple[int, int], resample: int = 3, *, quantize: bool = False) -> torch.Tensor:
    """Antialiased resize of images in [0, 1] that follows PIL (and torchvision's uint8 path, which
    matches PIL): a horizontal pass, then a vertical one, each clipped to [0, 1] (PIL stores the
    intermediate as 8-bit). `quantize` also rounds both passes to 8-bit levels (straight-through
    gradient), which matches the processor to within rounding ties."""
    if resample not in _RESAMPLE:
        raise ValueError(f"unsupported resample filter {resample}; supported PIL filters: {sorted(_RESAMPLE)}")
    mode = _RESAMPLE[resample]
    h, w = size
    x = images01
    kw = {} if mode == "nearest-exact" else {"antialias": True, "align_corners": False}
    for target in ((x.shape[-2], w), (h, w)):
        if tuple(x.shape[-2:]) != target:
            x = F.interpolate(x, size=target, mode=mode, **kw).clamp(0, 1)
            if quantize:
                x = _quantize(x)
    return x


@dataclass(frozen=True)
class ClipStylePreprocess:
    """The CLIP/SigLIP-style image processor pipeline (optional pad to square with the mean colour,
    resize, optional centre crop, normalise), read from a transformers image processor's settings."""

    size: dict
    resample: int
    crop_size: dict | None
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    pad_to_square: bool = False
    quantize: bool = False

    @classmethod
    def from_image_processor(cls, ip: Any, *, quantize: bool = False) -> "ClipStylePreprocess":
        size = dict(ip.size) if getattr(ip, "do_resize", True) else {}
        size = {k: v for k, v in size.items() if v is not None}
        crop = dict(ip.crop_size) if getattr(ip, "do_center_crop", False) and ip.crop_size else None
        mean = tuple(ip.image_mean) if getattr(ip, "do_normalize", True) else (0.0, 0.0, 0.0)
        std = tuple(ip.image_std) if getattr(ip, "do_normalize", True) else (1.0, 1.0, 1.0)
        resample = int(getattr(ip.resample, "value", ip.resample)) if ip.resample is not None else 2
        return cls(size, resample, crop, mean, std, bool(getattr(ip, "do_pad", False)), quantize)

    def resized_size(self, in_hw: tuple[int, int]) -> tuple[int, int]:
        """(h, w) after padding and resizing, before the centre crop."""
        h, w = in_hw
        if self.pad_to_square:
            h = w = max(h, w)
        s = self.size
        if s.get("height") and s.get("width"):
            return s["height"], s["width"]
        if s.get("shortest_edge"):
            short, long = (h, w) if h <= w else (w, h)
            new_short, new_long = s["shortest_edge"], int(s["shortest_edge"] * long / short)
            return (new_short, new_long) if h <= w else (new_long, new_short)
        if s:
            raise ValueError(f"unsupported image processor size {s}: expected height/width or shortest_edge")
        return h, w

    def output_size(self, in_hw: tuple[int, int]) -> tuple[int, int]:
        """(h, w) of the model input for an image of size `in_hw`."""
        if self.crop_size:
            return self.crop_size["height"], self.crop_size["width"]
        return self.resized_size(in_hw)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) in [-1, 1] -> normalised (N, 3, h, w), differentiable."""
        x = to_unit(images)
        if self.pad_to_square and x.shape[-2] != x.shape[-1]:
            x = _pad_to_square(x, self.mean)
        x = resize(x, self.resized_size(tuple(x.shape[-2:])), self.resample, quantize=self.quantize)
        if self.crop_size:
            ch, cw = self.crop_size["height"], self.crop_size["width"]
            if ch > x.shape[-2] or cw > x.shape[-1]:
                raise ValueError(f"centre crop {ch}x{cw} larger than the resized image {tuple(x.shape[-2:])}")
            top, left = int((x.shape[-2] - ch) / 2.0), int((x.shape[-1] - cw) / 2.0)
            x = x[..., top : top + ch, left : left + cw]
        mean = torch.tensor(self.mean, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
        return (x - mean) / std


def _pad_to_square(x: torch.Tensor, mean: Sequence[float]) -> torch.Tensor:
    """Pad to a centred square with the background colour int(255 mean) / 255, as LLaVA's processor."""
    h, w = x.shape[-2:]
    side = max(h, w)
    canvas = torch.tensor([int(m * 255) / 255 for m in mean], device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    canvas = canvas.expand(x.shape[0], 3, side, side).clone()
    top, left = (side - h) // 2, (side - w) // 2
    canvas[..., top : top + h, left : left + w] = x
    return canvas


# ---------------------------------------------------------------------------------------------
# Tokens


def answer_token_ids(tokenizer: Any, word: str) -> list[int]:
    """Ids of `word` and ' ' + `word` that are single tokens (deduplicated, in that order)."""
    ids: list[int] = []
    for text in (word, " " + word):
        enc = tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(enc) == 1 and enc[0] not in ids and enc[0] != tokenizer.unk_token_id:
            ids.append(enc[0])
    if not ids:
        raise ValueError(f"the critic's tokenizer spells {word!r} with several tokens (and ' {word}' too); cannot read a one-token answer")
    return ids


# ---------------------------------------------------------------------------------------------
# The critic


class VLMLayout(Protocol):
    """The model-specific part of a critic.

    Optional attributes (absent = False), for models whose image encoding is not fixed-size:
    - `multi_image_mode`: images are encoded differently in prompts with several images
      (LLaVA-OneVision: anyres tiles alone, base resolution next to another image); the critic then
      calls `pixel_values(images, n_images)` with the number of images of the prompt.
    - `needs_image_sizes`: `logits_at(..., image_sizes=...)` receives the (h, w) of every image of
      every prompt, in prompt order (Qwen2.5-VL's M-RoPE positions depend on each image's grid).
    `image_features` may return a (N, T, D) tensor or a list of N (T_i, D) tensors.
    """

    model: nn.Module  # the transformers VLM (frozen by VLMCritic)
    processor: Any  # its processor (tokenizer + image processor + chat template)
    image_token_id: int

    def blank_image(self) -> Any:
        """A PIL image whose processing gives the image-token count of any image the critic sees."""
        ...

    def pixel_values(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) in [-1, 1] -> the vision tower's input, differentiable."""
        ...

    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Vision input -> (N, T, D) LM input embeddings, T = image tokens per image."""
        ...

    def logits_at(self, input_ids: torch.Tensor, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
        """Next-token logits (Q, V) at positions `last` (one per right-padded sequence)."""
        ...


def causal_lm_logits_at(
    lm: nn.Module, lm_head: nn.Module, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor, last: torch.Tensor
) -> torch.Tensor:
    """Run a decoder-only LM on right-padded embeddings and project only the positions `last`."""
    q, length = attention_mask.shape
    position_ids = torch.arange(length, device=inputs_embeds.device).unsqueeze(0).expand(q, -1)
    out = lm(inputs_embeds=inputs_embeds, attention_mask=attention_mask, position_ids=position_ids, use_cache=False)
    hidden = out.last_hidden_state[torch.arange(q, device=last.device), last]
    return lm_head(hidden).float()


def freeze(model: nn.Module, *, grad_checkpointing: bool = False) -> nn.Module:
    """requires_grad False and eval mode; with `grad_checkpointing` the decoder/encoder layers
    recompute activations in the backward pass (inputs still receive gradients)."""
    model.requires_grad_(False).eval()
    if grad_checkpointing:
        enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
        enable()
        # transformers only checkpoints layers in training mode; flag the layers themselves (not their
        # children, so dropout and friends keep their eval behaviour).
        from transformers.modeling_layers import GradientCheckpointingLayer

        for m in model.modules():
            if isinstance(m, GradientCheckpointingLayer) and m.gradient_checkpointing:
                m.training = True
    return model


class VLMCritic:
    """A frozen VLM answering Yes/No questions about (reference, edited) image pairs.

    Implements harness.models.base.Critic; `generate` gives free-text answers (local VLM judges).
    """

    def __init__(self, layout: VLMLayout, *, name: str = ""):
        self.layout = layout
        self.model = layout.model
        self.processor = layout.processor
        self.tokenizer = layout.processor.tokenizer
        self.name = name or type(self.model).__name__
        self.yes_ids = answer_token_ids(self.tokenizer, "Yes")
        self.no_ids = answer_token_ids(self.tokenizer, "No")
        self._prompt_ids: OrderedDict[tuple, list[int]] = OrderedDict()
        pad = self.tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else (self.tokenizer.eos_token_id or 0)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def to(self, device: str | torch.device) -> "VLMCritic":
        self.model.to(device)
        return self

    # -- prompts ------------------------------------------------------------------------------

    def chat_prompt(self, question: str, n_images: int) -> str:
        content = [{"type": "image"} for _ in range(n_images)] + [{"type": "text", "text": question}]
        messages = [{"role": "user", "content": content}]
        return self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    def prompt_ids(self, question: str, n_images: int, sizes: Sequence[tuple[int, int]] | None = None) -> list[int]:
        """Token ids of the chat prompt, image tokens expanded as the processor does (cached).

        sizes: the (h, w) of each image, for models whose image-token count depends on it (the
        processor then sees blank images of these sizes); None = the layout's blank image."""
        sizes = None if sizes is None else tuple((int(h), int(w)) for h, w in sizes)
        if sizes is not None and len(sizes) != n_images:
            raise ValueError(f"prompt_ids: {n_images} images but {len(sizes)} sizes")
        key = (question, n_images, sizes)
        if key in self._prompt_ids:
            self._prompt_ids.move_to_end(key)
            return self._prompt_ids[key]
        text = self.chat_prompt(question, n_images)
        images = [self.layout.blank_image() for _ in range(n_images)] if sizes is None else [_blank(hw) for hw in sizes]
        # one nested list per prompt: the processor treats them as the images of one multi-image sample
        ids = self.processor(text=[text], images=[images] if images else None, return_tensors="pt")["input_ids"][0].tolist()
        self._prompt_ids[key] = ids
        if len(self._prompt_ids) > PROMPT_CACHE_SIZE:
            self._prompt_ids.popitem(last=False)
        return ids

    # -- images -------------------------------------------------------------------------------

    def encode_images(self, images: torch.Tensor, n_images: int = 0) -> torch.Tensor | list[torch.Tensor]:
        """(N, 3, H, W) in [-1, 1] -> (N, T, D) LM input embeddings (or N (T_i, D)); differentiable.
        n_images: images in the prompt they go to (used by `multi_image_mode` layouts only)."""
        images = images.to(self.device)
        if getattr(self.layout, "multi_image_mode", False):
            return self.layout.image_features(self.layout.pixel_values(images, n_images or 1))
        return self.layout.image_features(self.layout.pixel_values(images))

    # -- Critic protocol ----------------------------------------------------------------------

    def next_token_logits(
        self,
        questions: list[str],
        edited: torch.Tensor,
        ref: torch.Tensor | None = None,
        index: torch.Tensor | Sequence[int] | None = None,
        *,
        ref_mask: Sequence[bool] | None = None,
    ) -> torch.Tensor:
        """(Q, V) float32 logits of the first answer token. Question q sees ref[index[q]] (first) and
        edited[index[q]]; `ref_mask[q]` False shows it the edited image alone (e.g. the paper's
        removal question). Gradients flow to `edited`; `ref` is encoded without gradient."""
        q = len(questions)
        b = edited.shape[0]
        if index is None:
            if b not in (q, 1):
                raise ValueError(f"{q} questions and {b} edited images: pass `index` (image of each question)")
            index = [0] * q if b == 1 else list(range(q))
        index = [int(i) for i in (index.tolist() if isinstance(index, torch.Tensor) else index)]
        if len(index) != q or any(not 0 <= i < b for i in index):
            raise ValueError(f"index must have {q} entries in [0, {b}), got {index}")
        if ref is not None and ref.shape[0] != b:
            raise ValueError(f"ref has {ref.shape[0]} images, edited has {b}")
        mask = [ref is not None] * q if ref_mask is None else [bool(m) and ref is not None for m in ref_mask]
        if len(mask) != q:
            raise ValueError(f"ref_mask must have {q} entries, got {len(mask)}")

        used = sorted(set(index))
        slot = {i: k for k, i in enumerate(used)}
        # features per image count of the prompt (one group unless the layout encodes them differently)
        multi = getattr(self.layout, "multi_image_mode", False)
        group = [(2 if m else 1) if multi else 0 for m in mask]
        edit_feats = {g: self.encode_images(edited[used], g) for g in sorted(set(group))}
        ref_feats = {}
        if any(mask):
            with torch.no_grad():
                ref_feats = {g: self.encode_images(ref[used], g) for g in sorted({g for g, m in zip(group, mask) if m})}

        edit_hw = tuple(edited.shape[-2:])
        ref_hw = tuple(ref.shape[-2:]) if ref is not None else None
        sizes = [[ref_hw, edit_hw] if m else [edit_hw] for m in mask]
        ids = [self.prompt_ids(qs, len(hw), hw) for qs, hw in zip(questions, sizes)]
        length = max(len(x) for x in ids)
        device = self.device
        input_ids = torch.full((q, length), self.pad_id, dtype=torch.long)
        attention = torch.zeros((q, length), dtype=torch.long)
        for k, x in enumerate(ids):
            input_ids[k, : len(x)] = torch.tensor(x)
            attention[k, : len(x)] = 1
        input_ids, attention = input_ids.to(device), attention.to(device)
        last = attention.sum(1) - 1

        embed = self.model.get_input_embeddings()
        inputs_embeds = embed(input_ids)
        feats = []
        for k in range(q):
            s = slot[index[k]]
            if mask[k]:
                feats.append(ref_feats[group[k]][s])
            feats.append(edit_feats[group[k]][s])
        feats = torch.cat(feats).to(inputs_embeds.dtype)
        image_mask = input_ids == self.layout.image_token_id
        if int(image_mask.sum()) != feats.shape[0]:
            raise RuntimeError(f"{int(image_mask.sum())} image tokens in the prompts but {feats.shape[0]} image features")
        inputs_embeds = inputs_embeds.masked_scatter(image_mask.unsqueeze(-1), feats)
        if getattr(self.layout, "needs_image_sizes", False):
            return self.layout.logits_at(input_ids, inputs_embeds, attention, last, image_sizes=sizes)
        return self.layout.logits_at(input_ids, inputs_embeds, attention, last)

    def yes_no_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """(Q, V) -> (Q, 2) [Yes, No] logits; several spellings of a word pool by logsumexp."""
        return torch.stack([logits[:, self.yes_ids].logsumexp(-1), logits[:, self.no_ids].logsumexp(-1)], dim=-1)

    # -- free text ----------------------------------------------------------------------------

    @torch.no_grad()
    def generate(self, images: Sequence[Any], prompt: str, max_new_tokens: int = 64) -> str:
        """Greedy text answer to `prompt` about `images` (PIL images or (3, H, W) tensors in [-1, 1]),
        through the model's own processor."""
        pils = [_to_pil(im) for im in images]
        text = self.chat_prompt(prompt, len(pils))
        enc = self.processor(text=[text], images=[pils] if pils else None, return_tensors="pt").to(self.device)
        if "pixel_values" in enc:
            enc["pixel_values"] = enc["pixel_values"].to(self.model.dtype)
        out = self.model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=self.pad_id)
        return self.tokenizer.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True).strip()

    # -- storage ------------------------------------------------------------------------------

    def save_pretrained(self, folder: str | os.PathLike) -> None:
        """Write model + processor (atomically) in the format `from_pretrained(folder)` reads."""
        from harness.models.tiny import write_folder_atomically

        def fill(tmp):
            self.model.save_pretrained(tmp)
            self.processor.save_pretrained(tmp)

        write_folder_atomically(folder, fill)


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def load_vlm(model_cls: Any, cfg: Any, device: str | torch.device | None, *, what: str) -> tuple[nn.Module, Any]:
    """`model_cls.from_pretrained(cfg.path)` + its AutoProcessor, moved to `device` and frozen (with
    gradient checkpointing when `cfg.grad_checkpointing`). cfg: path, revision, dtype, and optionally
    attn_implementation ('' = transformers' default)."""
    from transformers import AutoProcessor

    if not cfg.path:
        raise ValueError(f"critic.path: empty; set it to the folder or hub id of {what}")
    kw: dict[str, Any] = {"revision": cfg.revision or None}
    attn = getattr(cfg, "attn_implementation", "")
    try:
        model = model_cls.from_pretrained(cfg.path, dtype=DTYPES[cfg.dtype], **({"attn_implementation": attn} if attn else {}), **kw)
        processor = AutoProcessor.from_pretrained(cfg.path, **kw)
    except (OSError, ValueError) as e:
        raise ValueError(f"critic.path: cannot load {what} ({model_cls.__name__}) and its processor from {cfg.path}: {e}") from e
    model.to(torch.device(device or "cpu"))
    freeze(model, grad_checkpointing=cfg.grad_checkpointing)
    return model, processor


def _blank(hw: tuple[int, int]):
    from PIL import Image

    return Image.new("RGB", (hw[1], hw[0]))


def _to_pil(image: Any):
    from PIL import Image

    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, torch.Tensor):
        if image.ndim != 3 or image.shape[0] != 3:
            raise ValueError(f"expected a (3, H, W) image tensor in [-1, 1], got shape {tuple(image.shape)}")
        arr = (to_unit(image.detach().cpu()) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
        return Image.fromarray(arr)
    raise TypeError(f"expected a PIL image or a tensor, got {type(image).__name__}")


__all__ = [
    "ClipStylePreprocess",
    "VLMCritic",
    "VLMLayout",
    "answer_token_ids",
    "causal_lm_logits_at",
    "freeze",
    "load_vlm",
    "resize",
    "to_unit",
]
