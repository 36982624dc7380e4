"""A test-only method and benchmark that drive the harness spine without real models.

`fit` fits a vector w to a target with Adam on a noisy quadratic loss (noise from its own RNG), so a
run is deterministic, its resume must restore optimizer and RNG state exactly, and it can be made
slow (step_seconds) or fail on purpose (fail_at_step). `fit_eval` scores ||w - target||^2.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from benchmarks.base import BenchmarkResult, Sample
from harness.registry import BENCHMARKS, METHODS, Spec


@dataclass
class FitConfig:
    name: str = "fit"
    dim: int = 4
    lr: float = 0.05
    noise: float = 0.1
    target: float = 1.0
    step_seconds: float = 0.0
    fail_at_step: int = -1
    fail_if_file: str = ""  # fail at fail_at_step only while this file exists
    nan_at_step: int = -1
    samples: bool = field(default=False, metadata={"hash": "unless_default"})  # write sample grids (sample_png)


class FitEditor:
    def __init__(self, w: torch.Tensor, target: float):
        self.w, self.target = w, target

    def edit(self, images, instructions, *, seed=0):
        return list(images)


class FitMethod:
    def __init__(self, cfg, rd, device):
        self.mcfg = cfg.method
        g = torch.Generator().manual_seed(cfg.seed)
        self.w = torch.randn(self.mcfg.dim, generator=g)
        if cfg.train.init_from:  # '@<run-id>' of the same sweep, or a run folder
            from methods.common import resolve_init_from

            self.w = load_file(str(resolve_init_from(cfg.train.init_from, rd.path) / "model" / "w.safetensors"))["w"]
            (rd.path / "init_w.json").write_text(json.dumps(self.w.tolist()))
        self.w.requires_grad_(True)
        self.opt = torch.optim.Adam([self.w], lr=self.mcfg.lr, betas=tuple(cfg.train.betas))
        self.gen = torch.Generator().manual_seed(cfg.seed + 1)
        self.rd = rd
        if self.mcfg.samples:
            self.save_samples = self._save_samples
        with open(rd.path / "starts.log", "a") as f:  # lets tests count (re)starts
            f.write(f"{os.getpid()} threads={torch.get_num_threads()}\n")

    def train_step(self, step):
        if step == self.mcfg.fail_at_step and (not self.mcfg.fail_if_file or os.path.exists(self.mcfg.fail_if_file)):
            raise RuntimeError(f"planned failure at step {step}")
        noise = self.mcfg.noise * torch.randn(self.mcfg.dim, generator=self.gen)
        loss = ((self.w - self.mcfg.target - noise) ** 2).sum()
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        if self.mcfg.step_seconds:
            time.sleep(self.mcfg.step_seconds)
        return {"loss": float("nan") if step == self.mcfg.nan_at_step else loss.item()}

    def _save_samples(self, path):
        sample_png(int(Path(path).stem.removeprefix("step_"))).save(path)

    def state_dict(self):
        return {"w": self.w.detach().clone(), "opt": self.opt.state_dict(), "rng": self.gen.get_state()}

    def load_state_dict(self, state):
        with torch.no_grad():
            self.w.copy_(state["w"])
        self.opt.load_state_dict(state["opt"])
        self.gen.set_state(state["rng"])

    def editor(self):
        return FitEditor(self.w.detach().clone(), self.mcfg.target)

    def export(self, folder):
        Path(folder).mkdir(parents=True, exist_ok=True)
        save_file({"w": self.w.detach().contiguous()}, str(Path(folder) / "w.safetensors"))
        (Path(folder) / "editor.json").write_text(json.dumps(
            {"loader": "tests.plugins.fit_method:load_editor", "target": self.mcfg.target}))


def sample_png(step):
    """The fit method's 'sample grid' after `step` steps: a small image that names its step."""
    from PIL import Image

    return Image.new("RGB", (6, 4), (step % 256, 255 - step % 256, 7))


def load_editor(folder, device="cpu"):
    meta = json.loads((Path(folder) / "editor.json").read_text())
    return FitEditor(load_file(str(Path(folder) / "w.safetensors"))["w"], meta["target"])


@dataclass
class FitEvalConfig:
    name: str = "fit_eval"
    split: str = "test"  # 'val' | 'test': which split a run is scored on (recorded in scored_splits.log)


class FitEval:
    name = "fit_eval"

    def __init__(self, cfg=None):
        self.split = cfg.split if cfg is not None else "test"

    def samples(self):
        return [Sample("0", None, "", "fit")]

    def generate(self, editor, out_dir, *, model_name="model", batch_size=8, shard=(0, 1), progress=True, seed=0):
        out = Path(out_dir) / model_name
        out.mkdir(parents=True, exist_ok=True)
        save_file({"w": editor.w.contiguous(), "t": torch.tensor([editor.target])}, str(out / "w.safetensors"))

    def score(self, out_dir, *, model_name="model"):
        d = load_file(str(Path(out_dir) / model_name / "w.safetensors"))
        err = float(((d["w"] - d["t"]) ** 2).sum())
        with open(Path(out_dir).parent.parent / "scored_splits.log", "a") as f:  # <run>/eval/<bench>/
            f.write(self.split + "\n")
        subset = "val" if self.split == "val" else "all"
        return [BenchmarkResult("fit_eval", subset=subset, metrics={"err": err, "w0": float(d["w"][0])},
                                per_task={"fit": {"err": err}}, counts={"fit": {"n": 1, "scored": 1}})]


METHODS.register("fit", Spec(FitConfig, FitMethod))
METHODS.register("fit_fast", Spec(FitConfig, FitMethod, defaults={"lr": 0.2}))
BENCHMARKS.register("fit_eval", Spec(FitEvalConfig, lambda cfg: FitEval(cfg)))
