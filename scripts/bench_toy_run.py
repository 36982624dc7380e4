"""Wall time of the default toy run (and optionally a toy sweep), end to end, against the previous
recipe measured in the same invocation (a benchmark script, not a test).

    python scripts/bench_toy_run.py                                  # the default run, vs the previous recipe
    python scripts/bench_toy_run.py --sweep sweeps/toy/vlm_scale.yaml   # and a toy sweep
    python scripts/bench_toy_run.py --baseline HEAD~3 --keep /tmp/bench  # any earlier commit as the baseline
    python scripts/bench_toy_run.py --repeat 3                       # each recipe 3 times, interleaved

The baseline is a git commit (default: the last commit with the previous toy recipe), checked out
into a temporary worktree and run with its own code and configs; the current recipe runs from this
checkout. Both run `python -m harness.train configs/toy/np_edit.yaml` in a fresh runs folder (and
`python -m harness.sweep SWEEP --cluster local`), one after the other, alone. This machine's speed
drifts, so compare the ratio, not the seconds; with --repeat N each is timed N times, the order
alternating (previous first, then current first, ...), and the table gives the medians. Parts:
process start-up and model building, the identity warmup, the single-step phase, the unrolled
phase, export, evaluation (from the run's metrics.jsonl and result.json); the quality of each run
is printed beside its time.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
PREVIOUS_RECIPE = "6311825"  # the toy recipe before the throughput work (400 steps, n_aux 2)


def run_cmd(cmd: list[str], tree: Path, log: Path) -> float:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    t0 = time.perf_counter()
    with open(log, "w") as f:
        subprocess.run(cmd, cwd=tree, env=env, stdout=f, stderr=subprocess.STDOUT, check=True)
    return time.perf_counter() - t0


def parts(run_dir: Path, wall: float) -> dict[str, float]:
    """Seconds of each part of one finished run (phases from the training log's times)."""
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    res = json.loads((run_dir / "result.json").read_text())
    m = cfg["method"]
    times = {r["step"]: r["time"] for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())}
    steps = cfg["train"]["steps"]
    bounds = [("warmup", min(m.get("warmup_steps", 0), steps)),
              ("single-step", min(m.get("warmup_steps", 0) + m.get("single_step_steps", 0), steps)),
              ("unrolled", steps)]

    def at(step: int) -> float:  # the log's time at (or just after) a step
        later = [s for s in times if s >= step]
        return times[min(later)] if step > 0 and later else 0.0

    out, prev = {}, 0.0
    for name, b in bounds:
        out[name] = at(b) - prev
        prev = at(b)
    timing = res.get("timing", {})
    train_s = timing.get("train_s", res["train"]["seconds"])
    out["export"] = timing.get("export_s", float("nan"))
    out["evaluate"] = timing.get("evaluate_s", float("nan"))
    known = train_s + (out["export"] if timing else 0) + (out["evaluate"] if timing else 0)
    out["start-up, build, rest"] = wall - known
    out["total"] = wall
    return out


def quality(run_dir: Path) -> str:
    res = json.loads((run_dir / "result.json").read_text())
    m = next(r["metrics"] for r in res["results"] if r["benchmark"] == "shapes_edit")
    return f"O {m['O']:.2f}  SC {m['SC']:.2f}  PQ {m['PQ']:.2f}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--baseline", default=PREVIOUS_RECIPE, help=f"git commit of the baseline (default {PREVIOUS_RECIPE})")
    p.add_argument("--config", default="configs/toy/np_edit.yaml", help="run config, relative to each checkout")
    p.add_argument("--sweep", default="", help="also time this sweep (relative to each checkout), e.g. sweeps/toy/vlm_scale.yaml")
    p.add_argument("--skip-run", action="store_true", help="time only the sweep")
    p.add_argument("--repeat", type=int, default=1, help="time each recipe this many times, interleaved (default 1)")
    p.add_argument("--keep", default="", help="keep the run folders and logs here (default: a temporary folder)")
    args = p.parse_args(argv)
    if args.repeat < 1:
        p.error(f"--repeat must be >= 1, got {args.repeat}")

    root = Path(args.keep or tempfile.mkdtemp(prefix="bench_toy_"))
    root.mkdir(parents=True, exist_ok=True)
    base_tree = root / "baseline-tree"
    if not base_tree.exists():
        subprocess.run(["git", "worktree", "add", "--detach", str(base_tree), args.baseline], cwd=REPO, check=True,
                       stdout=subprocess.DEVNULL)
    trees = {"previous": base_tree, "current": REPO}
    py = sys.executable
    timed: dict[str, dict[str, list[dict[str, float]]]] = {}  # what -> which -> one breakdown per repeat
    notes: dict[str, str] = {}
    try:
        for r in range(args.repeat):
            order = list(trees.items()) if r % 2 == 0 else list(trees.items())[::-1]
            tag = f"-{r}" if args.repeat > 1 else ""
            if not args.skip_run:
                for which, tree in order:
                    runs = root / f"runs-{which}{tag}"
                    wall = run_cmd([py, "-m", "harness.train", args.config, "--runs-dir", str(runs), "--group", "bench"],
                                   tree, root / f"run-{which}{tag}.log")
                    run_dir = next((runs / "bench").iterdir())
                    timed.setdefault("run", {}).setdefault(which, []).append(parts(run_dir, wall))
                    notes[f"run/{which}"] = f"{run_dir.name}: {quality(run_dir)}"
                    print(f"[{which}{tag}] default run: {wall:.1f} s ({notes[f'run/{which}']})", flush=True)
            if args.sweep:
                for which, tree in order:
                    runs = root / f"sweep-{which}{tag}"
                    wall = run_cmd([py, "-m", "harness.sweep", args.sweep, "--cluster", "local", "--runs-dir", str(runs)],
                                   tree, root / f"sweep-{which}{tag}.log")
                    timed.setdefault("sweep", {}).setdefault(which, []).append({"total": wall})
                    print(f"[{which}{tag}] sweep {args.sweep}: {wall:.1f} s", flush=True)
    finally:
        if not args.keep:
            subprocess.run(["git", "worktree", "remove", "--force", str(base_tree)], cwd=REPO, check=False)

    print(f"\n# previous = {args.baseline}, current = {subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], cwd=REPO, capture_output=True, text=True).stdout.strip()} (+ work tree)")
    for what, by in timed.items():
        n = len(by["previous"])
        print(f"\n{what}: seconds (previous / current, ratio previous / current)" + (f", medians of {n}" if n > 1 else ""))
        for part in by["previous"][0]:
            a = statistics.median(x.get(part, float("nan")) for x in by["previous"])
            b = statistics.median(x.get(part, float("nan")) for x in by["current"])
            ratio = a / b if b and b == b and a == a else float("nan")
            print(f"  {part:<24}{a:>9.1f}{b:>9.1f}{ratio:>8.2f}x")
        if n > 1:
            for which in ("previous", "current"):
                print(f"  {which} totals: " + ", ".join(f"{x['total']:.1f}" for x in by[which]))
    for k, v in notes.items():
        print(f"{k}: {v}")
    print(f"logs and runs: {root}" if args.keep else "")
    return 0


if __name__ == "__main__":
    sys.exit(main())
