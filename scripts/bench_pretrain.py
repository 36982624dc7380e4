"""Seconds per training step of the built-in world's teacher and critics (each critic size in each
phase of its curriculum), and the pretraining time their recipes' step counts imply on this machine
(a benchmark script, not a test).

    python scripts/bench_pretrain.py                       # all models, all cores, 10 timed steps each
    python scripts/bench_pretrain.py --threads 1 --only critics --sizes large
    python scripts/bench_pretrain.py --set critic.changes_weight=0 --set critic.inventory_weight=0

Each measurement runs the harness's own training code (train_teacher / train_critic, one model at a
time, in a temporary folder) for --warmup steps, then --steps more, and reads the time the training
loop recorded for the steps alone (no checkpoint saving or loading, no start-up). The critics' shared
examples come from the cache (built first when missing, which is not timed). `--set` changes the
recipes as `python -m harness.toyworld pretrain --set` does.
"""
from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from harness.toyworld import assets  # noqa: E402
from harness.toyworld import critics as C  # noqa: E402
from harness.toyworld.teacher import train_teacher  # noqa: E402

def phase_steps(recipe: C.CriticRecipe) -> dict[str, int]:
    """How many of the recipe's steps fall in each curriculum phase (C.PHASES, in order)."""
    counts = Counter(C.phase_at(recipe, step) for step in range(recipe.steps))
    return {phase: counts[phase] for phase in C.PHASES}


def in_phase(recipe: C.CriticRecipe, phase: str, steps: int) -> C.CriticRecipe:
    """The recipe with the earlier phases emptied and `phase` long enough for `steps` steps, so that
    training from step 0 runs in `phase` (with the auxiliary losses the later phases keep)."""
    k = C.PHASES.index(phase)
    sets = {key: 0 for key in C.PHASE_STEPS[:k]}
    if k < len(C.PHASE_STEPS):
        sets[C.PHASE_STEPS[k]] = steps
    return replace(recipe, steps=steps + 1, **sets)


def seconds_per_step(train, work: Path, warmup: int, steps: int) -> float:
    """train(folder, stop_after) steps the model; the loop's checkpoint records the time of its steps."""
    folder = work / "model"
    ckpt = folder.with_name("model.work") / "ckpt.pt"
    train(folder, warmup)
    before = torch.load(ckpt, weights_only=True)["elapsed_s"] if warmup else 0.0
    train(folder, steps)
    return (torch.load(ckpt, weights_only=True)["elapsed_s"] - before) / steps


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", choices=["teacher", "critics"])
    p.add_argument("--sizes", default=",".join(C.SIZES), help=f"critic sizes (default {','.join(C.SIZES)})")
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's, all cores)")
    p.add_argument("--steps", type=int, default=10, help="timed steps per measurement (default 10)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (default 3)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="change a recipe, as pretrain --set: teacher.KEY=VALUE, critic.KEY=VALUE, world.KEY=VALUE")
    args = p.parse_args(argv)
    sizes = [s for s in args.sizes.split(",") if s]
    if bad := [s for s in sizes if s not in C.SIZES]:
        p.error(f"--sizes: unknown {bad}; sizes: {', '.join(C.SIZES)}")
    if args.steps < 1 or args.warmup < 0:
        p.error("--steps must be >= 1 and --warmup >= 0")
    if args.threads:
        torch.set_num_threads(args.threads)
    teacher, critics = assets.recipes_with(args.overrides)
    print(f"# CPU ({platform.processor() or platform.machine()}), {torch.get_num_threads()} threads; torch "
          f"{torch.__version__}; {args.steps} timed steps after {args.warmup}; --set {args.overrides or 'none'}")
    print(f"{'model':<14}{'phase':<11}{'steps':>7}{'s/step':>9}{'minutes':>9}")
    total = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        if args.only in (None, "teacher"):
            s = seconds_per_step(lambda f, n: train_teacher(teacher, f, progress=False, stop_after=n),
                                 Path(tmp, "teacher"), args.warmup, args.steps)
            total += teacher.steps * s / 60
            print(f"{'teacher':<14}{'-':<11}{teacher.steps:>7}{s:>9.3f}{teacher.steps * s / 60:>9.1f}", flush=True)
        if args.only in (None, "critics") and sizes:
            t0 = time.monotonic()
            pool = assets.critic_pool(critics[sizes[0]], part="base", progress=False)
            if time.monotonic() - t0 > 5:
                print(f"# (built the critics' examples first: {(time.monotonic() - t0) / 60:.1f} min, not counted)")
            for size in sizes:
                minutes = 0.0
                for phase, n in phase_steps(critics[size]).items():
                    if n == 0:
                        continue
                    r = in_phase(critics[size], phase, args.warmup + args.steps)
                    s = seconds_per_step(lambda f, k, r=r: C.train_critic(r, f, pool, progress=False, stop_after=k),
                                         Path(tmp, f"{size}-{phase}"), args.warmup, args.steps)
                    minutes += n * s / 60
                    print(f"{'critic ' + size:<14}{phase:<11}{n:>7}{s:>9.3f}{n * s / 60:>9.1f}", flush=True)
                print(f"{'critic ' + size:<14}{'all phases':<11}{critics[size].steps:>7}{'':>9}{minutes:>9.1f}")
                total += minutes
    print(f"total training time these recipes imply, one model at a time: {total:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
