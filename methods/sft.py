"""Supervised fine-tuning (SFT) on paired data (paper, Sec. 5.3 and App. F): the standard
velocity-prediction flow loss on the target image, conditioned on the clean reference latents and the
instruction, with condition dropout so that classifier-free guidance works at inference.

Paper (App. F): 30K iterations, batch 32, lr 2e-6 with a linear warmup of 2K iterations, image and
text conditions each dropped 10% of the time. Full fine-tuning, or a LoRA adapter when
backbone.lora_rank > 0; either way the export is full weights (a LoRA merged into its base), which
`train.init_from` of Flow-GRPO or NP-Edit then loads ("SFT + RL", "SFT + Ours" of Table 4).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F

from harness.data.sampling import InstructionData, step_generator
from harness.models.base import TextEmbedding
from harness.registry import METHODS, Spec
from methods import common
from methods.np_edit import NPEdit, NPEditConfig

SAMPLING = common.Sampling("euler", 28, 4.5)  # multi-step Euler with CFG on the instruction (not in the paper)


@dataclass
class SFTConfig:
    """Defaults are the paper's (App. F) unless noted."""

    name: str = "sft"
    warmup_steps: int = 2000  # linear learning-rate warmup from 0 to train.lr
    drop_text: float = 0.1  # per sample: the instruction becomes ""
    drop_image: float = 0.1  # per sample, independently: no reference tokens
    # Training times: SD3's logit-normal (sigmoid of N(mean, std)) or uniform in (0, 1) (not in the paper).
    t_sampling: Literal["logit_normal", "uniform"] = "logit_normal"
    logit_mean: float = 0.0
    logit_std: float = 1.0

    def validate(self) -> None:
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        for k in ("drop_text", "drop_image"):
            if not 0 <= getattr(self, k) < 1:
                raise ValueError(f"{k} must be in [0, 1), got {getattr(self, k)}")
        if self.logit_std <= 0:
            raise ValueError(f"logit_std must be > 0, got {self.logit_std}")


def condition_dropout(n: int, drop_text: float, drop_image: float, g: torch.Generator) -> tuple[list[bool], list[bool]]:
    """Which samples lose their text and which their reference image (independent draws)."""
    u = torch.rand(2, n, generator=g)
    return (u[0] < drop_text).tolist(), (u[1] < drop_image).tolist()


def velocity_mixed_ref(denoiser: Any, x_t: torch.Tensor, t: torch.Tensor, text: TextEmbedding,
                       ref: torch.Tensor, keep_ref: list[bool], *, both_calls: bool = False) -> torch.Tensor:
    """v = D(x_t, t, text, ref) where samples with keep_ref False see no reference tokens (ref=None):
    one call per group, outputs back in batch order. `both_calls`: make both calls even when a group is
    empty (on the first sample, weighted 0), so that every rank of a sharded model runs the same
    forward and backward passes."""
    groups = [([i for i, k in enumerate(keep_ref) if k], ref), ([i for i, k in enumerate(keep_ref) if not k], None)]
    parts, order, dummy = [], [], None
    for idx, r in groups:
        if idx:
            parts.append(denoiser(x_t[idx], t[idx], text[idx], None if r is None else r[idx]))
            order += idx
        elif both_calls:
            dummy = denoiser(x_t[:1], t[:1], text[:1], None if r is None else r[:1])
    v = torch.cat(parts)
    v = v[torch.argsort(torch.tensor(order, device=v.device))]
    return v if dummy is None else v + 0.0 * dummy.mean()


class SFT:
    def __init__(self, cfg: Any, rd: Any, device: torch.device):
        self.cfg, self.m, self.device = cfg, cfg.method, device
        self.backbone = common.build_backbone(cfg, device)
        self.lora = cfg.model.backbone.lora_rank > 0
        if cfg.train.init_from and self.lora:
            common.load_init_base(self.backbone, cfg.train.init_from, rd.path)
        self.G = self.backbone.make_denoiser(trainable=True)
        if cfg.train.init_from and not self.lora:
            common.load_init(self.G, cfg.train.init_from, rd.path)
        self.data = InstructionData(
            common.resolve_data_path(cfg.data.paired_path, cfg, paired=True), image_size=self.backbone.image_size,
            fraction=cfg.data.fraction, seed=cfg.seed, edit_types=cfg.data.edit_types, type_probs=cfg.data.type_probs,
            paired=True)
        self.params = [p for p in self.G.parameters() if p.requires_grad]
        self.opt = torch.optim.Adam(self.params, lr=cfg.train.lr, betas=tuple(cfg.train.betas),
                                    weight_decay=cfg.train.weight_decay)
        self.ema = common.EMA(self.G, cfg.train.ema_decay) if cfg.train.ema_decay > 0 else None
        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        self.seed = cfg.seed * 1000 + rank

    def _gen(self, step: int, stream: str) -> torch.Generator:
        return step_generator(self.seed, step, stream)

    def _batch(self, step: int):
        return self.data.sample(self.cfg.data.batch_size, self._gen(step, "data"))

    def lr_at(self, step: int) -> float:
        w = self.m.warmup_steps
        return self.cfg.train.lr * (min(1.0, (step + 1) / w) if w > 0 else 1.0)

    def _times(self, n: int, g: torch.Generator) -> torch.Tensor:
        if self.m.t_sampling == "uniform":
            t = torch.rand(n, generator=g)
        else:
            t = torch.sigmoid(self.m.logit_mean + self.m.logit_std * torch.randn(n, generator=g))
        return t.clamp(1e-4, 1.0)

    # -- Method protocol ------------------------------------------------------------------------
    def train_step(self, step: int) -> dict[str, float]:
        batch = self._batch(step)
        g = self._gen(step, "noise")
        n = len(batch.records)
        drop_text, drop_image = condition_dropout(n, self.m.drop_text, self.m.drop_image, g)
        texts = ["" if d else r.instruction for d, r in zip(drop_text, batch.records)]
        with torch.no_grad():
            x0 = self.backbone.encode_image(batch.targets.to(self.device))
            ref = self.backbone.encode_image(batch.images.to(self.device))
            text = self.backbone.encode_text(texts)
        t = self._times(n, g).to(self.device)
        noise = torch.randn(x0.shape, generator=g).to(self.device)
        tb = t.view(-1, *([1] * (x0.ndim - 1)))
        x_t = (1 - tb) * x0 + tb * noise
        multi_rank = torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1
        keep_ref = [not d for d in drop_image]

        lr = self.lr_at(step)
        for group in self.opt.param_groups:
            group["lr"] = lr
        self.opt.zero_grad(set_to_none=True)
        loss_sum = 0.0
        for c in common.micro_batches(n, self.cfg.train.grad_accum):  # their gradients sum to the batch's
            v = velocity_mixed_ref(self.G, x_t[c], t[c], text[c], ref[c], [keep_ref[i] for i in c], both_calls=multi_rank)
            loss = F.mse_loss(v.float(), (noise[c] - x0[c]).float()) * (len(c) / n)
            loss.backward()
            loss_sum += loss.item()
        common.average_gradients(self.params)
        clip = self.cfg.train.grad_clip if self.cfg.train.grad_clip > 0 else float("inf")
        gn = torch.nn.utils.clip_grad_norm_(self.params, clip)
        self.opt.step()
        if self.ema is not None:
            self.ema.update(self.G)
        return {"loss": loss_sum, "grad_norm": float(gn), "lr": lr,
                "drop_text": sum(drop_text) / n, "drop_image": sum(drop_image) / n}

    def state_dict(self) -> dict[str, Any]:
        st: dict[str, Any] = {"G": common.trainable_state(self.G), "opt": common.optimizer_state(self.G, self.opt),
                              "rng": common.rng_state()}
        if self.ema is not None:
            st["ema"] = self.ema.state_dict()
        return st

    def load_state_dict(self, st: dict[str, Any]) -> None:
        common.load_trainable_state(self.G, st["G"])
        common.load_optimizer_state(self.G, self.opt, st["opt"])
        if self.ema is not None:
            self.ema.load_state_dict(st["ema"])
        common.set_rng_state(st["rng"])

    def _final_denoiser(self) -> torch.nn.Module:
        if self.ema is None:
            return self.G
        den = self.backbone.make_denoiser(trainable=True)
        common.load_trainable_state(den, self.ema.state_dict())  # a LoRA copy's base holds any init_from weights
        return den

    def editor(self) -> common.SamplingEditor:
        return common.SamplingEditor(self.backbone, self._final_denoiser(), common.eval_sampling(self.cfg, SAMPLING))

    def export(self, folder: str) -> None:
        """Full weights (a LoRA adapter merged into its base), loadable by `train.init_from` and `harness.edit`."""
        bcfg = replace(self.cfg.model.backbone, lora_rank=0) if self.lora else self.cfg.model.backbone
        common.export_editor(folder, common.merged_weights(self._final_denoiser()), bcfg,
                             common.eval_sampling(self.cfg, SAMPLING), self.m.name)

    def save_samples(self, path: Path, n_per_type: int = 1) -> None:
        """Rows of (reference, edit, target) for the first pairs of each edit type."""
        picks = []
        for t in self.data.types:
            picks += self.data.by_type[t][:n_per_type]
        images = torch.stack([self.data.images(r.image) for r in picks])
        targets = torch.stack([self.data.images(r.target) for r in picks])
        out = self.editor().edit_tensor(images, [r.instruction for r in picks], seed=0)
        common.sample_grid([[images[i], out[i].cpu(), targets[i]] for i in range(len(picks))]).save(path)


def build(cfg: Any, rd: Any, device: torch.device) -> SFT:
    return SFT(cfg, rd, device)


def require_init_from(cfg: Any, what: str) -> None:
    if not cfg.train.init_from:
        raise ValueError(f"method {cfg.method.name!r} ({what}) starts from an SFT run: set train.init_from "
                         f"(its run folder, or '@<name>' of a run in the same sweep)")


def build_sft_np_edit(cfg: Any, rd: Any, device: torch.device) -> NPEdit:
    """'SFT + Ours' of Table 4: NP-Edit (full fine-tuning) from an SFT run's exported weights."""
    require_init_from(cfg, "SFT + NP-Edit")
    return NPEdit(cfg, rd, device)


METHODS.register("sft", Spec(SFTConfig, build, help="supervised fine-tuning on paired data (App. F)"))
METHODS.register("sft_np_edit", Spec(NPEditConfig, build_sft_np_edit,
                                     help="NP-Edit started from an SFT run (train.init_from; Table 4 'SFT + Ours')"))
