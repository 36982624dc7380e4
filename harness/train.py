"""Train one run in the foreground (or inside a sweep's job), then export and evaluate it.

    python -m harness.train CONFIG.yaml [key=value ...] [--runs-dir runs] [--dry-run] [--debug]

The run folder is runs/<group>/<run-id>, the id a hash of the resolved config: run the same
command again to resume from the latest checkpoint; a finished run is not redone. Every check
(config values, data and benchmark paths, the dataset's images) passes before the folder is made.
Ctrl-C or SIGTERM stops at the next step boundary with a checkpoint saved and the run marked
`interrupted`; the same command resumes it. One process trains a run at a time (RUN/lock).
"""
from __future__ import annotations

import argparse
import math
import os
import random
import signal
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

import torch

from harness import config as C
from harness.registry import METHODS
from harness.runstore import RunDir, RunLock, RunLocked, atomic_write_text
from harness.tracking import Trackers


class NonFiniteLoss(RuntimeError):
    pass


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM stopped the run: at a step boundary with a checkpoint saved (`step`), or
    at once outside the training loop (model loading, export, evaluation: all safe to redo)."""

    def __init__(self, signum: int, step: int | None = None):
        super().__init__(signal.Signals(signum).name)
        self.signum, self.step = signum, step


class StopSignals:
    """While active, the given signals ask the run to stop: inside the training loop (`deferred`)
    at the next step boundary, elsewhere at once. A second SIGINT stops at once anywhere; a
    SIGTERM after the first request changes nothing (a local sweep forwards one on Ctrl-C)."""

    def __init__(self, signals: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM)):
        self.signals = signals if threading.current_thread() is threading.main_thread() else ()
        self.requested: int | None = None
        self.deferred = False
        self._old: dict[int, Any] = {}

    def __enter__(self) -> "StopSignals":
        for sig in self.signals:
            self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested is None:
            self.requested = signum
            if not self.deferred:
                raise Interrupted(signum)
        elif signum == signal.SIGINT:
            raise Interrupted(signum)


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
    """Create runs/<group>/<id>/config.yaml for a resolved config (idempotent; a finished run's
    config.yaml, the one its results were made with, is left as it is)."""
    rd = RunDir(Path(runs_dir) / group / C.config_hash(cfg))
    rd.path.mkdir(parents=True, exist_ok=True)
    text = C.dump_yaml(cfg)
    if not rd.is_done() and (not rd.config_path.exists() or rd.config_path.read_text() != text):
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


def run(run_dir: Path, *, progress: bool | None = None,
        stop_signals: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM)) -> dict[str, Any]:
    """Train (resuming), export and evaluate the run in `run_dir`; returns result.json's content.
    RunLocked when another process trains it (nothing is written then); Interrupted (a
    KeyboardInterrupt) when a signal of `stop_signals` stopped it, the run marked `interrupted`."""
    from harness.launch import is_main_process, preemption

    rd = RunDir(run_dir)
    if rd.is_done():
        return rd.read_result()
    cfg = load_run(rd)
    main = is_main_process()
    lock = RunLock(rd.path) if main else None
    locked = _all_ranks_agree(_try_lock(lock))
    if locked is not True:
        raise locked if isinstance(locked, RunLocked) else RunLocked(f"{rd.path}: rank 0 could not take the run lock")
    try:
        if rd.is_done():  # finished by the process that held the lock before
            return rd.read_result()
        prev = rd.read_status()
        job = {k: prev[k] for k in ("cluster", "job_id") if k in prev}
        if main:
            rd.set_status("running", **job)
        if progress is None:
            progress = sys.stderr.isatty()
        trackers = Trackers(cfg, rd, main=main)
        try:
            with StopSignals(stop_signals) as stop:
                result = _run(rd, cfg, progress=progress, main=main, preemption=preemption, stop=stop,
                              trackers=trackers)
        except SystemExit:
            raise
        except KeyboardInterrupt as e:  # not the run's failure: a plain rerun resumes it
            if main:
                latest = rd.latest_checkpoint()
                rd.set_status("interrupted", **job, step=latest[0] if latest else 0,
                              signal=signal.Signals(e.signum).name if isinstance(e, Interrupted) else "SIGINT")
            raise
        except BaseException:
            if main:
                rd.write_error(traceback.format_exc())
                rd.set_status("failed", **job)
            raise
        finally:
            trackers.close()
        if main:
            rd.set_status("done", **job)
        return result
    finally:
        if lock is not None:
            lock.release()


def _try_lock(lock: RunLock | None) -> bool | RunLocked:
    if lock is None:
        return True
    try:
        lock.acquire()
        return True
    except RunLocked as e:
        return e


def _all_ranks_agree(value: Any) -> Any:
    """Rank 0's value on every rank (ranks other than 0 take no lock and follow rank 0)."""
    import torch.distributed as dist

    if not dist.is_initialized() or dist.get_world_size() == 1:
        return value
    box = [value if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _run(rd: RunDir, cfg: Any, *, progress: bool, main: bool, preemption: Any,
         stop: StopSignals | None = None, trackers: Trackers | None = None) -> dict[str, Any]:
    from tqdm import tqdm

    t_build = time.time()
    from harness.data.sampling import bad_images_policy

    stop = stop or StopSignals(())
    trackers = trackers or Trackers(cfg, rd, main=False)
    seed_everything(cfg.seed, cfg.train.deterministic)
    device = resolve_device(cfg.train.device)
    spec = METHODS.get(cfg.method.name)
    with bad_images_policy(cfg.data.bad_images):
        method = spec.build(cfg, rd, device)

    start = 0
    ck = rd.load_latest_checkpoint()
    latest = (ck["step"], None) if ck is not None else None
    if ck is not None:
        method.load_state_dict(ck["state"])
        start = ck["step"]
        del ck
    if main:
        rd.truncate_metrics(start)
    trackers.start(start)

    def save(step: int) -> None:
        state = method.state_dict()  # every rank: gathering sharded weights is a collective
        if main:
            rd.save_checkpoint(step, state, keep=cfg.train.keep_checkpoints)

    steps = cfg.train.steps
    bar = tqdm(total=steps, initial=start, disable=not progress or not main, desc=rd.id, dynamic_ncols=True)
    t0 = time.time()
    timing = {"build_s": round(t0 - t_build, 1)}  # of this process: a resumed run's own share
    stop.deferred = True
    for step in range(start, steps):
        metrics = method.train_step(step)
        _check_finite(metrics, step)
        done = step + 1
        if main and (done % cfg.train.log_every == 0 or done == steps):
            row = {"step": done, "time": round(time.time() - t0, 3), **metrics}
            rd.log_metrics(row)
            trackers.log(row, done)
            bar.set_postfix({k: f"{v:.4g}" for k, v in list(metrics.items())[:4]})
        if cfg.train.sample_every and done % cfg.train.sample_every == 0 and main and _world_size() == 1:
            _save_samples(method, rd, done, trackers)
        saved = done % cfg.train.ckpt_every == 0 or done == steps
        if saved:
            save(done)
        bar.update(1)
        preemption.maybe_stop(lambda d=done: save(d))
        if _any_rank(stop.requested is not None, device):
            if not saved:
                save(done)
            bar.close()
            raise Interrupted(stop.requested or signal.SIGTERM, done)
    stop.deferred = False
    if stop.requested is not None:  # arrived during the last step, whose checkpoint is saved
        raise Interrupted(stop.requested, steps)
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
        if not (rd.samples_dir / f"step_{steps:08d}.png").exists():  # sample_every wrote it (or the process before)
            _save_samples(method, rd, steps, trackers)
        editor = method.editor()
    timing["export_s"] = round(time.time() - t1, 1)
    t2 = time.time()
    results = evaluate_editor(editor, cfg, rd, progress=progress, preemption=preemption)
    timing["evaluate_s"] = round(time.time() - t2, 1)
    trackers.log_results(results, steps)
    out = {
        "run_id": rd.id,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "train": {"steps": steps, "seconds": round(time.time() - t0, 1)},
        "timing": timing,
        "results": [r.to_dict() for r in results],
    }
    rd.write_result(out)
    return out


def _any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank when it is True on one (a stop request reaches ranks at different steps)."""
    import torch.distributed as dist

    if not dist.is_initialized() or dist.get_world_size() == 1:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def _world_size() -> int:
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_initialized() else 1


def _save_samples(method: Any, rd: RunDir, step: int, trackers: Trackers | None = None) -> None:
    fn = getattr(method, "save_samples", None)
    if fn is not None:
        rd.samples_dir.mkdir(parents=True, exist_ok=True)
        path = rd.samples_dir / f"step_{step:08d}.png"
        fn(path)
        if trackers is not None and path.exists():
            trackers.log_image(path, step)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m harness.train",
        description="Train one run in the foreground, then export and evaluate it. "
        "Run the same command again to resume; a finished run is not redone. Ctrl-C stops at the next step "
        "with a checkpoint saved (the run is 'interrupted'; the same command resumes it).",
    )
    p.add_argument("config", help="run config YAML")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. train.steps=200 method.lambda_vlm=0.02")
    p.add_argument("--runs-dir", default="runs", help="root of run folders (default: runs)")
    p.add_argument("--group", default="train", help="subfolder of --runs-dir for this run (default: train)")
    p.add_argument("--dry-run", action="store_true",
                   help="check everything, print the resolved config and run folder, do nothing")
    p.add_argument("--debug", action="store_true", help="print the traceback of an error (always in RUN/error.txt)")
    args = p.parse_args(argv)
    from harness.preflight import check_run

    try:
        cfg = C.load_run_config(args.config, args.overrides)
        check_run(cfg)
    except (C.ConfigError, KeyError) as e:
        if args.debug:
            traceback.print_exc()
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
    try:
        result = run(rd.path)
    except RunLocked as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        step = e.step if isinstance(e, Interrupted) and e.step is not None else (rd.latest_checkpoint() or (0,))[0]
        print(f"interrupted: {rd.path}: checkpoint at step {step} kept; run the same command again to resume",
              file=sys.stderr)
        return 130
    except Exception as e:
        if args.debug:
            traceback.print_exc()
        first = (str(e).strip().splitlines() or [""])[0]
        print(f"error: {rd.path}: {type(e).__name__}: {first} (traceback in {rd.error_path}"
              f"{'' if args.debug else '; --debug prints it'})", file=sys.stderr)
        return 1
    for r in result.get("results", []):
        vals = "  ".join(f"{k}={v:.3f}" for k, v in r["metrics"].items())
        print(f"{r['benchmark']}/{r['subset']}: {vals}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
