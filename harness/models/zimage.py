"""Z-Image (diffusers ZImageTransformer2DModel) as the generator backbone, with reference-image tokens
placed as the public NP-Edit reimplementation (github.com/nupurkmr9/npedit, models/zimage_denoiser.py)
places them, so that project's checkpoints load and sample as they were trained.

Conventions (checked against diffusers' ZImagePipeline in tests/test_zimage_backbone.py):
- Ours: x_t = (1 - t) x + t eps, t = 1 pure noise, v = eps - x. Z-Image's transformer takes the time
  1 - t (1 = clean) and predicts -v: the denoiser converts both ways.
- Latents are the VAE's (B, C, H/8, W/8), shifted and scaled as the VAE config says (FLUX's VAE:
  shift 0.1159, scale 0.3611); the transformer patchifies them 2 x 2 itself.
- Text: the Qwen3 text encoder's second-to-last hidden states of the chat-templated prompt, its valid
  tokens only (ZImagePipeline._encode_prompt). Z-Image has no pooled embedding: a TextEmbedding's
  `hidden` holds the features padded to max_sequence_length and `pooled` the (B, L) mask of the valid
  tokens, from which the denoiser takes each caption's own tokens.
- The time shift of the samplers is the scheduler's (Z-Image: a static shift).

Reference conditioning (npedit): the clean reference latents and the noisy target are the two frames of
one (C, 2, h, w) input (reference first), so Z-Image's patchifier gives them the same (row, column)
RoPE positions one frame apart, after the caption; image tokens come before the caption tokens. With
`ref_modulation: clean` (npedit) the reference tokens are modulated by the time embedding of a clean
image (Z-Image time 1) and every other token (target, padding, caption) by the sample's time, through
the per-token modulation of diffusers' blocks; `shared` modulates every token by the sample's time
(diffusers' own forward on the two frames). The output keeps the target frame. With ref=None the
denoiser is the plain pretrained transformer, bit for bit. One difference from npedit: the caption's
padded length (which places the image frames) is each sample's own, as diffusers computes it, where
npedit's batched path takes the longest caption of the batch; a batch of one is the same.

Checkpoints of that project (`weights:`): npedit saves `ZImageDenoiser.state_dict()` with
`torch.save`, keys `transformer.<diffusers ZImageTransformer2DModel key>`. `read_transformer_weights`
loads such a file with torch.load(weights_only=True) (or a .safetensors file), drops the wrapper
prefixes `_orig_mod.` (torch.compile), `module.` (DDP) and `transformer.`, and the result must match
the transformer's keys exactly (full weights; a LoRA checkpoint is refused by name).
"""
from __future__ import annotations

import contextlib
import copy
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Literal

import torch
from torch import nn

from harness.config import nohash
from harness.models.base import TextEmbedding, cached_text_embedding
from harness.models.flux import scheduler_shift
from harness.models.loading import component_loader, make_trainable, pipeline_components, read_json
from harness.models.sd3 import DTYPES, as_time
from harness.registry import BACKBONES, Spec

DEFAULT_LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
BLOCK_LISTS = ("noise_refiner", "context_refiner", "layers")
PATCH, F_PATCH = 2, 1
DEFAULT_RESOLUTION = 1024  # ZImagePipeline's default image side


@dataclass
class ZImageConfig:
    name: str = "zimage"
    # diffusers folder or hub id with transformer/, vae/, text_encoder/ (Qwen3) + tokenizer/, scheduler/.
    path: str = ""
    revision: str = ""  # hub revision (commit, branch or tag); '' = default branch
    # Transformer weights loaded over the pretrained ones: a checkpoint of the public NP-Edit
    # reimplementation (torch.save of its ZImageDenoiser: keys 'transformer.*') or a .safetensors file.
    weights: str = ""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    trainable_dtype: Literal["float32", "bfloat16"] = "float32"
    resolution: int = 0  # working resolution in pixels (square); 0 = 1024
    # Time modulation of the reference tokens: that of a clean image ('clean', npedit) or the sample's ('shared').
    ref_modulation: Literal["clean", "shared"] = "clean"
    grad_checkpointing: bool = False
    lora_rank: int = 0  # LoRA on trainable denoisers (0 = full fine-tuning); alpha 0 = rank
    lora_alpha: float = 0.0
    lora_targets: list[str] = field(default_factory=lambda: list(DEFAULT_LORA_TARGETS))
    shift: float = 0.0  # time shift of the samplers; 0 = the folder's scheduler
    max_sequence_length: int = 512  # caption tokens (ZImagePipeline: 512)
    fsdp: bool = False  # shard every denoiser's blocks with FSDP2 over all ranks
    text_cache_size: int = nohash(1024, help="prompts whose embeddings are kept in memory")

    def validate(self) -> None:
        if self.lora_rank < 0 or self.shift < 0 or self.resolution < 0:
            raise ValueError(f"lora_rank, shift and resolution must be >= 0, got {self.lora_rank}, {self.shift}, "
                             f"{self.resolution}")
        if self.lora_rank and not self.lora_targets:
            raise ValueError("lora_targets must name at least one module when lora_rank > 0")
        if self.max_sequence_length < 1:
            raise ValueError(f"max_sequence_length must be >= 1, got {self.max_sequence_length}")


# ---------------------------------------------------------------------------------------------
# Checkpoints of the public NP-Edit reimplementation


WRAPPER_PREFIXES = ("module.", "transformer.")


def map_npedit_key(key: str) -> str:
    """'transformer.layers.0.attention.to_q.weight' (npedit's ZImageDenoiser) -> 'layers.0.attention.to_q.weight'."""
    key = key.replace("_orig_mod.", "")
    for prefix in WRAPPER_PREFIXES:
        if key.startswith(prefix):
            key = key[len(prefix):]
    return key


def read_transformer_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """A checkpoint's tensors under diffusers ZImageTransformer2DModel key names (see the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"weights: {path}: file not found")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # pickle errors, truncated files: name the file
            raise ValueError(f"weights: {path}: not a torch checkpoint of tensors ({type(e).__name__}: {e})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"weights: {path}: expected a mapping of tensor names to tensors (a state_dict)")
    mapped = {map_npedit_key(k): v for k, v in state.items()}
    if len(mapped) != len(state):
        raise ValueError(f"weights: {path}: keys collide once the wrapper prefixes are dropped")
    if any("lora_" in k for k in mapped):
        raise ValueError(f"weights: {path}: a LoRA checkpoint (lora_ keys); merge it into full weights first")
    return mapped


def load_transformer_weights(transformer: nn.Module, path: str | Path) -> None:
    state = read_transformer_weights(path)
    own = transformer.state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or unexpected:
        raise ValueError(f"weights: {path}: does not match the transformer ({len(missing)} missing, e.g. "
                         f"{missing[:3]}; {len(unexpected)} unexpected, e.g. {unexpected[:3]})")
    bad = [k for k in own if own[k].shape != state[k].shape]
    if bad:
        raise ValueError(f"weights: {path}: shape of {bad[0]} is {tuple(state[bad[0]].shape)}, the transformer's "
                         f"{tuple(own[bad[0]].shape)}")
    transformer.load_state_dict(state, strict=True)


# ---------------------------------------------------------------------------------------------
# The denoiser


def captions(text: TextEmbedding) -> list[torch.Tensor]:
    """Each caption's valid tokens (`pooled` holds the token mask)."""
    return [h[m > 0.5] for h, m in zip(text.hidden, text.pooled)]


class ZImageDenoiser(nn.Module):
    """v = D(x_t, t, text, ref) around a ZImageTransformer2DModel (see the module docstring). Its
    state_dict is `transformer.*` (plus LoRA weights), the key layout of npedit's checkpoints."""

    def __init__(self, transformer: nn.Module, *, ref_modulation: str = "clean", compute_dtype: torch.dtype = torch.float32):
        super().__init__()
        self.transformer = transformer
        self.ref_modulation = ref_modulation
        self.compute_dtype = compute_dtype

    @property
    def has_adapter(self) -> bool:
        return bool(getattr(self.transformer, "peft_config", None))

    @contextlib.contextmanager
    def adapter_disabled(self) -> Iterator[None]:
        if not self.has_adapter:
            raise RuntimeError("this denoiser has no LoRA adapter to disable (backbone lora_rank is 0)")
        self.transformer.disable_adapters()
        try:
            yield
        finally:
            self.transformer.enable_adapters()

    def forward(self, x_t: torch.Tensor, t: float | torch.Tensor, text: TextEmbedding, ref: torch.Tensor | None = None) -> torch.Tensor:
        tr = self.transformer
        batch = x_t.shape[0]
        if text.hidden.shape[0] != batch or text.pooled.shape[0] != batch:
            raise ValueError(f"text embedding batch {text.hidden.shape[0]} does not match x_t batch {batch}")
        if x_t.shape[-1] % PATCH or x_t.shape[-2] % PATCH:
            raise ValueError(f"Z-Image latents need an even height and width, got {tuple(x_t.shape[-2:])}")
        if ref is not None and (ref.shape != x_t.shape):
            raise ValueError(f"reference latents {tuple(ref.shape)} must have the shape of x_t {tuple(x_t.shape)} "
                             "(they are the other frame of one input)")
        wdtype = tr.all_x_embedder[f"{PATCH}-{F_PATCH}"].weight.dtype
        tz = 1.0 - as_time(t, batch, x_t.device)  # Z-Image's time: 1 = clean
        caps = [c.to(wdtype) for c in captions(text)]
        with torch.autocast(x_t.device.type, dtype=self.compute_dtype, enabled=self.compute_dtype != torch.float32):
            if ref is None:
                frames = [x.unsqueeze(1) for x in x_t.to(wdtype)]
                out = [o[:, 0] for o in tr(frames, tz, caps, return_dict=False)[0]]
            else:
                frames = [torch.stack([r, x], dim=1) for r, x in zip(ref.detach().to(wdtype), x_t.to(wdtype))]
                if self.ref_modulation == "shared":
                    out = [o[:, 1] for o in tr(frames, tz, caps, return_dict=False)[0]]
                else:
                    out = self.forward_two_modulations(frames, tz, caps)
        return -torch.stack(out).to(x_t.dtype)

    def forward_two_modulations(self, frames: list[torch.Tensor], tz: torch.Tensor, caps: list[torch.Tensor],
                                clean: bool = True) -> list[torch.Tensor]:
        """diffusers' ZImageTransformer2DModel.forward (basic mode) on two-frame inputs, with the first
        frame's tokens modulated as a clean image (`clean`; False: as the sample, which is diffusers' own
        forward). Returns each sample's second frame of the output (C, h, w)."""
        tr = self.transformer
        device = frames[0].device
        key = f"{PATCH}-{F_PATCH}"
        adaln_noisy = tr.t_embedder(tz * tr.t_scale).type_as(frames[0])
        adaln_clean = tr.t_embedder(torch.ones_like(tz) * tr.t_scale).type_as(frames[0]) if clean else adaln_noisy
        n_ref = (frames[0].shape[-2] // PATCH) * (frames[0].shape[-1] // PATCH)
        x, caps, sizes, x_pos, cap_pos, x_pad, cap_pad = tr.patchify_and_embed(frames, caps, PATCH, F_PATCH)

        x_lens = [len(v) for v in x]
        x_noise = [[0] * n_ref + [1] * (n - n_ref) for n in x_lens]
        x = tr.all_x_embedder[key](torch.cat(x, dim=0))
        x, x_freqs, x_mask, _, x_noise_t = tr._prepare_sequence(list(x.split(x_lens, dim=0)), x_pos, x_pad,
                                                                tr.x_pad_token, x_noise, device)
        for layer in tr.noise_refiner:
            x = self._call(layer, x, x_mask, x_freqs, None, x_noise_t, adaln_noisy, adaln_clean)

        cap_lens = [len(c) for c in caps]
        caps = tr.cap_embedder(torch.cat(caps, dim=0))
        caps, cap_freqs, cap_mask, _, _ = tr._prepare_sequence(list(caps.split(cap_lens, dim=0)), cap_pos, cap_pad,
                                                               tr.cap_pad_token, None, device)
        for layer in tr.context_refiner:
            caps = self._call(layer, caps, cap_mask, cap_freqs)

        unified, freqs, mask, _ = tr._build_unified_sequence(x, x_freqs, x_lens, None, caps, cap_freqs, cap_lens, None,
                                                             None, None, None, None, False, device)
        noise = torch.ones(unified.shape[:2], dtype=torch.long, device=device)  # target, padding, caption: the sample's
        noise[:, :n_ref] = 0  # the reference frame: clean
        for layer in tr.layers:
            unified = self._call(layer, unified, mask, freqs, None, noise, adaln_noisy, adaln_clean)
        unified = tr.all_final_layer[key](unified, noise_mask=noise, c_noisy=adaln_noisy, c_clean=adaln_clean)
        out = tr.unpatchify(list(unified.unbind(dim=0)), sizes, PATCH, F_PATCH)
        return [o[:, 1] for o in out]

    def _call(self, layer: nn.Module, *args: Any) -> torch.Tensor:
        tr = self.transformer
        if torch.is_grad_enabled() and tr.gradient_checkpointing:
            return tr._gradient_checkpointing_func(layer, *args)
        return layer(*args)


# ---------------------------------------------------------------------------------------------
# The backbone


class ZImageBackbone:
    """Frozen Qwen3 text encoder and VAE of a Z-Image model, and a factory of denoisers that start from its
    pretrained transformer (implements harness.models.base.Backbone)."""

    def __init__(self, cfg: ZImageConfig, device: str | torch.device | None = None):
        import transformers
        from diffusers import AutoencoderKL, ZImageTransformer2DModel
        from transformers import AutoTokenizer

        from harness.models.sharding import wants_sharding

        self.cfg = cfg
        self.device = torch.device(device or "cpu")
        self.dtype = DTYPES[cfg.dtype]
        path, rev = cfg.path, cfg.revision or None
        pipeline_components(path, rev, ("transformer", "vae", "text_encoder", "tokenizer"))
        load = component_loader(path, rev)
        index = read_json(path, "model_index.json", rev) or {}
        encoder_cls = getattr(transformers, (index.get("text_encoder") or [None, "AutoModel"])[1], transformers.AutoModel)

        self.sharded = wants_sharding(cfg.fsdp)
        self.transformer = load(ZImageTransformer2DModel, "transformer", self.dtype, "torch_dtype")
        if cfg.weights:
            load_transformer_weights(self.transformer, cfg.weights)
        self.transformer.requires_grad_(False).eval().to("cpu" if self.sharded else self.device)
        self.text_encoder = load(encoder_cls, "text_encoder", self.dtype).requires_grad_(False).eval().to(self.device)
        self.tokenizer = load(AutoTokenizer, "tokenizer")
        vae_dtype = torch.float32 if self.dtype == torch.float16 else self.dtype
        self.vae = load(AutoencoderKL, "vae", vae_dtype, "torch_dtype").requires_grad_(False).eval().to(self.device)

        tcfg = self.transformer.config
        self.vae_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.latent_channels = self.vae.config.latent_channels
        if tcfg.in_channels != self.latent_channels:
            raise ValueError(f"backbone.path: {path}: transformer in_channels {tcfg.in_channels} != VAE latent channels "
                             f"{self.latent_channels}")
        if self.text_encoder.config.hidden_size != tcfg.cap_feat_dim:
            raise ValueError(f"backbone.path: {path}: text encoder width {self.text_encoder.config.hidden_size} != the "
                             f"transformer's cap_feat_dim {tcfg.cap_feat_dim}")
        self.image_size = cfg.resolution or DEFAULT_RESOLUTION
        if self.image_size % (PATCH * self.vae_factor):
            raise ValueError(f"backbone.resolution {self.image_size} is not a multiple of 2 x VAE factor = "
                             f"{PATCH * self.vae_factor}")
        sched = read_json(path, "scheduler/scheduler_config.json", rev) or {}
        tokens = (self.image_size // self.vae_factor // PATCH) ** 2
        self.shift = float(cfg.shift or scheduler_shift(sched, tokens))
        self._cache: OrderedDict[str, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()

    # -- text ---------------------------------------------------------------------------------

    @torch.no_grad()
    def _encode_one(self, prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
        text = self.tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                                  add_generation_prompt=True, enable_thinking=True)
        tok = self.tokenizer(text, padding="max_length", max_length=self.cfg.max_sequence_length, truncation=True,
                             return_tensors="pt")
        mask = tok.attention_mask.to(self.device).bool()
        hidden = self.text_encoder(input_ids=tok.input_ids.to(self.device), attention_mask=mask,
                                   output_hidden_states=True).hidden_states[-2][0]
        return (hidden * mask[0, :, None]).to(self.dtype), mask[0].to(self.dtype)

    def encode_text(self, prompts: list[str]) -> TextEmbedding:
        """Caption features (B, max_sequence_length, D), zero beyond each caption, and their token masks
        (as `pooled`). Computed one prompt at a time and cached (LRU)."""
        return cached_text_embedding(self._cache, prompts, self._encode_one, self.cfg.text_cache_size)

    # -- images -------------------------------------------------------------------------------

    def latent_shape(self) -> tuple[int, int, int]:
        side = self.image_size // self.vae_factor
        return (self.latent_channels, side, side)

    @torch.no_grad()
    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] -> latents (float32): the posterior's mode, shifted and scaled."""
        z = self.vae.encode(images.to(self.device, self.vae.dtype)).latent_dist.mode()
        c = self.vae.config
        return ((z - (c.shift_factor or 0.0)) * c.scaling_factor).float()

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents -> images (float32, nominally in [-1, 1], not clamped). Differentiable."""
        c = self.vae.config
        z = latents / c.scaling_factor + (c.shift_factor or 0.0)
        return self.vae.decode(z.to(self.vae.dtype)).sample.float()

    # -- denoisers ----------------------------------------------------------------------------

    def make_denoiser(self, *, trainable: bool, lora: bool | None = None) -> ZImageDenoiser:
        """trainable=False: frozen, sharing the backbone's transformer (with FSDP: a sharded copy).
        trainable=True: a deep copy with a LoRA adapter (`lora`, default lora_rank > 0) or every weight
        trainable in `trainable_dtype`."""
        from harness.models.sharding import shard_denoiser

        cfg = self.cfg

        def wrap(tr: nn.Module) -> ZImageDenoiser:
            return ZImageDenoiser(tr, ref_modulation=cfg.ref_modulation, compute_dtype=self.dtype)

        if not trainable:
            if not self.sharded:
                return wrap(self.transformer)
            den = wrap(copy.deepcopy(self.transformer))
            return shard_denoiser(den, self.device, compute_dtype=self.dtype, block_lists=BLOCK_LISTS).eval()
        tr = copy.deepcopy(self.transformer)
        make_trainable(tr, lora_rank=cfg.lora_rank, lora_alpha=cfg.lora_alpha, lora_targets=cfg.lora_targets,
                       use_lora=cfg.lora_rank > 0 if lora is None else lora, dtype=DTYPES[cfg.trainable_dtype])
        if cfg.grad_checkpointing:
            tr.enable_gradient_checkpointing()
        den = wrap(tr)
        if self.sharded:
            shard_denoiser(den, self.device, compute_dtype=self.dtype, block_lists=BLOCK_LISTS)
        return den.train()

    def to(self, device: str | torch.device) -> "ZImageBackbone":
        self.device = torch.device(device)
        for m in [self.text_encoder, self.vae] + ([] if self.sharded else [self.transformer]):
            m.to(self.device)
        self._cache.clear()
        return self


def load_zimage_backbone(cfg: ZImageConfig, device: str | torch.device | None = None) -> ZImageBackbone:
    return ZImageBackbone(cfg, device=device)


BACKBONES.register("zimage", Spec(ZImageConfig, build=load_zimage_backbone,
                                  help="Z-Image (diffusers folder or hub id); npedit checkpoints via 'weights'"))

__all__ = ["ZImageBackbone", "ZImageConfig", "ZImageDenoiser", "load_transformer_weights", "map_npedit_key",
           "read_transformer_weights"]
