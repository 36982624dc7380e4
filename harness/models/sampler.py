"""Samplers of flow denoisers v = D(x_t, t, text, ref), with x_t = (1 - t) x + t eps and v = eps - x.

- `few_step_sample`: the paper's few-step sampler (Eq. 3 applied repeatedly): at each t predict
  x0 = x_t - t v, then re-noise x0 to the next t with fresh noise. Differentiable end to end, so the
  training unroll (t = 1, then one t in {0.25, 0.5, 0.75}) is `few_step_sample(..., ts=[1.0, t])`.
- `euler_sample`: the deterministic multi-step Euler ODE sampler with classifier-free guidance, as
  diffusers' FlowMatchEulerDiscreteScheduler steps it (x_{t'} = x_t + (t' - t) v), or that
  scheduler's stochastic variant (`stochastic=True`: x_{t'} = (1 - t') x0 + t' eps with fresh eps).

Both take an optional time shift t' = s t / (1 + (s - 1) t) (SD3's scheduler shift).
Wrap calls in torch.no_grad() for inference.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Callable

import torch

from harness.models.base import TextEmbedding

DenoiserFn = Callable[..., torch.Tensor]


def shift_time(t: float | torch.Tensor, shift: float) -> float | torch.Tensor:
    """t' = s t / (1 + (s - 1) t): s > 1 spends more steps at high noise; s = 1 is the identity."""
    if shift <= 0:
        raise ValueError(f"shift must be > 0, got {shift}")
    return shift * t / (1 + (shift - 1) * t)


def timesteps(steps: int, shift: float = 1.0) -> list[float]:
    """The few-step sampler's times: t_k = shift(1 - k / steps), k = 0..steps-1 (4 steps: 1, .75, .5, .25)."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    return [float(shift_time(1.0 - k / steps, shift)) for k in range(steps)]


def renoise(x0: torch.Tensor, t: float | torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """x_t = (1 - t) x0 + t eps (t a float or a (B,) tensor)."""
    t = _bcast(t, x0)
    return (1 - t) * x0 + t * eps


def predict_x0(denoiser: DenoiserFn, x_t: torch.Tensor, t: float | torch.Tensor, text: TextEmbedding, ref: torch.Tensor | None = None) -> torch.Tensor:
    """x0 = x_t - t D(x_t, t, text, ref)."""
    return x_t - _bcast(t, x_t) * denoiser(x_t, t, text, ref)


def few_step_sample(
    denoiser: DenoiserFn,
    text: TextEmbedding,
    ref: torch.Tensor | None,
    noise: torch.Tensor,
    steps: int = 4,
    shift: float = 1.0,
    generator: torch.Generator | None = None,
    *,
    ts: Sequence[float] | None = None,
) -> torch.Tensor:
    """Few-step sampling from `noise` (the sample at ts[0], normally pure noise at t = 1).

    ts: explicit times (overrides steps/shift), e.g. [1.0, 0.5] for the 2-step training unroll.
    generator: draws the fresh noise of each re-noising (on noise.device); None = the global RNG.
    """
    ts = list(ts) if ts is not None else timesteps(steps, shift)
    x = noise
    x0 = noise
    for k, t in enumerate(ts):
        x0 = predict_x0(denoiser, x, t, text, ref)
        if k + 1 < len(ts):
            eps = torch.randn(noise.shape, generator=generator, device=noise.device, dtype=noise.dtype)
            x = renoise(x0, ts[k + 1], eps)
    return x0


def euler_sample(
    denoiser: DenoiserFn,
    text: TextEmbedding,
    ref: torch.Tensor | None,
    noise: torch.Tensor,
    steps: int = 28,
    guidance: float = 1.0,
    uncond_text: TextEmbedding | None = None,
    shift: float = 1.0,
    *,
    sigmas: Sequence[float] | None = None,
    stochastic: bool = False,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Euler ODE sampling from t = 1 to 0 on the grid shift(1 - k / steps) (then 0), with
    classifier-free guidance v = v_u + g (v_c - v_u) when guidance != 1.

    stochastic: instead of the Euler step, predict x0 = x_t - t v and re-noise it to the next time
    with fresh noise, as FlowMatchEulerDiscreteScheduler(stochastic_sampling=True) does (the
    few-step sampler's update at every step of the grid); `generator` draws that noise (None = the
    global RNG, as diffusers' pipelines draw it).

    uncond_text: the unconditional embedding (e.g. backbone.encode_text([""])), batch 1 or B.
    The reference (if any) conditions both branches, so guidance acts on the text only.
    sigmas: explicit descending times (overrides steps/shift); 0 is appended when missing.
    """
    ts = list(sigmas) if sigmas is not None else timesteps(steps, shift)
    if ts[-1] != 0.0:
        ts.append(0.0)
    guided = guidance != 1.0
    if guided:
        if uncond_text is None:
            raise ValueError("euler_sample: guidance != 1 needs uncond_text (e.g. backbone.encode_text(['']))")
        batch = noise.shape[0]
        if uncond_text.hidden.shape[0] == 1 and batch > 1:
            uncond_text = TextEmbedding(uncond_text.hidden.expand(batch, -1, -1), uncond_text.pooled.expand(batch, -1))
        same_shape = uncond_text.hidden.shape == text.hidden.shape
        both = TextEmbedding.cat([uncond_text, text]) if same_shape else None
        both_ref = None if ref is None else torch.cat([ref, ref])
    x = noise
    for t, t_next in zip(ts[:-1], ts[1:]):
        if not guided:
            v = denoiser(x, t, text, ref)
        elif both is not None:
            v_u, v_c = denoiser(torch.cat([x, x]), t, both, both_ref).chunk(2)
            v = v_u + guidance * (v_c - v_u)
        else:
            v_u, v_c = denoiser(x, t, uncond_text, ref), denoiser(x, t, text, ref)
            v = v_u + guidance * (v_c - v_u)
        if stochastic:
            on = generator.device if generator is not None else x.device
            eps = torch.randn(x.shape, generator=generator, device=on, dtype=x.dtype).to(x.device)
            x = renoise(x - t * v, t_next, eps)
        else:
            x = x + (t_next - t) * v
    return x


def _bcast(t: float | torch.Tensor, like: torch.Tensor) -> float | torch.Tensor:
    if isinstance(t, torch.Tensor) and t.ndim > 0:
        return t.to(like.dtype).reshape(-1, *([1] * (like.ndim - 1)))
    return t


__all__ = ["euler_sample", "few_step_sample", "predict_x0", "renoise", "shift_time", "timesteps"]
