"""The run config: one typed description of a training run and its evaluation."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import re

from harness.config import FieldError, check_range, nohash, poly, poly_list

SEED_MAX = 2**32  # numpy's and most samplers' limit


@dataclass
class ModelConfig:
    # The pretrained text-to-image model: G_theta and A_phi start from it, and it is the frozen DMD teacher.
    backbone: Any = poly("backbone", "toy_mmdit")
    # The VLM critic (VLM loss of NP-Edit; reward of Flow-GRPO). null for methods that need none.
    critic: Any = poly("critic", "toy_llava")


@dataclass
class DataConfig:
    # Instruction dataset folder (instructions.jsonl + images), or 'toyworld' for the built-in world's.
    path: str = "toyworld"
    # Paired dataset folder (pairs.jsonl + images) for supervised baselines, or 'toyworld'.
    paired_path: str = "toyworld"
    # Seeded subset of the reference images (the paper's data-scale axis), in (0, 1].
    fraction: float = 1.0
    # Edit types to train on; empty = every type in the dataset.
    edit_types: list[str] = field(default_factory=list)
    # Probability of drawing each listed edit type; types not listed share the rest uniformly
    # (paper, App. E: uniform, except removal at 25%).
    type_probs: dict[str, float] = field(default_factory=lambda: {"remove": 0.25})
    batch_size: int = 32
    num_workers: int = nohash(0)
    # A dataset's images are header-checked when it is opened (cached per dataset): 'error' stops at
    # the first unreadable one and names it; 'skip' leaves out the records that use one and counts them.
    bad_images: Literal["error", "skip"] = nohash("error")

    def validate(self) -> None:
        check_range(self, "fraction", gt=0, le=1)
        check_range(self, "batch_size", ge=1)
        check_range(self, "num_workers", ge=0)
        check_range(self, "type_probs", ge=0, le=1)
        if sum(self.type_probs.values()) > 1.0 + 1e-9:
            raise FieldError("type_probs", f"got {self.type_probs}; allowed: probabilities that sum to at most 1")


@dataclass
class TrainConfig:
    steps: int = 10_000
    lr: float = 2e-6
    betas: list[float] = field(default_factory=lambda: [0.0, 0.9])
    weight_decay: float = 0.0
    grad_clip: float = 1.0  # max global grad norm; 0 = off
    ema_decay: float = 0.0  # 0 = no EMA
    # Micro-batches per step: each step's data.batch_size samples pass forward and backward in this many
    # chunks, their gradients summed before one optimizer step (same loss as one pass, less activation
    # memory; `python -m harness.plan` suggests it when a batch does not fit).
    grad_accum: int = field(default=1, metadata={"hash": "unless_default"})
    # Start from the final weights of another run (folder), e.g. 'SFT + NP-Edit'; '' = from the pretrained model.
    init_from: str = ""
    deterministic: bool = True
    device: str = nohash("auto", help="auto | cpu | cuda")
    ckpt_every: int = nohash(200, help="steps between checkpoints")
    keep_checkpoints: int = nohash(2)
    log_every: int = nohash(10)
    sample_every: int = nohash(0, help="steps between sample-edit grids; 0 = only at the end")
    # Trackers that also get the metrics, config, sample grids and results (harness.tracking).
    log_with: list[str] = nohash(default_factory=list, help="[] | [tensorboard] | [wandb] | [tensorboard, wandb]")
    wandb_project: str = nohash("", help="W&B project; '' = $WANDB_PROJECT, else np-edit")

    def validate(self) -> None:
        check_range(self, "steps", ge=0)
        check_range(self, "lr", gt=0)
        if len(self.betas) != 2:
            raise FieldError("betas", f"got {self.betas}; allowed: two numbers [beta1, beta2]")
        check_range(self, "betas", ge=0, lt=1)
        check_range(self, "weight_decay", ge=0)
        check_range(self, "grad_clip", ge=0, note="0 = off")
        check_range(self, "ema_decay", ge=0, lt=1, note="0 = no EMA")
        check_range(self, "grad_accum", ge=1, note="1 = the whole batch in one pass")
        if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", self.device):
            raise FieldError("device", f"got {self.device!r}; allowed: auto, cpu, cuda, cuda:N, mps")
        check_range(self, "ckpt_every", ge=1)
        check_range(self, "keep_checkpoints", ge=0, note="0 = keep all")
        check_range(self, "log_every", ge=1)
        check_range(self, "sample_every", ge=0, note="0 = only at the end")
        from harness.tracking import check_trackers

        problem = check_trackers(self.log_with)
        if problem:
            raise FieldError("log_with", problem)


@dataclass
class EvalConfig:
    benchmarks: list[Any] = poly_list("benchmark", "shapes_edit")
    # Sampler of the trained editor: 'method' = the method's own (NP-Edit: 4-step; SFT: Euler with CFG).
    sampler: Literal["method", "few_step", "euler"] = "method"
    steps: int = 0  # 0 = the method's default
    guidance: float = 0.0  # classifier-free guidance on the instruction (euler); 0 = the method's default
    seed: int = 0
    batch_size: int = nohash(32)

    def validate(self) -> None:
        check_range(self, "steps", ge=0, note="0 = the method's default")
        check_range(self, "guidance", ge=0, note="0 = the method's default")
        check_range(self, "seed", ge=0, lt=SEED_MAX)
        check_range(self, "batch_size", ge=1)


@dataclass
class RunConfig:
    method: Any = poly("method", "np_edit")
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    seed: int = 0
    # Modules to import before the config is read: they register user methods, backbones, ...
    plugins: list[str] = field(default_factory=list)
    name: str = nohash("", help="a label for tables; does not change the run id")

    def validate(self) -> None:
        """Model entries that depend on the rest of the run (registry Spec.resolve) take it here,
        so that config.yaml, the run id and an exported editor all record what the run used."""
        from harness.registry import BACKBONES, CRITICS, METHODS

        check_range(self, "seed", ge=0, lt=SEED_MAX)
        if self.data.batch_size % self.train.grad_accum:
            raise FieldError("train.grad_accum", f"got {self.train.grad_accum} for data.batch_size "
                             f"{self.data.batch_size}; allowed: a divisor of data.batch_size")
        resolve = METHODS.get(self.method.name).resolve if self.method is not None else None
        if resolve is not None:  # e.g. an editor that trains nothing resets the parts it does not use
            try:
                self.method = resolve(self.method, self)
            except ValueError as e:
                raise ValueError(f"method: {e}") from None
        for part, reg in (("backbone", BACKBONES), ("critic", CRITICS)):
            section = getattr(self.model, part)
            resolve = reg.get(section.name).resolve if section is not None else None
            if resolve is not None:
                try:
                    setattr(self.model, part, resolve(section, self))
                except ValueError as e:
                    raise ValueError(f"model.{part}: {e}") from None


Precision = Literal["float32", "bfloat16", "float16"]
