"""FLUX.1 / FLUX.1 Kontext (diffusers FluxTransformer2DModel) as the generator backbone, with
Kontext-style reference-image conditioning.

Conventions (checked against diffusers' FluxPipeline, FluxKontextPipeline and
FlowMatchEulerDiscreteScheduler in tests/test_flux_backbone.py):
- x_t = (1 - t) x + t eps, t in [0, 1], t = 1 pure noise; the transformer is called with timestep = t
  (it scales by 1000 itself) and predicts v = eps - x: the scheduler's Euler step is x_{t'} = x_t + (t' - t) v.
- Latents are the VAE's (B, 16, H/8, W/8), shifted and scaled as FLUX; the denoiser packs them into
  2 x 2 patches (B, HW/4, 64) for the transformer and unpacks its output, so methods and samplers see
  ordinary 4-D latents.
- Text: CLIP-L's pooled output -> pooled_projections, T5's last hidden states -> encoder_hidden_states
  (text position ids all zero), as FluxPipeline encodes prompts.
- Guidance-distilled models (FLUX.1-dev, Kontext-dev: `guidance_embeds` in the transformer config)
  get the distilled guidance scale `guidance_embed` on every call; it is not classifier-free guidance.
- The time shift of the samplers is FLUX's resolution-dependent one: the scheduler's
  exp(mu(tokens)) for dynamic shifting (mu linear in the number of image tokens), which is
  t' = s t / (1 + (s - 1) t) with s = exp(mu).

Reference conditioning (FLUX.1 Kontext): the clean reference latents are packed like the target,
appended to the target tokens along the sequence with the same (h, w) position ids and the first id
axis set to 1, and share the timestep modulation of the target tokens; the output keeps only the
target tokens. With ref=None the denoiser is the plain pretrained transformer, bit for bit.
"""
from __future__ import annotations

import contextlib
import copy
import math
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Iterator, Literal

import torch
from torch import nn

from harness.config import nohash
from harness.models.base import TextEmbedding, cached_text_embedding
from harness.models.loading import component_loader, make_trainable, pipeline_components, read_json
from harness.models.sd3 import DTYPES, as_time
from harness.registry import BACKBONES, Spec

# Attention projections of the dual-stream blocks (image and text) and of the single-stream blocks.
DEFAULT_LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"]
DEFAULT_SAMPLE_SIZE = 128  # FluxPipeline's default latent side: 1024 px with the 8x VAE


@dataclass
class FluxConfig:
    name: str = "flux"
    # diffusers folder or hub id with transformer/, vae/, text_encoder/ (CLIP) + tokenizer/, text_encoder_2/ (T5) + tokenizer_2/.
    path: str = ""
    revision: str = ""  # hub revision (commit, branch or tag); '' = default branch
    # Weights of the frozen parts (text encoders, VAE, teacher) and compute dtype of every denoiser.
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    # Master weights of fully fine-tuned denoisers (compute runs in `dtype` under autocast).
    trainable_dtype: Literal["float32", "bfloat16"] = "float32"
    # Working resolution in pixels (square); 0 = FluxPipeline's default (1024 px for the 8x VAE).
    resolution: int = 0
    # Distilled guidance scale fed to the guidance embedding of guidance-distilled transformers
    # (FLUX.1-dev / Kontext-dev; ignored by transformers without one, e.g. FLUX.1-schnell).
    guidance_embed: float = 3.5
    grad_checkpointing: bool = False
    # LoRA on trainable denoisers (0 = full fine-tuning); alpha 0 = rank.
    lora_rank: int = 0
    lora_alpha: float = 0.0
    lora_targets: list[str] = field(default_factory=lambda: list(DEFAULT_LORA_TARGETS))
    # Time shift t' = s t / (1 + (s - 1) t) of the samplers; 0 = the folder's scheduler at this resolution.
    shift: float = 0.0
    max_sequence_length: int = 512  # T5 tokens (FLUX.1-dev: 512, schnell: 256)
    # Shard every denoiser's blocks with FSDP over all ranks (needs torch.distributed initialised).
    fsdp: bool = False
    text_cache_size: int = nohash(1024, help="prompts whose embeddings are kept in memory")

    def validate(self) -> None:
        if self.lora_rank < 0:
            raise ValueError(f"lora_rank must be >= 0, got {self.lora_rank}")
        if self.shift < 0:
            raise ValueError(f"shift must be >= 0 (0 = the scheduler's), got {self.shift}")
        if self.resolution < 0:
            raise ValueError(f"resolution must be >= 0 (0 = default), got {self.resolution}")
        if self.lora_rank and not self.lora_targets:
            raise ValueError("lora_targets must name at least one module when lora_rank > 0")
        if not 1 <= self.max_sequence_length <= 512:
            raise ValueError(f"max_sequence_length must be in [1, 512] (FLUX's T5 limit), got {self.max_sequence_length}")


# ---------------------------------------------------------------------------------------------
# Packing and position ids


def pack_latents(x: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) -> (B, h/2 * w/2, 4C): 2 x 2 patches in row-major order, as FluxPipeline."""
    b, c, h, w = x.shape
    if h % 2 or w % 2:
        raise ValueError(f"FLUX latents need an even height and width, got {h}x{w}")
    return x.reshape(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), 4 * c)


def unpack_latents(tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Inverse of `pack_latents` for (h, w) latents."""
    b, _, d = tokens.shape
    c = d // 4
    return tokens.reshape(b, h // 2, w // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, c, h, w)


def latent_ids(h: int, w: int, *, first: float = 0.0, device: torch.device | None = None) -> torch.Tensor:
    """(h/2 * w/2, 3) position ids of packed latents: (first, row, column). Kontext's reference
    tokens use first = 1 with the same rows and columns."""
    rows = torch.arange(h // 2, dtype=torch.float32).repeat_interleave(w // 2)
    cols = torch.arange(w // 2, dtype=torch.float32).repeat(h // 2)
    return torch.stack([torch.full_like(rows, first), rows, cols], dim=-1).to(device)


def scheduler_shift(sched: dict, image_tokens: int) -> float:
    """The time shift s of a FlowMatchEulerDiscreteScheduler config at `image_tokens` packed tokens:
    exp(mu) (or mu, for time_shift_type 'linear') with dynamic shifting, else its static `shift`."""
    if not sched.get("use_dynamic_shifting"):
        return float(sched.get("shift", 1.0))
    base_len, max_len = sched.get("base_image_seq_len", 256), sched.get("max_image_seq_len", 4096)
    base, top = sched.get("base_shift", 0.5), sched.get("max_shift", 1.15)
    mu = base + (top - base) * (image_tokens - base_len) / (max_len - base_len)
    return float(mu if sched.get("time_shift_type", "exponential") == "linear" else math.exp(mu))


# ---------------------------------------------------------------------------------------------
# The denoiser


class FluxDenoiser(nn.Module):
    """v = D(x_t, t, text, ref) around a FluxTransformer2DModel (see the module docstring).

    Its state_dict is the transformer's (plus LoRA weights when an adapter is attached).
    """

    def __init__(self, transformer: nn.Module, *, guidance: float = 3.5, compute_dtype: torch.dtype = torch.float32):
        super().__init__()
        self.transformer = transformer
        self.guidance = float(guidance)
        self.compute_dtype = compute_dtype
        self._ids: dict[tuple, torch.Tensor] = {}

    @property
    def has_adapter(self) -> bool:
        return bool(getattr(self.transformer, "peft_config", None))

    @contextlib.contextmanager
    def adapter_disabled(self) -> Iterator[None]:
        """Run the pretrained weights without the LoRA adapter (e.g. Flow-GRPO's reference policy)."""
        if not self.has_adapter:
            raise RuntimeError("this denoiser has no LoRA adapter to disable (backbone lora_rank is 0)")
        self.transformer.disable_adapters()
        try:
            yield
        finally:
            self.transformer.enable_adapters()

    def _image_ids(self, target_hw: tuple[int, int], ref_hw: tuple[int, int] | None, device: torch.device) -> torch.Tensor:
        key = (target_hw, ref_hw, device)
        if key not in self._ids:
            ids = latent_ids(*target_hw, device=device)
            if ref_hw is not None:
                ids = torch.cat([ids, latent_ids(*ref_hw, first=1.0, device=device)])
            self._ids[key] = ids
        return self._ids[key]

    def forward(self, x_t: torch.Tensor, t: float | torch.Tensor, text: TextEmbedding, ref: torch.Tensor | None = None) -> torch.Tensor:
        tr = self.transformer
        batch, _, h, w = x_t.shape
        if text.hidden.shape[0] != batch or text.pooled.shape[0] != batch:
            raise ValueError(f"text embedding batch {text.hidden.shape[0]} does not match x_t batch {batch}")
        timestep = as_time(t, batch, x_t.device)
        wdtype = tr.x_embedder.weight.dtype
        tokens = pack_latents(x_t.to(wdtype))
        n = tokens.shape[1]
        ref_hw = None
        if ref is not None:
            if ref.shape[0] != batch or ref.shape[1] != x_t.shape[1]:
                raise ValueError(f"reference latents {tuple(ref.shape)} do not match x_t {tuple(x_t.shape)} in batch/channels")
            ref_hw = tuple(ref.shape[-2:])
            tokens = torch.cat([tokens, pack_latents(ref.detach().to(wdtype))], dim=1)
        img_ids = self._image_ids((h, w), ref_hw, x_t.device)
        txt_ids = torch.zeros(text.hidden.shape[1], 3, device=x_t.device)
        guidance = torch.full((batch,), self.guidance, device=x_t.device) if tr.config.guidance_embeds else None
        with torch.autocast(x_t.device.type, dtype=self.compute_dtype, enabled=self.compute_dtype != torch.float32):
            out = tr(
                hidden_states=tokens, encoder_hidden_states=text.hidden.to(wdtype), pooled_projections=text.pooled.to(wdtype),
                timestep=timestep, img_ids=img_ids, txt_ids=txt_ids, guidance=guidance, return_dict=False,
            )[0]
        return unpack_latents(out[:, :n], h, w).to(x_t.dtype)


# ---------------------------------------------------------------------------------------------
# The backbone


class FluxBackbone:
    """Frozen text encoders and VAE of a FLUX.1-family model, and a factory of denoisers that start
    from its pretrained transformer (implements harness.models.base.Backbone)."""

    def __init__(self, cfg: FluxConfig, device: str | torch.device | None = None):
        from diffusers import AutoencoderKL, FluxTransformer2DModel
        from transformers import AutoTokenizer, CLIPTextModel, T5EncoderModel

        from harness.models.sharding import wants_sharding

        self.cfg = cfg
        self.device = torch.device(device or "cpu")
        self.dtype = DTYPES[cfg.dtype]
        path, rev = cfg.path, cfg.revision or None
        pipeline_components(path, rev, ("transformer", "vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2"))
        load = component_loader(path, rev)

        # With FSDP the pretrained transformer stays on the CPU: each denoiser is a copy whose shards move to the GPU.
        self.sharded = wants_sharding(cfg.fsdp)
        self.transformer = load(FluxTransformer2DModel, "transformer", self.dtype, "torch_dtype")
        self.transformer.requires_grad_(False).eval().to("cpu" if self.sharded else self.device)
        self.clip = load(CLIPTextModel, "text_encoder", self.dtype).requires_grad_(False).eval().to(self.device)
        self.clip_tokenizer = load(AutoTokenizer, "tokenizer")
        self.t5 = load(T5EncoderModel, "text_encoder_2", self.dtype).requires_grad_(False).eval().to(self.device)
        self.t5_tokenizer = load(AutoTokenizer, "tokenizer_2")
        vae_dtype = torch.float32 if self.dtype == torch.float16 else self.dtype
        self.vae = load(AutoencoderKL, "vae", vae_dtype, "torch_dtype").requires_grad_(False).eval().to(self.device)

        tcfg = self.transformer.config
        self.vae_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.latent_channels = self.vae.config.latent_channels
        if tcfg.patch_size != 1 or tcfg.in_channels != 4 * self.latent_channels:
            raise ValueError(
                f"backbone.path: {path}: transformer in_channels {tcfg.in_channels} (patch_size {tcfg.patch_size}) does not "
                f"take 2x2-packed {self.latent_channels}-channel VAE latents (expected in_channels {4 * self.latent_channels}, patch_size 1)"
            )
        if self.clip.config.hidden_size != tcfg.pooled_projection_dim or self.t5.config.d_model != tcfg.joint_attention_dim:
            raise ValueError(
                f"backbone.path: {path}: text encoder widths (CLIP pooled {self.clip.config.hidden_size}, T5 {self.t5.config.d_model}) "
                f"do not fit the transformer (pooled_projection_dim {tcfg.pooled_projection_dim}, joint_attention_dim {tcfg.joint_attention_dim})"
            )
        self.image_size = cfg.resolution or DEFAULT_SAMPLE_SIZE * self.vae_factor
        if self.image_size % (2 * self.vae_factor):
            raise ValueError(f"backbone.resolution {self.image_size} is not a multiple of 2 x VAE factor = {2 * self.vae_factor}")
        sched = read_json(path, "scheduler/scheduler_config.json", rev) or {}
        tokens = (self.image_size // self.vae_factor // 2) ** 2
        self.shift = float(cfg.shift or scheduler_shift(sched, tokens))
        self._cache: OrderedDict[str, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()

    # -- text ---------------------------------------------------------------------------------

    @torch.no_grad()
    def _encode_uncached(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        tok = self.clip_tokenizer
        ids = tok(prompts, padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt").input_ids
        pooled = self.clip(ids.to(self.device), output_hidden_states=False).pooler_output
        length = self.cfg.max_sequence_length
        ids = self.t5_tokenizer(prompts, padding="max_length", max_length=length, truncation=True, return_tensors="pt").input_ids
        hidden = self.t5(ids.to(self.device), output_hidden_states=False)[0]
        return hidden.to(self.dtype), pooled.to(self.dtype)

    def encode_text(self, prompts: list[str]) -> TextEmbedding:
        """FLUX prompt embedding: T5 last hidden states (max_sequence_length tokens) and CLIP's pooled
        output. Computed and cached per prompt (LRU)."""
        return cached_text_embedding(self._cache, prompts, self._encode_one, self.cfg.text_cache_size)

    def _encode_one(self, prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
        hidden, pooled = self._encode_uncached([prompt])
        return hidden[0], pooled[0]

    # -- images -------------------------------------------------------------------------------

    def latent_shape(self) -> tuple[int, int, int]:
        side = self.image_size // self.vae_factor
        return (self.latent_channels, side, side)

    @torch.no_grad()
    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] -> latents (float32): the VAE posterior's mode, shifted and scaled as FLUX."""
        z = self.vae.encode(images.to(self.device, self.vae.dtype)).latent_dist.mode()
        return ((z - self.vae.config.shift_factor) * self.vae.config.scaling_factor).float()

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents -> images (float32, nominally in [-1, 1], not clamped). Differentiable."""
        z = latents / self.vae.config.scaling_factor + self.vae.config.shift_factor
        return self.vae.decode(z.to(self.vae.dtype)).sample.float()

    # -- denoisers ----------------------------------------------------------------------------

    def make_denoiser(self, *, trainable: bool, lora: bool | None = None) -> FluxDenoiser:
        """A denoiser starting from the pretrained transformer.

        trainable=False: frozen, sharing the backbone's own transformer (no copy; do not modify it),
        or, with FSDP, a sharded copy. trainable=True: a deep copy; LoRA adapter when `lora`
        (default: backbone lora_rank > 0), else every weight trainable, in `trainable_dtype`.
        """
        from harness.models.sharding import shard_denoiser

        cfg = self.cfg
        if not trainable:
            if not self.sharded:
                return FluxDenoiser(self.transformer, guidance=cfg.guidance_embed, compute_dtype=self.dtype)
            den = FluxDenoiser(copy.deepcopy(self.transformer), guidance=cfg.guidance_embed, compute_dtype=self.dtype)
            return shard_denoiser(den, self.device, compute_dtype=self.dtype).eval()
        tr = copy.deepcopy(self.transformer)
        make_trainable(tr, lora_rank=cfg.lora_rank, lora_alpha=cfg.lora_alpha, lora_targets=cfg.lora_targets,
                       use_lora=cfg.lora_rank > 0 if lora is None else lora, dtype=DTYPES[cfg.trainable_dtype])
        if cfg.grad_checkpointing:
            tr.enable_gradient_checkpointing()
        den = FluxDenoiser(tr, guidance=cfg.guidance_embed, compute_dtype=self.dtype)
        if self.sharded:
            shard_denoiser(den, self.device, compute_dtype=self.dtype)
        return den.train()

    def to(self, device: str | torch.device) -> "FluxBackbone":
        self.device = torch.device(device)
        for m in [self.clip, self.t5, self.vae] + ([] if self.sharded else [self.transformer]):
            m.to(self.device)
        self._cache.clear()
        return self


def load_flux_backbone(cfg: FluxConfig, device: str | torch.device | None = None) -> FluxBackbone:
    return FluxBackbone(cfg, device=device)


BACKBONES.register("flux", Spec(FluxConfig, build=load_flux_backbone, help="FLUX.1 / FLUX.1 Kontext (diffusers folder or hub id)"))

__all__ = [
    "FluxBackbone",
    "FluxConfig",
    "FluxDenoiser",
    "latent_ids",
    "load_flux_backbone",
    "pack_latents",
    "scheduler_shift",
    "unpack_latents",
]
