"""Small helpers shared by the spine tests."""
from __future__ import annotations

from pathlib import Path

import yaml

FIT_BASE = {
    "plugins": ["tests.plugins.fit_method"],
    "method": {"name": "fit", "dim": 3},
    "model": {"backbone": None, "critic": None},
    "eval": {"benchmarks": ["fit_eval"]},
    "train": {"steps": 20, "ckpt_every": 5, "log_every": 1, "betas": [0.9, 0.99]},
}


def write_yaml(path: Path, data: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def fit_sweep(tmp: Path, name: str = "s", grid=None, zip_=None, overrides=None, launcher=None, report=None) -> Path:
    write_yaml(tmp / "base.yaml", FIT_BASE)
    sweep = {"name": name, "base": "base.yaml", "overrides": overrides or {},
             "grid": grid if grid is not None else {"method.lr": [0.05, 0.1]},
             "launcher": {"cpus_per_task": 1, "timeout_min": 10, **(launcher or {})}}
    if zip_:
        sweep["zip"] = zip_
    if report:
        sweep["report"] = report
    return write_yaml(tmp / f"{name}.yaml", sweep)
