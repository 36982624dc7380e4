"""Pieces every generator-training method shares: building the models from the run config, the
few-step editor, trainable-state checkpoints, EMA, gradient averaging, export and reload."""
from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable

import torch
import torch.distributed as dist
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import nn

from harness import config as C
from harness.data.sampling import to_pil, to_tensor
from harness.models.base import TextEmbedding
from harness.models.sampler import euler_sample, few_step_sample
from harness.models.sharding import full_trainable_state, is_sharded, load_full_trainable_state
from harness.registry import BACKBONES, CRITICS


def build_backbone(cfg: Any, device: torch.device) -> Any:
    if cfg.model.backbone is None:
        raise ValueError(f"method {cfg.method.name} needs model.backbone")
    return BACKBONES.get(cfg.model.backbone.name).build(cfg.model.backbone, device)


def build_critic(cfg: Any, device: torch.device) -> Any:
    if cfg.model.critic is None:
        raise ValueError(f"method {cfg.method.name} needs model.critic (a VLM)")
    return CRITICS.get(cfg.model.critic.name).build(cfg.model.critic, device)


def resolve_data_path(path: str, cfg: Any, *, paired: bool) -> Path:
    """'toyworld' = the built-in world's dataset (built and cached on first use)."""
    if path == "toyworld":
        from harness.toyworld.assets import world_dataset

        inst, pairs = world_dataset(cfg)
        return pairs if paired else inst
    return Path(path)


# ---------------------------------------------------------------------------------------------
# trainable state


def trainable_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """Full tensors of the trainable weights (gathered from FSDP shards: every rank must call it)."""
    return full_trainable_state(module)


def load_trainable_state(module: nn.Module, state: dict[str, torch.Tensor]) -> None:
    load_full_trainable_state(module, state)


def optimizer_state(module: nn.Module, opt: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimizer's state with full tensors, also when the module is sharded (a collective then)."""
    if not any(is_sharded(p) for p in module.parameters()):
        return opt.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(module, opt, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_optimizer_state(module: nn.Module, opt: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    if not any(is_sharded(p) for p in module.parameters()):
        opt.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(module, opt, state, options=StateDictOptions(full_state_dict=True))


class EMA:
    def __init__(self, module: nn.Module, decay: float):
        self.decay = decay
        self.shadow = trainable_state(module)

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        for k, p in module.named_parameters():
            if k in self.shadow:
                self.shadow[k].lerp_(p.detach(), 1 - self.decay)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.shadow

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.shadow = {k: v.clone() for k, v in state.items()}


def micro_batches(n: int, k: int) -> list[list[int]]:
    """The sample indices of train.grad_accum = k micro-batches of a batch of n (k divides n).

    The methods loop over them themselves: accelerate's accumulate() exists to skip DDP's gradient
    all-reduce on all but the last micro-batch, and average_gradients below already runs once a step."""
    size = -(-n // k)
    return [list(range(i, min(n, i + size))) for i in range(0, n, size)]


def average_gradients(params: Iterable[nn.Parameter]) -> None:
    """Data parallelism without wrappers: average gradients over ranks (the unroll calls G twice)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return
    world = dist.get_world_size()
    for p in params:
        if p.grad is not None and not is_sharded(p.grad):  # FSDP already averaged sharded gradients
            dist.all_reduce(p.grad)
            p.grad /= world


def rng_state() -> dict[str, Any]:
    st: dict[str, Any] = {"torch": torch.get_rng_state(), "python": list(random.getstate()[1])}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def set_rng_state(st: dict[str, Any]) -> None:
    torch.set_rng_state(st["torch"])
    version, _, gauss = random.getstate()
    random.setstate((version, tuple(st["python"]), gauss))
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


# ---------------------------------------------------------------------------------------------
# the editor


@dataclass(frozen=True)
class Sampling:
    sampler: str = "few_step"  # few_step | euler
    steps: int = 4
    guidance: float = 1.0  # classifier-free guidance on the instruction (euler only)


def eval_sampling(cfg: Any, default: Sampling) -> Sampling:
    """The sampler used for evaluation and export: the method's default unless eval.* overrides it."""
    e = cfg.eval
    return Sampling(
        sampler=default.sampler if e.sampler == "method" else e.sampler,
        steps=e.steps or default.steps,
        guidance=e.guidance or default.guidance,
    )


class SamplingEditor:
    """Edits with a reference-conditioned denoiser: the paper's few-step sampler, or a multi-step
    Euler ODE with classifier-free guidance (Editor protocol)."""

    def __init__(self, backbone: Any, denoiser: nn.Module, sampling: Sampling = Sampling(), shift: float | None = None):
        self.backbone, self.denoiser, self.sampling = backbone, denoiser, sampling
        self.shift = backbone.shift if shift is None else shift

    @torch.no_grad()
    def edit_tensor(self, images: torch.Tensor, instructions: list[str], *, seed: int = 0) -> torch.Tensor:
        """(B, 3, S, S) in [-1, 1] -> edited (B, 3, S, S) in [-1, 1]."""
        dev = self.backbone.device
        ref = self.backbone.encode_image(images.to(dev))
        text = self.backbone.encode_text(instructions)
        g = torch.Generator(device="cpu").manual_seed(seed)
        noise = torch.randn(ref.shape, generator=g).to(dev)
        s = self.sampling
        was = self.denoiser.training
        self.denoiser.eval()
        try:
            if s.sampler == "few_step":
                x0 = few_step_sample(self.denoiser, text, ref, noise, steps=s.steps, shift=self.shift, generator=g_like(g, dev))
            elif s.sampler == "euler":
                uncond = self.backbone.encode_text([""]) if s.guidance != 1.0 else None
                x0 = euler_sample(self.denoiser, text, ref, noise, steps=s.steps, guidance=s.guidance,
                                  uncond_text=uncond, shift=self.shift)
            else:
                raise ValueError(f"unknown sampler {s.sampler!r} (few_step | euler)")
        finally:
            self.denoiser.train(was)
        return self.backbone.decode(x0).clamp(-1, 1)

    def edit(self, images: list[Image.Image], instructions: list[str], *, seed: int = 0) -> list[Image.Image]:
        size = self.backbone.image_size
        x = torch.stack([to_tensor(im, size) for im in images])
        return [to_pil(o) for o in self.edit_tensor(x, instructions, seed=seed)]


def g_like(g: torch.Generator, device: torch.device) -> torch.Generator | None:
    """The sampler's re-noising generator on `device`, seeded from g (CPU generators only work on CPU)."""
    if torch.device(device).type == "cpu":
        return g
    seed = int(torch.randint(0, 2**62, (1,), generator=g))
    return torch.Generator(device=device).manual_seed(seed)


def export_editor(folder: str | Path, weights: dict[str, torch.Tensor], backbone_cfg: Any, sampling: Sampling,
                  method: str) -> None:
    """model/denoiser.safetensors (trainable weights: all of them, or the LoRA adapter) + editor.json."""
    from harness.launch import is_main_process
    from harness.runstore import atomic_path, atomic_write_json

    if not is_main_process():
        return
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)

    with atomic_path(folder / "denoiser.safetensors") as tmp:
        save_file({k: v.contiguous() for k, v in weights.items()}, str(tmp))
    atomic_write_json(folder / "editor.json", {
        "loader": "methods.common:load_editor",
        "method": method,
        "sampling": asdict(sampling),
        "backbone": C.to_dict(backbone_cfg),
    })


def load_editor(folder: str | Path, device: str = "cpu") -> SamplingEditor:
    folder = Path(folder)
    meta = json.loads((folder / "editor.json").read_text())
    bcfg = C.build_section(BACKBONES, meta["backbone"], str(folder / "editor.json"), "backbone")
    backbone = BACKBONES.get(bcfg.name).build(bcfg, torch.device(device))
    den = backbone.make_denoiser(trainable=True)
    load_trainable_state(den, load_file(str(folder / "denoiser.safetensors")))
    den.eval()
    return SamplingEditor(backbone, den, Sampling(**meta["sampling"]))


def resolve_init_from(init_from: str, run_dir: Path) -> Path:
    """`train.init_from`: a run folder (or its model/), or '@<run-id>' for a run of the same sweep."""
    if init_from.startswith("@"):
        return Path(run_dir).parent / init_from[1:]
    return Path(init_from)


def load_init(denoiser: nn.Module, init_from: str, run_dir: Path) -> None:
    """Start from another run's exported generator."""
    p = resolve_init_from(init_from, run_dir)
    f = p / "model" / "denoiser.safetensors" if (p / "model").is_dir() else p / "denoiser.safetensors"
    if not f.exists():
        raise FileNotFoundError(f"train.init_from: {f} not found (is {p} a finished run?)")
    load_trainable_state(denoiser, load_file(str(f)))


def load_init_base(backbone: Any, init_from: str, run_dir: Path) -> None:
    """Load another run's exported generator into the backbone's own (frozen) transformer, so that the
    denoisers made afterwards start from it: a LoRA adapter then sits on top of it, and disabling the
    adapter gives that run's model (e.g. Flow-GRPO's reference policy = the SFT model). The weights take
    the backbone's dtype."""
    base = backbone.make_denoiser(trainable=False)
    if getattr(base, "transformer", None) is not getattr(backbone, "transformer", None):
        raise ValueError("train.init_from under a LoRA adapter needs a backbone whose frozen denoiser shares its "
                         "transformer (not a sharded copy)")
    load_init(base, init_from, run_dir)


def merged_weights(denoiser: nn.Module) -> dict[str, torch.Tensor]:
    """Every weight of `denoiser`, named as in a full-weight denoiser: a LoRA adapter (peft) is merged into
    its base weights (W + delta, in float32). Exported this way, `load_editor` rebuilds the editor with
    `make_denoiser(trainable=True)` on a backbone config with lora_rank 0, whatever the base was."""
    from peft.tuners.lora import LoraLayer

    layers = [(name, mod) for name, mod in denoiser.named_modules() if isinstance(mod, LoraLayer)]
    if not layers:  # full fine-tuning: every weight is trainable (gathered when sharded)
        return trainable_state(denoiser)
    if any(is_sharded(p) for p in denoiser.parameters()):
        raise NotImplementedError("merging a LoRA adapter into sharded (FSDP) weights")
    delta = {}
    for name, mod in layers:
        if not mod.merged:
            for adapter in mod.active_adapters:
                d = mod.get_delta_weight(adapter).detach().float()
                key = f"{name}.base_layer.weight"
                delta[key] = delta[key] + d if key in delta else d
    out = {}
    for name, p in denoiser.named_parameters():
        if "lora_" in name:
            continue
        w = p.detach()
        if name in delta:
            w = w.float() + delta[name]
        out[name.replace(".base_layer.", ".")] = w.clone()
    return out


def sample_grid(rows: list[list[torch.Tensor]], pad: int = 2) -> Image.Image:
    """rows of (3, H, W) images in [-1, 1] -> one PIL grid."""
    h, w = rows[0][0].shape[1:]
    cols = max(len(r) for r in rows)
    grid = Image.new("RGB", (cols * (w + pad) + pad, len(rows) * (h + pad) + pad), (255, 255, 255))
    for i, r in enumerate(rows):
        for j, x in enumerate(r):
            grid.paste(to_pil(x), (pad + j * (w + pad), pad + i * (h + pad)))
    return grid


def encode_prompts(backbone: Any, prompts: list[str]) -> TextEmbedding:
    with torch.no_grad():
        return backbone.encode_text(prompts)
