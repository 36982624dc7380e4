"""LLaVA-OneVision critics: transformers' LlavaOnevisionForConditionalGeneration (SigLIP, a
projector, a Qwen2 LM) with its LlavaOnevisionProcessor.

The processor encodes an image alone in a prompt with "anyres": a base crop of the whole image plus
tiles of the image resized (aspect kept, ceil) and zero-padded to the best grid resolution among
`image_grid_pinpoints`; the model unpads the tile features to the image's aspect ratio, pools them
when they exceed `anyres_max_N` crops, and ends each feature row with `image_newline`. Images that
share a prompt with others (our reference + edited pairs) are padded to square with the mean colour
and encoded at base resolution, plus one `image_newline`. `AnyResPreprocess` reproduces both paths
with differentiable torch ops; the features go through the model's own projector and
`pack_image_features`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from harness.models.critic import ClipStylePreprocess, VLMCritic, causal_lm_logits_at, load_vlm, resize, to_unit
from harness.registry import CRITICS, Spec


@dataclass
class LlavaOnevisionCriticConfig:
    name: str = "llava_onevision"
    path: str = ""  # folder or hub id of a LlavaOnevisionForConditionalGeneration + its processor
    revision: str = ""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    # Recompute activations in the backward pass (gradients still reach the edited image).
    grad_checkpointing: bool = False
    # Round the differentiable preprocessing to 8-bit levels (straight-through), as the processor does.
    quantize: bool = False
    attn_implementation: Literal["", "eager", "sdpa", "flash_attention_2"] = ""  # '' = transformers' default


def best_resolution(hw: tuple[int, int], pinpoints: list[tuple[int, int]]) -> tuple[int, int]:
    """The grid resolution anyres picks: most of the image's pixels kept, then least padding."""
    h, w = hw
    best, most, waste = None, 0, math.inf
    for ph, pw in pinpoints:
        scale = min(pw / w, ph / h)
        kept = min(int(w * scale) * int(h * scale), w * h)
        wasted = ph * pw - kept
        if kept > most or (kept == most and wasted < waste):
            best, most, waste = (ph, pw), kept, wasted
    return best


def fit_size(hw: tuple[int, int], target: tuple[int, int]) -> tuple[int, int]:
    """(h, w) of the image resized into `target` with its aspect ratio kept (ceil, as the processor)."""
    (h, w), (th, tw) = hw, target
    if tw / w < th / h:
        return min(math.ceil(h * tw / w), th), tw
    return th, min(math.ceil(w * th / h), tw)


@dataclass(frozen=True)
class AnyResPreprocess:
    """LlavaOnevisionImageProcessor as differentiable torch ops (both of its paths)."""

    crop: int  # side of the base crop and of each tile (384 for the real models)
    pinpoints: tuple[tuple[int, int], ...]
    resample: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    quantize: bool = False

    @classmethod
    def from_image_processor(cls, ip: Any, *, quantize: bool = False) -> "AnyResPreprocess":
        size = dict(ip.size)
        side = size.get("height") or size.get("shortest_edge")
        if size.get("height") and size.get("width") and size["height"] != size["width"]:
            raise ValueError(f"LLaVA-OneVision processor size {size}: expected square crops")
        resample = int(getattr(ip.resample, "value", ip.resample))
        return cls(int(side), tuple(tuple(p) for p in ip.image_grid_pinpoints), resample,
                   tuple(ip.image_mean), tuple(ip.image_std), quantize)

    def _normalize(self, x: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor(self.mean, device=x.device, dtype=x.dtype).view(3, 1, 1)
        std = torch.tensor(self.std, device=x.device, dtype=x.dtype).view(3, 1, 1)
        return (x - mean) / std

    def grid(self, hw: tuple[int, int]) -> tuple[int, int]:
        """(rows, columns) of anyres tiles for an image of size `hw`."""
        bh, bw = best_resolution(hw, list(self.pinpoints))
        return bh // self.crop, bw // self.crop

    def single(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) in [-1, 1] -> (N, 1 + tiles, 3, crop, crop): the base crop, then the tiles row by row."""
        x = to_unit(images)
        hw = tuple(x.shape[-2:])
        (bh, bw), s = best_resolution(hw, list(self.pinpoints)), self.crop
        nh, nw = fit_size(hw, (bh, bw))
        fitted = resize(x, (nh, nw), self.resample, quantize=self.quantize)
        left, top = (bw - nw) // 2, (bh - nh) // 2
        canvas = F.pad(fitted, (left, bw - nw - left, top, bh - nh - top))  # zeros: black, as the processor
        tiles = canvas.unfold(-2, s, s).unfold(-2, s, s)  # (N, 3, rows, cols, s, s)
        tiles = tiles.permute(0, 2, 3, 1, 4, 5).reshape(x.shape[0], -1, 3, s, s)
        base = resize(x, (s, s), self.resample, quantize=self.quantize).unsqueeze(1)
        return self._normalize(torch.cat([base, tiles], dim=1))

    def multi(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) in [-1, 1] -> (N, 1, 3, crop, crop): padded to square with the mean colour, resized."""
        clip = ClipStylePreprocess({"height": self.crop, "width": self.crop}, self.resample, None, self.mean, self.std,
                                   pad_to_square=True, quantize=self.quantize)
        return clip(images).unsqueeze(1)


class LlavaOnevisionLayout:
    """VLMLayout of LlavaOnevisionForConditionalGeneration (see the module docstring)."""

    multi_image_mode = True

    def __init__(self, model: nn.Module, processor: Any, *, quantize: bool = False):
        self.model = model
        self.processor = processor
        cfg = model.config
        self.image_token_id = int(cfg.image_token_id)
        self.preprocess = AnyResPreprocess.from_image_processor(processor.image_processor, quantize=quantize)
        vision = cfg.vision_config.image_size
        if self.preprocess.crop != vision:
            raise ValueError(f"processor crops {self.preprocess.crop} px but the vision tower takes {vision} px")
        if [list(p) for p in self.preprocess.pinpoints] != [list(p) for p in cfg.image_grid_pinpoints]:
            raise ValueError("the processor's image_grid_pinpoints differ from the model config's")

    def blank_image(self) -> Any:
        from PIL import Image

        return Image.new("RGB", (self.preprocess.crop, self.preprocess.crop))

    def pixel_values(self, images: torch.Tensor, n_images: int = 1) -> dict[str, torch.Tensor]:
        """The model's image inputs for images in a prompt with `n_images` images (anyres when alone)."""
        pv = self.preprocess.single(images) if n_images == 1 else self.preprocess.multi(images)
        sizes = torch.tensor([list(images.shape[-2:])] * images.shape[0], device=images.device)
        return {"pixel_values": pv.to(self.model.dtype), "image_sizes": sizes}

    def image_features(self, inputs: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        m, cfg = self.model.model, self.model.config
        pv = inputs["pixel_values"]
        n, crops = pv.shape[:2]
        out = m.vision_tower(pv.flatten(0, 1), output_hidden_states=True)
        layer = cfg.vision_feature_layer
        hidden = out.hidden_states[layer] if isinstance(layer, int) else torch.cat([out.hidden_states[i] for i in layer], dim=-1)
        if cfg.vision_feature_select_strategy == "default":
            hidden = hidden[:, 1:]
        feats = m.multi_modal_projector(hidden).split(crops)
        packed, _ = m.pack_image_features(list(feats), inputs["image_sizes"], image_newline=m.image_newline,
                                          vision_aspect_ratio=cfg.vision_aspect_ratio)
        return packed

    def logits_at(self, input_ids: torch.Tensor, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
        return causal_lm_logits_at(self.model.model.language_model, self.model.lm_head, inputs_embeds, attention_mask, last)


def load_llava_onevision_critic(cfg: LlavaOnevisionCriticConfig, device: str | torch.device | None = None) -> VLMCritic:
    from transformers import LlavaOnevisionForConditionalGeneration

    model, processor = load_vlm(LlavaOnevisionForConditionalGeneration, cfg, device, what="a LLaVA-OneVision model")
    return VLMCritic(LlavaOnevisionLayout(model, processor, quantize=cfg.quantize), name=f"llava_onevision:{cfg.path}")


CRITICS.register("llava_onevision", Spec(LlavaOnevisionCriticConfig, build=load_llava_onevision_critic,
                                         help="LlavaOnevisionForConditionalGeneration (SigLIP anyres + Qwen2)"))

__all__ = ["AnyResPreprocess", "LlavaOnevisionCriticConfig", "LlavaOnevisionLayout", "best_resolution", "fit_size",
           "load_llava_onevision_critic"]
