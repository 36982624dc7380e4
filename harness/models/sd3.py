"""Stable Diffusion 3 / 3.5 (diffusers SD3Transformer2DModel) as the generator backbone, with
reference-image conditioning.

Conventions (checked against diffusers' FlowMatchEulerDiscreteScheduler and StableDiffusion3Pipeline
in tests/test_sd3_backbone.py):
- x_t = (1 - t) x + t eps, t in [0, 1], t = 1 pure noise; the transformer is called with timestep = 1000 t.
- The transformer predicts v = eps - x: the scheduler's Euler step is x_{t'} = x_t + (t' - t) v.

Reference conditioning: the clean reference latents are patch-embedded with the pretrained patch
projection and their own sin-cos positions (the region of the position grid right of the target's;
the target keeps exactly the positions the pretrained model used), appended to the target tokens
along the sequence, run through the joint blocks, and dropped before the output layer. Their timestep
modulation is either the target's (`ref_modulation: shared`, as FLUX.1 Kontext) or that of t = 0
(`clean`), applied per token group inside every block. With ref=None the denoiser is the plain
pretrained transformer, bit for bit.

Layouts: the real SD3 folder (text_encoder + text_encoder_2 CLIPTextModelWithProjection,
text_encoder_3 T5EncoderModel, vae/) and a toy one (a single CLIPTextModelWithProjection, no vae/:
the transformer works on images in [-1, 1], "pixel space"). text_encoder_3 may be missing, as SD3
pipelines allow (its part of the prompt embedding is zeros).
"""
from __future__ import annotations

import contextlib
import copy
import math
import types
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Iterator, Literal

import torch
from torch import nn

from harness.config import nohash
from harness.models.base import TextEmbedding, cached_text_embedding
from harness.models.loading import component_loader, make_trainable, pipeline_components, read_json
from harness.registry import BACKBONES, Spec

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

# Attention projections of the joint blocks (image and text streams; attn2 of SD3.5's dual blocks too).
DEFAULT_LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"]


@dataclass
class SD3Config:
    name: str = "sd3"
    # diffusers folder or hub id with transformer/, text encoder(s) + tokenizer(s), optional vae/.
    path: str = ""
    revision: str = ""  # hub revision (commit, branch or tag); '' = default branch
    # Weights of the frozen parts (text encoders, VAE, teacher) and compute dtype of every denoiser.
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    # Master weights of fully fine-tuned denoisers (compute runs in `dtype` under autocast).
    trainable_dtype: Literal["float32", "bfloat16"] = "float32"
    # Working resolution in pixels; 0 = the transformer's native sample_size x VAE factor.
    resolution: int = 0
    # Timestep modulation of the reference tokens: the target's ('shared') or that of t=0 ('clean').
    ref_modulation: Literal["shared", "clean"] = "clean"
    grad_checkpointing: bool = False
    # Shard G, A and the teacher over the job's GPUs with FSDP2 (one task per GPU); no effect on one process.
    fsdp: bool = False
    # LoRA on trainable denoisers (0 = full fine-tuning); alpha 0 = rank.
    lora_rank: int = 0
    lora_alpha: float = 0.0
    lora_targets: list[str] = field(default_factory=lambda: list(DEFAULT_LORA_TARGETS))
    # Time shift t' = s t / (1 + (s - 1) t) of the samplers; 0 = the shift in the folder's scheduler config (1 if none).
    shift: float = 0.0
    max_sequence_length: int = 256  # T5 tokens (capped by the T5 tokenizer's model_max_length)
    text_cache_size: int = nohash(1024, help="prompts whose embeddings are kept in memory")

    def validate(self) -> None:
        if self.lora_rank < 0:
            raise ValueError(f"lora_rank must be >= 0, got {self.lora_rank}")
        if self.shift < 0:
            raise ValueError(f"shift must be >= 0 (0 = the scheduler's), got {self.shift}")
        if self.resolution < 0:
            raise ValueError(f"resolution must be >= 0 (0 = native), got {self.resolution}")
        if self.lora_rank and not self.lora_targets:
            raise ValueError("lora_targets must name at least one module when lora_rank > 0")


# ---------------------------------------------------------------------------------------------
# Time and token helpers


def as_time(t: float | torch.Tensor, batch: int, device: torch.device) -> torch.Tensor:
    """t as a float32 (B,) tensor."""
    t = torch.as_tensor(t, dtype=torch.float32, device=device)
    if t.ndim == 0:
        t = t.expand(batch)
    if t.shape != (batch,):
        raise ValueError(f"t must be a scalar or have shape ({batch},), got {tuple(t.shape)}")
    return t


def ref_pos_embed(patch_embed: nn.Module, target_hw: tuple[int, int], ref_hw: tuple[int, int]) -> torch.Tensor:
    """(1, N_ref, D) sin-cos position embedding of the reference tokens.

    SD3 crops the target's positions from the centre of a pos_embed_max_size^2 grid; the reference
    takes the rows of the target and the columns just right of it, extrapolating the same
    sin-cos grid (as `pos_grid` reads it) beyond its edge when needed.
    """
    from diffusers.models.embeddings import get_2d_sincos_pos_embed_from_grid

    size = patch_embed.pos_embed_max_size
    p = patch_embed.patch_size
    (gh, gw), (rh, rw) = (target_hw[0] // p, target_hw[1] // p), (ref_hw[0] // p, ref_hw[1] // p)
    top, left = (size - gh) // 2, (size - gw) // 2
    origin, step = pos_grid(patch_embed)
    rows = origin + (top + torch.arange(rh, dtype=torch.float64)) * step
    cols = origin + (left + gw + torch.arange(rw, dtype=torch.float64)) * step
    grid = torch.stack(torch.meshgrid(cols, rows, indexing="xy"))  # [0]: column coords, [1]: row coords
    dim = patch_embed.pos_embed.shape[-1]
    emb = get_2d_sincos_pos_embed_from_grid(dim, grid.reshape(2, -1), output_type="pt")
    return emb.float().unsqueeze(0)


def _sincos_rows(dim: int, cols: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    from diffusers.models.embeddings import get_2d_sincos_pos_embed_from_grid

    return get_2d_sincos_pos_embed_from_grid(dim, torch.stack([cols, rows]).double(), output_type="pt")


def pos_grid(patch_embed: nn.Module) -> tuple[float, float]:
    """(origin, step): the sin-cos positions of the pos_embed_max_size^2 grid in `patch_embed`'s
    buffer are origin + step * index along each axis. SD3 builds the grid with origin 0 and step
    base_size / pos_embed_max_size (half a unit between neighbouring tokens when the grid is twice
    the token grid); a buffer rewritten with another spacing (`set_pos_spacing`, saved with the
    weights) is read back from the phases of its first row and first column."""
    size = patch_embed.pos_embed_max_size
    if size is None:
        raise ValueError("reference conditioning needs an SD3 transformer with pos_embed_max_size set")
    buf = patch_embed.pos_embed[0].detach().double().cpu()
    dim = buf.shape[-1]
    first_row, first_col = buf[:size], buf[::size][:size]
    idx = torch.arange(size, dtype=torch.float64)
    zeros = torch.zeros(size, dtype=torch.float64)

    def fits(origin: float, step: float) -> bool:
        want_row = _sincos_rows(dim, origin + idx * step, origin + zeros)
        want_col = _sincos_rows(dim, origin + zeros, origin + idx * step)
        return bool(torch.allclose(first_row, want_row, atol=5e-3) and torch.allclose(first_col, want_col, atol=5e-3))

    sd3_step = patch_embed.base_size / size / patch_embed.interpolation_scale
    if fits(0.0, sd3_step):
        return 0.0, sd3_step
    cols = _sincos_positions(first_row[:, : dim // 2])
    origin, step = float(cols[0]), float((cols[-1] - cols[0]) / (size - 1))
    if not fits(origin, step):
        raise ValueError(f"the transformer's pos_embed buffer is not a sin-cos grid with one spacing along both axes "
                         f"(read origin {origin:.4f}, step {step:.4f}): reference positions cannot be extrapolated")
    return origin, step


def _sincos_positions(emb: torch.Tensor) -> torch.Tensor:
    """Positions p of a 1-D sin-cos embedding [sin(p w_k), cos(p w_k)], w_k = 10000^(-k/K): the phase
    of the lowest frequency gives p coarsely, each higher one refines it (unwrapped against it)."""
    k = emb.shape[-1] // 2
    omega = 1.0 / 10000 ** (torch.arange(k, dtype=torch.float64) / k)
    phase = torch.atan2(emb[:, :k], emb[:, k:])
    p = torch.zeros(emb.shape[0], dtype=torch.float64)
    for j in reversed(range(k)):
        turns = torch.round((p * omega[j] - phase[:, j]) / (2 * math.pi))
        p = (phase[:, j] + 2 * math.pi * turns) / omega[j]
    return p


def set_pos_spacing(patch_embed: nn.Module, step: float) -> None:
    """Rewrite the sin-cos position grid with `step` units between neighbouring tokens (origin 0).
    SD3's config cannot express it: its grid is base_size / pos_embed_max_size apart. The buffer is
    saved with the weights, and `pos_grid` reads the spacing back for the reference tokens."""
    from diffusers.models.embeddings import get_2d_sincos_pos_embed_from_grid

    size = patch_embed.pos_embed_max_size
    if size is None or step <= 0:
        raise ValueError(f"needs pos_embed_max_size set and step > 0, got {size}, {step}")
    axis = torch.arange(size, dtype=torch.float64) * step
    grid = torch.stack(torch.meshgrid(axis, axis, indexing="xy")).reshape(2, -1)
    emb = get_2d_sincos_pos_embed_from_grid(patch_embed.pos_embed.shape[-1], grid, output_type="pt")
    with torch.no_grad():
        patch_embed.pos_embed.copy_(emb.to(patch_embed.pos_embed.dtype).unsqueeze(0))


def _affine(x: torch.Tensor, n: int, scale: tuple, shift: tuple) -> torch.Tensor:
    """x * (1 + scale) + shift with (target, reference) modulation for tokens [:n] and [n:]."""
    return torch.cat(
        [x[:, :n] * (1 + scale[0][:, None]) + shift[0][:, None], x[:, n:] * (1 + scale[1][:, None]) + shift[1][:, None]],
        dim=1,
    )


def _gate(x: torch.Tensor, n: int, gate: tuple) -> torch.Tensor:
    return torch.cat([gate[0][:, None] * x[:, :n], gate[1][:, None] * x[:, n:]], dim=1)


def joint_block_two_modulations(
    block: nn.Module, x: torch.Tensor, ctx: torch.Tensor, temb: torch.Tensor, temb_ref: torch.Tensor, n: int
) -> tuple[torch.Tensor | None, torch.Tensor]:
    """diffusers' JointTransformerBlock.forward with image tokens [:n] modulated by `temb` and
    tokens [n:] by `temb_ref` (the text stream by `temb`). Covers SD3.5's dual-attention blocks and
    the last block's context_pre_only."""
    norm1 = block.norm1
    k = 9 if block.use_dual_attention else 6
    mt = norm1.linear(norm1.silu(temb)).chunk(k, dim=1)
    mr = norm1.linear(norm1.silu(temb_ref)).chunk(k, dim=1)
    pair = lambda i: (mt[i], mr[i])  # noqa: E731  (shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp[, *_msa2])
    normed = norm1.norm(x)

    if block.context_pre_only:
        norm_ctx = block.norm1_context(ctx, temb)
    else:
        norm_ctx, c_gate_msa, c_shift_mlp, c_scale_mlp, c_gate_mlp = block.norm1_context(ctx, emb=temb)

    attn_out, ctx_attn_out = block.attn(hidden_states=_affine(normed, n, pair(1), pair(0)), encoder_hidden_states=norm_ctx)
    x = x + _gate(attn_out, n, pair(2))
    if block.use_dual_attention:
        x = x + _gate(block.attn2(hidden_states=_affine(normed, n, pair(7), pair(6))), n, pair(8))
    x = x + _gate(block.ff(_affine(block.norm2(x), n, pair(4), pair(3))), n, pair(5))

    if block.context_pre_only:
        return None, x
    ctx = ctx + c_gate_msa.unsqueeze(1) * ctx_attn_out
    norm_ctx = block.norm2_context(ctx) * (1 + c_scale_mlp[:, None]) + c_shift_mlp[:, None]
    ctx = ctx + c_gate_mlp.unsqueeze(1) * block.ff_context(norm_ctx)
    return ctx, x


def _ref_aware_forward(
    self: nn.Module,
    hidden_states: torch.Tensor,
    encoder_hidden_states: torch.Tensor,
    temb: torch.Tensor,
    joint_attention_kwargs: dict | None = None,
    temb_ref: torch.Tensor | None = None,
    n_target: int | None = None,
) -> tuple[torch.Tensor | None, torch.Tensor]:
    if temb_ref is None:
        return type(self).forward(self, hidden_states, encoder_hidden_states, temb, joint_attention_kwargs)
    return joint_block_two_modulations(self, hidden_states, encoder_hidden_states, temb, temb_ref, n_target)


def make_ref_aware(block: nn.Module) -> None:
    """Let `block(x, ctx, temb, temb_ref=..., n_target=n)` run the two-modulation forward, unchanged
    otherwise. The call goes through the block's __call__, so per-block wrappers (FSDP sharding,
    activation checkpointing, hooks) see it; the block keeps its class (auto-wrap policies match on it)."""
    if "forward" not in vars(block):
        block.forward = types.MethodType(_ref_aware_forward, block)


# ---------------------------------------------------------------------------------------------
# The denoiser


class SD3Denoiser(nn.Module):
    """v = D(x_t, t, text, ref) around an SD3Transformer2DModel (see the module docstring).

    Its state_dict is the transformer's (plus LoRA weights when an adapter is attached).
    """

    def __init__(self, transformer: nn.Module, *, ref_modulation: str = "clean", compute_dtype: torch.dtype = torch.float32):
        super().__init__()
        if ref_modulation not in ("shared", "clean"):
            raise ValueError(f"ref_modulation must be 'shared' or 'clean', got {ref_modulation!r}")
        self.transformer = transformer
        self.ref_modulation = ref_modulation
        for block in transformer.transformer_blocks:
            make_ref_aware(block)
        self.compute_dtype = compute_dtype
        self._pos_cache: dict[tuple, torch.Tensor] = {}

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

    def _autocast(self, device: torch.device):
        # Mixed precision per denoiser rather than accelerate's Accelerator(mixed_precision=...): that wraps
        # one model's forward in the same torch.autocast, while here G, A and the frozen teacher each have
        # their own weight dtype (bf16 teacher, float32 masters for trained weights) inside one method.
        return torch.autocast(device.type, dtype=self.compute_dtype, enabled=self.compute_dtype != torch.float32)

    def forward(self, x_t: torch.Tensor, t: float | torch.Tensor, text: TextEmbedding, ref: torch.Tensor | None = None) -> torch.Tensor:
        tr = self.transformer
        batch = x_t.shape[0]
        if text.hidden.shape[0] != batch or text.pooled.shape[0] != batch:
            raise ValueError(f"text embedding batch {text.hidden.shape[0]} does not match x_t batch {batch}")
        timestep = as_time(t, batch, x_t.device) * 1000.0
        wdtype = tr.pos_embed.proj.weight.dtype
        hidden, pooled = text.hidden.to(wdtype), text.pooled.to(wdtype)
        with self._autocast(x_t.device):
            if ref is None:
                out = tr(hidden_states=x_t.to(wdtype), encoder_hidden_states=hidden, pooled_projections=pooled, timestep=timestep, return_dict=False)[0]
            else:
                out = self._forward_with_ref(x_t.to(wdtype), timestep, hidden, pooled, ref.detach().to(wdtype))
        return out.to(x_t.dtype)

    def _ref_tokens(self, ref: torch.Tensor, target_hw: tuple[int, int]) -> torch.Tensor:
        pe = self.transformer.pos_embed
        p = pe.patch_size
        if ref.shape[-2] % p or ref.shape[-1] % p:
            raise ValueError(f"reference latents {tuple(ref.shape[-2:])} are not a multiple of the patch size {p}")
        key = (target_hw, tuple(ref.shape[-2:]), ref.device)
        if key not in self._pos_cache:
            self._pos_cache[key] = ref_pos_embed(pe, target_hw, tuple(ref.shape[-2:])).to(ref.device)
        tokens = pe.proj(ref).flatten(2).transpose(1, 2)
        if pe.layer_norm:
            tokens = pe.norm(tokens)
        return (tokens + self._pos_cache[key].to(tokens.dtype)).contiguous()

    def _forward_with_ref(self, x: torch.Tensor, timestep: torch.Tensor, hidden: torch.Tensor, pooled: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        tr = self.transformer
        if ref.shape[0] != x.shape[0] or ref.shape[1] != x.shape[1]:
            raise ValueError(f"reference latents {tuple(ref.shape)} do not match x_t {tuple(x.shape)} in batch/channels")
        height, width = x.shape[-2:]
        target = tr.pos_embed(x).contiguous()
        n = target.shape[1]
        tokens = torch.cat([target, self._ref_tokens(ref, (height, width))], dim=1)
        temb = tr.time_text_embed(timestep, pooled)
        ctx = tr.context_embedder(hidden)
        clean = self.ref_modulation == "clean"
        temb_ref = tr.time_text_embed(torch.zeros_like(timestep), pooled) if clean else None
        checkpoint = torch.is_grad_enabled() and tr.gradient_checkpointing
        extra = {"temb_ref": temb_ref, "n_target": n} if clean else {}
        for block in tr.transformer_blocks:
            if checkpoint:
                ctx, tokens = torch.utils.checkpoint.checkpoint(block, tokens, ctx, temb, None, use_reentrant=False, **extra)
            else:
                ctx, tokens = block(tokens, ctx, temb, None, **extra)
        out = tr.proj_out(tr.norm_out(tokens[:, :n], temb))
        p, c = tr.config.patch_size, tr.out_channels
        out = out.reshape(x.shape[0], height // p, width // p, p, p, c)
        return torch.einsum("nhwpqc->nchpwq", out).reshape(x.shape[0], c, height, width)


# ---------------------------------------------------------------------------------------------
# The backbone


class SD3Backbone:
    """Frozen text encoders and VAE of an SD3-family model, and a factory of denoisers that start
    from its pretrained transformer (implements harness.models.base.Backbone)."""

    def __init__(self, cfg: SD3Config, device: str | torch.device | None = None):
        from diffusers import AutoencoderKL, SD3Transformer2DModel
        from transformers import AutoTokenizer, CLIPTextModelWithProjection, T5EncoderModel

        from harness.models.sharding import wants_sharding

        self.cfg = cfg
        self.device = torch.device(device or "cpu")
        self.dtype = DTYPES[cfg.dtype]
        path, rev = cfg.path, cfg.revision or None
        present = pipeline_components(path, rev, ("transformer", "text_encoder", "tokenizer"))
        load = component_loader(path, rev)

        # With FSDP the pretrained transformer stays on the CPU: each denoiser is a copy whose shards move to the GPU.
        self.sharded = wants_sharding(cfg.fsdp)
        self.transformer = load(SD3Transformer2DModel, "transformer", self.dtype, "torch_dtype")
        self.transformer.requires_grad_(False).eval().to("cpu" if self.sharded else self.device)
        self.clip_encoders: list[nn.Module] = []
        self.clip_tokenizers: list[Any] = []
        for enc, tok in (("text_encoder", "tokenizer"), ("text_encoder_2", "tokenizer_2")):
            if enc in present:
                self.clip_encoders.append(load(CLIPTextModelWithProjection, enc, self.dtype).requires_grad_(False).eval().to(self.device))
                self.clip_tokenizers.append(load(AutoTokenizer, tok))
        self.t5 = self.t5_tokenizer = None
        if "text_encoder_3" in present:
            self.t5 = load(T5EncoderModel, "text_encoder_3", self.dtype).requires_grad_(False).eval().to(self.device)
            self.t5_tokenizer = load(AutoTokenizer, "tokenizer_3")
        self.vae = None
        if "vae" in present:
            vae_dtype = torch.float32 if self.dtype == torch.float16 else self.dtype  # fp16 SD3 VAEs overflow
            self.vae = load(AutoencoderKL, "vae", vae_dtype, "torch_dtype").requires_grad_(False).eval().to(self.device)

        tcfg = self.transformer.config
        self.vae_factor = 2 ** (len(self.vae.config.block_out_channels) - 1) if self.vae is not None else 1
        self.latent_channels = tcfg.in_channels
        if self.vae is None and tcfg.in_channels != 3:
            raise ValueError(f"backbone.path: {path} has no vae/ but its transformer takes {tcfg.in_channels} channels (pixel space needs 3)")
        self.image_size = cfg.resolution or tcfg.sample_size * self.vae_factor
        if self.image_size % (self.vae_factor * tcfg.patch_size):
            raise ValueError(f"backbone.resolution {self.image_size} is not a multiple of VAE factor x patch size = {self.vae_factor * tcfg.patch_size}")
        sched = read_json(path, "scheduler/scheduler_config.json", rev) or {}
        self.shift = float(cfg.shift or sched.get("shift", 1.0))
        self._cache: OrderedDict[str, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()
        self._check_text_dims()

    # -- text ---------------------------------------------------------------------------------

    def _check_text_dims(self) -> None:
        tcfg = self.transformer.config
        clip_width = sum(e.config.hidden_size for e in self.clip_encoders)
        pooled = sum(e.config.projection_dim for e in self.clip_encoders)
        width = self.t5.config.d_model if self.t5 is not None else tcfg.joint_attention_dim
        if clip_width > tcfg.joint_attention_dim or width != tcfg.joint_attention_dim:
            raise ValueError(
                f"backbone.path: {self.cfg.path}: text encoder widths (CLIP {clip_width}, T5 {width}) do not fit "
                f"the transformer's joint_attention_dim {tcfg.joint_attention_dim}"
            )
        if pooled != tcfg.pooled_projection_dim:
            raise ValueError(
                f"backbone.path: {self.cfg.path}: pooled CLIP width {pooled} != transformer pooled_projection_dim {tcfg.pooled_projection_dim}"
            )

    @torch.no_grad()
    def _clip(self, i: int, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        enc, tok = self.clip_encoders[i], self.clip_tokenizers[i]
        length = min(tok.model_max_length, enc.config.max_position_embeddings)
        ids = tok(prompts, padding="max_length", max_length=length, truncation=True, return_tensors="pt").input_ids
        out = enc(ids.to(self.device), output_hidden_states=True)
        return out.hidden_states[-2], out.text_embeds  # penultimate layer, as SD3 (clip_skip None)

    @torch.no_grad()
    def _t5_embeds(self, prompts: list[str]) -> torch.Tensor | None:
        joint = self.transformer.config.joint_attention_dim
        if self.t5 is None:
            if len(self.clip_encoders) < 2:
                return None  # toy layout: CLIP only
            return torch.zeros(len(prompts), self.cfg.max_sequence_length, joint, device=self.device, dtype=self.dtype)
        length = min(self.cfg.max_sequence_length, self.t5_tokenizer.model_max_length)
        ids = self.t5_tokenizer(prompts, padding="max_length", max_length=length, truncation=True, add_special_tokens=True, return_tensors="pt").input_ids
        return self.t5(ids.to(self.device))[0]

    @torch.no_grad()
    def _encode_uncached(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        clips = [self._clip(i, prompts) for i in range(len(self.clip_encoders))]
        hidden = torch.cat([h for h, _ in clips], dim=-1)
        pooled = torch.cat([p for _, p in clips], dim=-1)
        joint = self.transformer.config.joint_attention_dim
        hidden = nn.functional.pad(hidden, (0, joint - hidden.shape[-1]))
        t5 = self._t5_embeds(prompts)
        if t5 is not None:
            hidden = torch.cat([hidden, t5.to(hidden.dtype)], dim=-2)
        return hidden.to(self.dtype), pooled.to(self.dtype)

    def encode_text(self, prompts: list[str]) -> TextEmbedding:
        """SD3 prompt embedding: [CLIP-L | CLIP-G penultimate states, zero-padded to the T5 width] ++ T5
        along the sequence; pooled = [CLIP-L | CLIP-G] text_embeds. Computed and cached per prompt (LRU)."""
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
        """Images in [-1, 1] -> latents (float32): the VAE posterior's mode, shifted and scaled as SD3."""
        images = images.to(self.device, torch.float32)
        if self.vae is None:
            return images.clone()
        z = self.vae.encode(images.to(self.vae.dtype)).latent_dist.mode()
        shift = self.vae.config.shift_factor or 0.0
        return ((z - shift) * self.vae.config.scaling_factor).float()

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents -> images (float32, nominally in [-1, 1], not clamped). Differentiable."""
        if self.vae is None:
            return latents.float()
        shift = self.vae.config.shift_factor or 0.0
        z = latents / self.vae.config.scaling_factor + shift
        return self.vae.decode(z.to(self.vae.dtype)).sample.float()

    # -- denoisers ----------------------------------------------------------------------------

    def make_denoiser(self, *, trainable: bool, lora: bool | None = None) -> SD3Denoiser:
        """A denoiser starting from the pretrained transformer.

        trainable=False: frozen, sharing the backbone's own transformer (no copy; do not modify it),
        or, with FSDP, a sharded copy. trainable=True: a deep copy; LoRA adapter when `lora`
        (default: backbone lora_rank > 0), else every weight trainable, in `trainable_dtype`.
        """
        from harness.models.sharding import shard_denoiser

        cfg = self.cfg
        if not trainable:
            if not self.sharded:
                return SD3Denoiser(self.transformer, ref_modulation=cfg.ref_modulation, compute_dtype=self.dtype)
            den = SD3Denoiser(copy.deepcopy(self.transformer), ref_modulation=cfg.ref_modulation, compute_dtype=self.dtype)
            return shard_denoiser(den, self.device, compute_dtype=self.dtype).eval()
        tr = copy.deepcopy(self.transformer)
        make_trainable(tr, lora_rank=cfg.lora_rank, lora_alpha=cfg.lora_alpha, lora_targets=cfg.lora_targets,
                       use_lora=cfg.lora_rank > 0 if lora is None else lora, dtype=DTYPES[cfg.trainable_dtype])
        if cfg.grad_checkpointing:
            tr.enable_gradient_checkpointing()
        den = SD3Denoiser(tr, ref_modulation=cfg.ref_modulation, compute_dtype=self.dtype)
        if self.sharded:
            shard_denoiser(den, self.device, compute_dtype=self.dtype)
        return den.train()

    def to(self, device: str | torch.device) -> "SD3Backbone":
        self.device = torch.device(device)
        for m in [*self.clip_encoders, self.t5, self.vae] + ([] if self.sharded else [self.transformer]):
            if m is not None:
                m.to(self.device)
        self._cache.clear()
        return self


def load_sd3_backbone(cfg: SD3Config, device: str | torch.device | None = None) -> SD3Backbone:
    return SD3Backbone(cfg, device=device)


BACKBONES.register("sd3", Spec(SD3Config, build=load_sd3_backbone, help="Stable Diffusion 3/3.5 MMDiT (diffusers folder or hub id)"))

__all__ = ["SD3Backbone", "SD3Config", "SD3Denoiser", "joint_block_two_modulations", "load_sd3_backbone", "make_ref_aware", "pos_grid", "ref_pos_embed", "set_pos_spacing"]
