"""The run folder: everything one run writes, and the atomic writes later steps can trust.

    <runs>/<sweep>/<run_id>/
        config.yaml      resolved config (the run id is a hash of it)
        status           JSON: state (queued | running | done | failed), job id, host, time
        checkpoints/     step_00000100.pt ... (torch.save of plain tensors/containers; loaded weights_only)
        metrics.jsonl    one JSON object per logged step
        samples/         sample edit grids
        model/           the final editing model (safetensors + config)
        eval/            benchmark outputs in their public layouts
        result.json      benchmark results; the run is done iff it exists
        error.txt        traceback of the last failure
"""
from __future__ import annotations

import json
import os
import re
import socket
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch

STATES = ("todo", "queued", "running", "done", "failed")
_CKPT = re.compile(r"^step_(\d+)\.pt$")


# ---------------------------------------------------------------------------------------------
# atomic writes


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success it replaces `path` in one rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=1, sort_keys=False, default=str) + "\n")


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


# ---------------------------------------------------------------------------------------------


class RunDir:
    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    @property
    def id(self) -> str:
        return self.path.name

    config_path = property(lambda self: self.path / "config.yaml")
    status_path = property(lambda self: self.path / "status")
    result_path = property(lambda self: self.path / "result.json")
    metrics_path = property(lambda self: self.path / "metrics.jsonl")
    error_path = property(lambda self: self.path / "error.txt")
    ckpt_dir = property(lambda self: self.path / "checkpoints")
    samples_dir = property(lambda self: self.path / "samples")
    model_dir = property(lambda self: self.path / "model")
    eval_dir = property(lambda self: self.path / "eval")

    # -- status ---------------------------------------------------------------------------------
    def read_status(self) -> dict[str, Any]:
        if self.result_path.exists():
            st = self._read_status_file()
            st["state"] = "done"
            return st
        return self._read_status_file() or {"state": "todo"}

    def _read_status_file(self) -> dict[str, Any]:
        try:
            return json.loads(self.status_path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return {}

    def set_status(self, state: str, **info: Any) -> None:
        assert state in STATES, state
        st = {"state": state, "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "host": socket.gethostname(),
              "pid": os.getpid(), **info}
        atomic_write_json(self.status_path, st)

    def is_done(self) -> bool:
        return self.result_path.exists()

    # -- results --------------------------------------------------------------------------------
    def write_result(self, result: dict[str, Any]) -> None:
        atomic_write_json(self.result_path, result)

    def read_result(self) -> dict[str, Any]:
        return json.loads(self.result_path.read_text())

    def write_error(self, text: str) -> None:
        atomic_write_text(self.error_path, text)

    def read_error(self) -> str:
        return self.error_path.read_text() if self.error_path.exists() else ""

    # -- metrics --------------------------------------------------------------------------------
    def log_metrics(self, row: dict[str, Any]) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()

    def read_metrics(self) -> list[dict[str, Any]]:
        if not self.metrics_path.exists():
            return []
        rows = []
        for line in self.metrics_path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut short by a crash
                continue
        return rows

    def truncate_metrics(self, step: int) -> None:
        """Drop rows logged after `step` (they will be logged again when the run resumes from it)."""
        rows = [r for r in self.read_metrics() if r.get("step", -1) <= step]
        atomic_write_text(self.metrics_path, "".join(json.dumps(r) + "\n" for r in rows))

    # -- checkpoints ----------------------------------------------------------------------------
    def checkpoints(self) -> list[tuple[int, Path]]:
        if not self.ckpt_dir.exists():
            return []
        out = []
        for p in self.ckpt_dir.iterdir():
            m = _CKPT.match(p.name)
            if m:
                out.append((int(m.group(1)), p))
        return sorted(out)

    def latest_checkpoint(self) -> tuple[int, Path] | None:
        ck = self.checkpoints()
        return ck[-1] if ck else None

    def save_checkpoint(self, step: int, state: dict[str, Any], keep: int = 2) -> Path:
        path = self.ckpt_dir / f"step_{step:08d}.pt"
        atomic_torch_save({"step": step, "state": state}, path)
        for _, old in self.checkpoints()[:-keep] if keep > 0 else []:
            old.unlink(missing_ok=True)
        return path

    @staticmethod
    def load_checkpoint(path: Path) -> dict[str, Any]:
        return torch.load(path, map_location="cpu", weights_only=True)
