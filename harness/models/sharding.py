"""Sharding a denoiser over ranks with FSDP, for backbones that do not fit one GPU beside the critic.

`shard_denoiser` wraps each transformer block (dual- and single-stream lists of SD3 / FLUX) as its own
FSDP unit and the denoiser itself as the root unit, so the embedders, the final norm and any code
the denoiser runs around the blocks (the reference-token path) see full parameters. It uses torch's
FSDP2 `fully_shard` (per-parameter DTensor sharding; it runs on CPU with gloo too, which is how it is
tested). FSDP1 is not offered: it needs an accelerator even to wrap a module, so it could not be
tested here, and its flat parameters would need another checkpoint path.

With FSDP2 the parameters become DTensors sharded along dim 0 and gradients are reduce-scattered
(averaged over ranks) in the backward pass: do not all-reduce them again. `full_trainable_state` and
`load_full_trainable_state` turn them into / from ordinary full tensors for checkpoints and exports.

Every rank must call the sharded denoiser the same number of times, in the same order (collectives).

This calls torch's fully_shard itself, as accelerate's FSDP2 plugin does, rather than going through
the plugin: that shards what Accelerator.prepare is given, under one mixed-precision policy for every
unit (the root here must not cast its inputs, so velocities keep x_t's dtype), and brings its own
state-dict and save_state paths; a method here shards its denoisers (frozen teacher included, outside
any optimizer), leaves the critic whole, and checkpoints the full tensors of full_trainable_state in
the layout that the exact-resume tests check.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch import nn

BLOCK_LISTS = ("transformer_blocks", "single_transformer_blocks")


def distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def wants_sharding(flag: bool) -> bool:
    """True when a config asks for FSDP and there is more than one rank to shard over. Asking for it
    in a single-process run is not an error: the model is simply not sharded."""
    return bool(flag) and distributed() and dist.get_world_size() > 1


def fsdp2_available() -> bool:
    try:
        from torch.distributed.fsdp import fully_shard  # noqa: F401
    except ImportError:
        try:
            from torch.distributed._composable.fsdp import fully_shard  # noqa: F401
        except ImportError:
            return False
    return True


def _fully_shard():
    try:
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
    except ImportError:
        from torch.distributed._composable.fsdp import MixedPrecisionPolicy, fully_shard
    return fully_shard, MixedPrecisionPolicy


def blocks_of(denoiser: nn.Module, block_lists: Sequence[str] = BLOCK_LISTS) -> list[nn.Module]:
    tr = denoiser.transformer
    blocks = [b for name in block_lists for b in getattr(tr, name, [])]
    if not blocks:
        raise ValueError(f"{type(tr).__name__} has none of the block lists {list(block_lists)} to shard")
    return blocks


def shard_denoiser(
    denoiser: nn.Module,
    device: torch.device | str,
    *,
    compute_dtype: torch.dtype = torch.float32,
    block_lists: Sequence[str] = BLOCK_LISTS,
    reshard_after_forward: bool = True,
) -> nn.Module:
    """Shard `denoiser` (a module with `.transformer` holding block lists) in place over all ranks with
    FSDP2; parameters on the CPU move to `device`'s type (the mesh's).

    compute_dtype: parameters are all-gathered in this dtype (gradients reduced in float32), so
    bf16 runs move half the bytes; the float32 master weights stay sharded.
    """
    if not distributed():
        raise RuntimeError("shard_denoiser needs torch.distributed to be initialised (one process per GPU)")
    if not fsdp2_available():
        raise RuntimeError(f"sharding needs FSDP2 (torch.distributed.fsdp.fully_shard, torch >= 2.4); this is torch {torch.__version__}")
    from torch.distributed.device_mesh import init_device_mesh

    fully_shard, MixedPrecisionPolicy = _fully_shard()
    device = torch.device(device)
    blocks = blocks_of(denoiser, block_lists)
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    low = compute_dtype != torch.float32
    mp = MixedPrecisionPolicy(param_dtype=compute_dtype, reduce_dtype=torch.float32) if low else MixedPrecisionPolicy()
    for block in blocks:
        fully_shard(block, mesh=mesh, mp_policy=mp, reshard_after_forward=reshard_after_forward)
    # the root keeps its inputs' dtype: the denoiser returns velocities in the dtype of x_t
    root_mp = MixedPrecisionPolicy(param_dtype=compute_dtype, reduce_dtype=torch.float32, cast_forward_inputs=False) if low else mp
    fully_shard(denoiser, mesh=mesh, mp_policy=root_mp, reshard_after_forward=reshard_after_forward)
    return denoiser


def is_sharded(t: torch.Tensor) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(t, DTensor)


def full_trainable_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """{name: full tensor} of the trainable parameters, gathered from the shards (a collective: every
    rank must call it). Unsharded parameters are cloned as they are."""
    out = {}
    for name, p in module.named_parameters():
        if p.requires_grad:
            out[name] = (p.full_tensor() if is_sharded(p) else p).detach().clone()
    return out


@torch.no_grad()
def load_full_trainable_state(module: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy full tensors (as `full_trainable_state` gives) into the parameters of a sharded or
    unsharded module; each rank keeps its own shard."""
    from torch.distributed.tensor import distribute_tensor

    params = dict(module.named_parameters())
    missing = [k for k in state if k not in params]
    if missing:
        raise KeyError(f"state has weights this model lacks: {missing[:5]}")
    for name, value in state.items():
        p = params[name]
        if tuple(value.shape) != tuple(p.shape):
            raise ValueError(f"{name}: state has shape {tuple(value.shape)}, the model {tuple(p.shape)}")
        if is_sharded(p):
            p.copy_(distribute_tensor(value.to(p.device_mesh.device_type, p.dtype), p.device_mesh, p.placements))
        else:
            p.copy_(value)


__all__ = [
    "blocks_of",
    "distributed",
    "fsdp2_available",
    "full_trainable_state",
    "is_sharded",
    "load_full_trainable_state",
    "shard_denoiser",
    "wants_sharding",
]
