"""Train one run in the foreground (or inside a sweep's job), then export and evaluate it.

    python -m harness.train CONFIG.yaml [key=value ...] [--runs-dir runs] [--dry-run]

The run folder is runs/<group>/<run-id>, the id a hash of the resolved config: run the same
command again to resume from the latest checkpoint; a finished run is not redone.
"""
from __future__ import annotations

import argparse
import math
import os
import random
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import torch

from harness import config as C
from harness.registry import METHODS
from harness.runstore import RunDir


class NonFiniteLoss(RuntimeError):
    pass


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            local = int(os.environ.get("LOCAL_RANK", 0))
            return torch.device("cuda", local)
        return torch.device("cpu")
    return torch.device(name)


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False


def prepare_run_dir(cfg: Any, runs_dir: Path, group: str) -> RunDir:
    """Create runs/<group>/<id>/config.yaml for a resolved config (idempotent)."""
    rd = RunDir(Path(runs_dir) / group / C.config_hash(cfg))
    rd.path.mkdir(parents=True, exist_ok=True)
    text = C.dump_yaml(cfg)
    if not rd.config_path.exists() or rd.config_path.read_text() != text:
        from harness.runstore import atomic_write_text

        atomic_write_text(rd.config_path, text)
    return rd


def load_run(rd: RunDir) -> Any:
    return C.load_run_config(rd.config_path)


def _check_finite(metrics: dict[str, float], step: int) -> None:
    for k, v in metrics.items():
        if isinstance(v, (int, float)) and not math.isfinite(v):
            raise NonFiniteLoss(
                f"step {step}: {k} is {v}; stopping. The last good checkpoint is kept; "
                f"lower the learning rate or the weight of this term and run the same command again to resume."
            )


def run(run_dir: Path, *, progress: bool | None = None) -> dict[str, Any]:
    """Train (resuming), export and evaluate the run in `run_dir`; returns result.json's content."""
    from harness.launch import is_main_process, preemption

    rd = RunDir(run_dir)
    if rd.is_done():
        return rd.read_result()
    cfg = load_run(rd)
    prev = rd.read_status()
    job = {k: prev[k] for k in ("cluster", "job_id") if k in prev}
    main = is_main_process()
    if main:
        rd.set_status("running", **job)
    if progress is None:
        progress = sys.stderr.isatty()
    try:
        result = _run(rd, cfg, progress=progress, main=main, preemption=preemption)
    except SystemExit:
        raise
    except BaseException:
        if main:
            rd.write_error(traceback.format_exc())
            rd.set_status("failed", **job)
        raise
    if main:
        rd.set_status("done", **job)
    return result


def _run(rd: RunDir, cfg: Any, *, progress: bool, main: bool, preemption: Any) -> dict[str, Any]:
    from tqdm import tqdm

    t_build = time.time()
    seed_everything(cfg.seed, cfg.train.deterministic)
    device = resolve_device(cfg.train.device)
    spec = METHODS.get(cfg.method.name)
    method = spec.build(cfg, rd, device)

    start = 0
    latest = rd.latest_checkpoint()
    if latest is not None:
        ck = rd.load_checkpoint(latest[1])
        method.load_state_dict(ck["state"])
        start = ck["step"]
    if main:
        rd.truncate_metrics(start)

    def save(step: int) -> None:
        state = method.state_dict()  # every rank: gathering sharded weights is a collective
        if main:
            rd.save_checkpoint(step, state, keep=cfg.train.keep_checkpoints)

    steps = cfg.train.steps
    bar = tqdm(total=steps, initial=start, disable=not progress or not main, desc=rd.id, dynamic_ncols=True)
    t0 = time.time()
    timing = {"build_s": round(t0 - t_build, 1)}  # of this process: a resumed run's own share
    for step in range(start, steps):
        metrics = method.train_step(step)
        _check_finite(metrics, step)
        done = step + 1
        if main and (done % cfg.train.log_every == 0 or done == steps):
            rd.log_metrics({"step": done, "time": round(time.time() - t0, 3), **metrics})
            bar.set_postfix({k: f"{v:.4g}" for k, v in list(metrics.items())[:4]})
        if cfg.train.sample_every and done % cfg.train.sample_every == 0 and main and _world_size() == 1:
            _save_samples(method, rd, done)
        if done % cfg.train.ckpt_every == 0 or done == steps:
            save(done)
        bar.update(1)
        preemption.maybe_stop(lambda d=done: save(d))
    bar.close()
    if latest is None and steps == 0:
        save(0)

    timing["train_s"] = round(time.time() - t0, 1)
    t1 = time.time()
    method.export(str(rd.model_dir))  # every rank (a collective when sharded); rank 0 writes
    if not main:
        return {}
    from harness.evaluate import evaluate_editor

    if _world_size() > 1:  # sharded weights: rank 0 evaluates an unsharded copy of the export
        from harness.edit import load_editor

        editor = load_editor(rd.path, device=str(device))
    else:
        _save_samples(method, rd, steps)
        editor = method.editor()
    timing["export_s"] = round(time.time() - t1, 1)
    t2 = time.time()
    results = evaluate_editor(editor, cfg, rd, progress=progress, preemption=preemption)
    timing["evaluate_s"] = round(time.time() - t2, 1)
    out = {
        "run_id": rd.id,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "train": {"steps": steps, "seconds": round(time.time() - t0, 1)},
        "timing": timing,
        "results": [r.to_dict() for r in results],
    }
    rd.write_result(out)
    return out


def _world_size() -> int:
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_initialized() else 1


def _save_samples(method: Any, rd: RunDir, step: int) -> None:
    fn = getattr(method, "save_samples", None)
    if fn is not None:
        rd.samples_dir.mkdir(parents=True, exist_ok=True)
        fn(rd.samples_dir / f"step_{step:08d}.png")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m harness.train",
        description="Train one run in the foreground, then export and evaluate it. "
        "Run the same command again to resume; a finished run is not redone.",
    )
    p.add_argument("config", help="run config YAML")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. train.steps=200 method.lambda_vlm=0.02")
    p.add_argument("--runs-dir", default="runs", help="root of run folders (default: runs)")
    p.add_argument("--group", default="train", help="subfolder of --runs-dir for this run (default: train)")
    p.add_argument("--dry-run", action="store_true", help="print the resolved config and run folder, do nothing")
    args = p.parse_args(argv)
    try:
        cfg = C.load_run_config(args.config, args.overrides)
    except (C.ConfigError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    run_id = C.config_hash(cfg)
    where = Path(args.runs_dir) / args.group / run_id
    if args.dry_run:
        print(f"# run {run_id} -> {where}")
        print(C.dump_yaml(cfg), end="")
        return 0
    if not RunDir(where).is_done():  # the benchmarks' judges must work before any training time is spent
        from benchmarks.judges.base import JudgeFatalError
        from harness.evaluate import preflight_judges

        try:
            preflight_judges(cfg.eval.benchmarks)
        except JudgeFatalError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    rd = prepare_run_dir(cfg, Path(args.runs_dir), args.group)
    print(f"run {run_id}: {rd.path}", file=sys.stderr)
    result = run(rd.path)
    for r in result.get("results", []):
        vals = "  ".join(f"{k}={v:.3f}" for k, v in r["metrics"].items())
        print(f"{r['benchmark']}/{r['subset']}: {vals}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
