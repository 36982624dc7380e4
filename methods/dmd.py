"""Distribution matching (paper, Eq. 5; DMD/DMD2): the frozen teacher's and the auxiliary model's
denoised estimates of the noised generator output pull it toward the teacher's distribution."""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from harness.models.base import TextEmbedding

Denoiser = Callable[[torch.Tensor, torch.Tensor, TextEmbedding, torch.Tensor | None], torch.Tensor]


def _bcast(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return t.view(-1, *([1] * (x.ndim - 1)))


def guided_velocity(denoiser: Denoiser, x_t: torch.Tensor, t: torch.Tensor, cond: TextEmbedding,
                    uncond: TextEmbedding | None, guidance: torch.Tensor | float) -> torch.Tensor:
    """Classifier-free guidance v = v_u + g (v_c - v_u) (g = 1: no unconditional pass)."""
    no_guidance = bool((torch.as_tensor(guidance) == 1.0).all())
    if uncond is None or no_guidance:
        return denoiser(x_t, t, cond, None)
    v = denoiser(torch.cat([x_t, x_t]), torch.cat([t, t]), TextEmbedding.cat([cond, uncond]), None)
    v_c, v_u = v.chunk(2)
    g = guidance if isinstance(guidance, float) else _bcast(guidance, v_c)
    return v_u + g * (v_c - v_u)


def dmd_gradient(x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, v_real: torch.Tensor,
                 v_fake: torch.Tensor) -> torch.Tensor:
    """(x0_fake - x0_real) / mean|x0 - x0_real| per sample, in float32: the KL gradient direction."""
    x0, x_t, v_real, v_fake = x0.float(), x_t.float(), v_real.float(), v_fake.float()
    tb = _bcast(t.float(), x0)
    x0_real = x_t - tb * v_real
    x0_fake = x_t - tb * v_fake
    norm = (x0 - x0_real).abs().mean(dim=tuple(range(1, x0.ndim)), keepdim=True)
    return torch.nan_to_num((x0_fake - x0_real) / norm.clamp_min(1e-8))


def dmd_loss(x0: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """0.5 ||x0 - sg(x0 - grad)||^2 (mean): its gradient w.r.t. x0 is grad / numel."""
    target = (x0.detach().float() - grad).detach()
    return 0.5 * F.mse_loss(x0.float(), target)


def flow_loss(denoiser: Denoiser, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, text: TextEmbedding,
              ref: torch.Tensor | None = None) -> torch.Tensor:
    """The flow-matching loss ||v - D(x_t, t)||^2 with v = eps - x0 (Eq. 1, w_t = 1)."""
    x_t = (1 - _bcast(t, x0)) * x0 + _bcast(t, x0) * noise
    v = denoiser(x_t, t, text, ref)
    return F.mse_loss(v.float(), (noise - x0).float())
