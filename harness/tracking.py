"""TensorBoard and Weights & Biases for a run: `train.log_with: [tensorboard, wandb]` (default: none).

From the main process only, each tracker gets what metrics.jsonl gets, at the same steps; the
resolved config; the sample grids the run writes (samples/step_*.png) as images; and the
evaluation results as eval/<benchmark>/<subset>/<metric> at the last step.

- TensorBoard: RUN/tensorboard/ (`tensorboard --logdir runs/<sweep>` shows a sweep's runs). A
  resumed run writes to the same folder; its first event purges the steps after the checkpoint it
  resumed from, which the process before it may have logged, so no step appears twice.
- W&B: project `train.wandb_project` (or $WANDB_PROJECT, else 'np-edit'), run name = the run id,
  group = the run folder's parent (the sweep), files under RUN/wandb/. The W&B run id is
  <group>-<run id> with resume='allow', so a resumed run continues the same W&B run (W&B does not
  rewrite a step: it may keep the first process's values for the steps logged again). WANDB_MODE=offline
  works with no network (`wandb sync RUN/wandb/offline-run-*` uploads later). Credentials
  (WANDB_API_KEY) are read by wandb from the environment; nothing here reads or writes them.

A tracker that fails (network, disk) prints one warning and is dropped: tracking never stops a run.

torch's SummaryWriter and wandb are used directly, not accelerate's trackers: those log through
accelerate's logger, which needs a PartialState, and making one may start process groups and
changes torch's thread count, in runs whose process groups harness.launch sets up.
"""
from __future__ import annotations

import importlib.util
import os
import re
from pathlib import Path
from typing import Any

from harness.runstore import RunDir, warn

# name in train.log_with -> (module it needs, pip package that provides it)
TRACKERS = {"tensorboard": ("tensorboard", "tensorboard"), "wandb": ("wandb", "wandb")}


def check_trackers(names: list[str]) -> str | None:
    """Why `names` cannot be used (unknown, or its package missing), or None when they can."""
    for name in names:
        if name not in TRACKERS:
            return f"got {name!r}; allowed: a list of {', '.join(TRACKERS)} (or [] for none)"
        module, package = TRACKERS[name]
        if importlib.util.find_spec(module) is None:
            return (f"{name} is not installed; pip install {package} "
                    f"(or pip install -e '.[track]'), or leave {name} out")
    if len(set(names)) != len(names):
        return f"got {names}; each tracker at most once"
    return None


def wandb_run_id(rd: RunDir) -> str:
    """<group>-<run id>: a run id is a config hash, so the same config in two sweeps is two W&B runs."""
    group = re.sub(r"[^A-Za-z0-9_.-]+", "_", rd.path.parent.name)[:48]
    return f"{group}-{rd.id}"


class TensorBoard:
    def __init__(self, rd: RunDir, cfg: Any, step: int, config_yaml: str):
        from torch.utils.tensorboard import SummaryWriter

        # TensorBoard hides events at steps >= purge_step written before this one: the steps after
        # the checkpoint, which metrics.jsonl drops too (RunDir.truncate_metrics) and this process logs again
        self.writer = SummaryWriter(str(rd.path / "tensorboard"), purge_step=step + 1, flush_secs=30)
        self.writer.add_text("config", "\n".join("    " + line for line in config_yaml.splitlines()), step)

    def log(self, values: dict[str, float], step: int) -> None:
        for k, v in values.items():
            self.writer.add_scalar(k, v, step)

    def image(self, key: str, arr: Any, step: int) -> None:
        self.writer.add_image(key, arr, step, dataformats="HWC")

    def finish(self) -> None:
        self.writer.close()


class WandB:
    def __init__(self, rd: RunDir, cfg: Any, step: int, config_yaml: str):
        import wandb
        import yaml

        project = cfg.train.wandb_project or os.environ.get("WANDB_PROJECT") or "np-edit"
        self.run = wandb.init(project=project, name=rd.id, id=wandb_run_id(rd), group=rd.path.parent.name,
                              job_type="train", resume="allow", dir=str(rd.path),
                              settings=wandb.Settings(console="off"))  # stdout/stderr stay the run's own
        self.run.config.update(yaml.safe_load(config_yaml), allow_val_change=True)

    def log(self, values: dict[str, float], step: int) -> None:
        self.run.log(values, step=step)

    def image(self, key: str, arr: Any, step: int) -> None:
        import wandb

        self.run.log({key: wandb.Image(arr)}, step=step)

    def finish(self) -> None:
        self.run.finish()


class Trackers:
    """The run's trackers (none when train.log_with is empty, and on ranks other than 0)."""

    def __init__(self, cfg: Any, rd: RunDir, *, main: bool = True):
        self.cfg, self.rd = cfg, rd
        self.names: list[str] = list(cfg.train.log_with) if main else []
        self.live: dict[str, Any] = {}

    def start(self, step: int) -> None:
        """Open every tracker to continue from `step` (0 for a fresh run) and record the config."""
        from harness import config as C

        text = C.dump_yaml(self.cfg)
        for name in self.names:
            def open_one(name: str = name) -> None:
                self.live[name] = {"tensorboard": TensorBoard, "wandb": WandB}[name](self.rd, self.cfg, step, text)
            self._call(name, open_one)

    def log(self, row: dict[str, Any], step: int) -> None:
        """One metrics.jsonl row (its numbers, without 'step')."""
        values = {k: v for k, v in row.items() if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)}
        for name in list(self.live):
            self._call(name, lambda t=self.live[name]: t.log(values, step))

    def log_image(self, path: Path, step: int, key: str = "samples") -> None:
        if not self.live:
            return
        import numpy as np
        from PIL import Image

        with Image.open(path) as im:
            arr = np.asarray(im.convert("RGB"))
        for name in list(self.live):
            self._call(name, lambda t=self.live[name]: t.image(key, arr, step))

    def log_results(self, results: list[Any], step: int) -> None:
        values = {f"eval/{r.benchmark}/{r.subset}/{k}": float(v) for r in results for k, v in r.metrics.items()
                  if isinstance(v, (int, float))}
        if values:
            self.log(values, step)

    def close(self) -> None:
        for name in list(self.live):
            self._call(name, self.live[name].finish)
        self.live.clear()

    def _call(self, name: str, fn: Any) -> None:
        try:
            fn()
        except Exception as e:  # tracking never stops a run
            self.live.pop(name, None)
            first = (str(e).strip().splitlines() or [""])[0][:200]
            warn(f"{self.rd.path}: train.log_with {name}: {type(e).__name__}: {first}; "
                 f"no more logging to {name} in this process, training goes on")
