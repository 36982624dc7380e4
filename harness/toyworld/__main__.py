"""python -m harness.toyworld pretrain [--only teacher|critics] [--force] [--out DIR] [--set KEY=VALUE ...]
python -m harness.toyworld evaluate [--dir DIR] [--set KEY=VALUE ...]

pretrain: build the built-in world's teacher and critics for the current recipes (into the cache,
or into DIR: `--out harness/toyworld/pretrained` refreshes the copies shipped with the package).
evaluate: measure them (teacher parse-back rate, and how often its prediction at pure noise has the
captioned background; critic accuracy per question kind).

To try another recipe, change it with --set (repeatable; the recipes are the dataclasses in
harness/toyworld/teacher.py and critics.py): teacher.KEY=VALUE, critic.KEY=VALUE (every size),
world.KEY=VALUE (the world of both), e.g.
  python -m harness.toyworld pretrain --out /tmp/try --set teacher.pos_spacing=2 --set world.grid=2
  python -m harness.toyworld evaluate --dir /tmp/try --set teacher.pos_spacing=2 --set world.grid=2
Such models go to --out DIR only (runs keep using the current recipes); evaluate measures the
teacher and the critics (--only one of them); a model whose recipe --set leaves unchanged (the teacher,
when only critic.* changed) is taken from the shipped copy or the cache when DIR lacks it.
teacher.sample_steps / sample_guidance / sample_shift / sample_stochastic change only how evaluate
samples the teacher, so they need no DIR:
  python -m harness.toyworld evaluate --only teacher --set teacher.sample_shift=1 --set teacher.sample_guidance=4"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    from harness.toyworld.critics import SIZES
    from harness.toyworld.pretrain import evaluate, pretrain, threads

    ap = argparse.ArgumentParser(prog="python -m harness.toyworld", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pretrain", help="pretrain the teacher and the critics")
    p.add_argument("--only", choices=["teacher", "critics"])
    p.add_argument("--force", action="store_true", help="retrain even when a model of the current recipe exists")
    p.add_argument("--out", type=Path, help="write the models here instead of the cache")
    p.add_argument("--sizes", default=",".join(SIZES), help=f"critic sizes (comma-separated; default {','.join(SIZES)})")
    p.add_argument("--jobs", type=int, default=2, help="models trained at a time, each in its own process (default 2)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per job (default 1)")
    p.add_argument("--device", default="cpu",
                   help="where the models train: cpu (default; the shipped models were made there), cuda[:N], "
                        "or auto (a GPU when there is one), as the trainer's train.device")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="change a recipe: teacher.KEY=VALUE, critic.KEY=VALUE or world.KEY=VALUE (needs --out)")
    e = sub.add_parser("evaluate", help="measure the current recipes' models")
    e.add_argument("--dir", type=Path, help="look for the models here (default: shipped copy, else cache); a model "
                   "whose recipe --set leaves unchanged may also come from there")
    e.add_argument("--only", choices=["teacher", "critics"], help="measure only the teacher or only the critics")
    e.add_argument("--captions", type=int, default=100, help="held-out captions per object count")
    e.add_argument("--pairs", type=int, default=1200, help="held-out (reference, candidate) pairs for the critics")
    e.add_argument("--sizes", default=",".join(SIZES))
    e.add_argument("--threads", type=int, default=0)
    e.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="measure the models of a changed recipe (as given to pretrain --set; needs --dir)")
    args = ap.parse_args(argv)
    sizes = tuple(s for s in args.sizes.split(",") if s)
    bad = [s for s in sizes if s not in SIZES]
    if bad:
        ap.error(f"--sizes: unknown {bad}; sizes: {', '.join(SIZES)}")
    from harness.config import ConfigError
    from harness.toyworld.assets import changes_weights

    try:
        weights = changes_weights(args.overrides)
    except ConfigError as e:
        ap.error(str(e))
    # evaluate may measure the current models another way (teacher.sample_*) without --dir
    if args.overrides and (args.out if args.command == "pretrain" else args.dir) is None \
            and (weights or args.command == "pretrain"):
        ap.error(f"--set: recipes changed with --set live in a folder of their own; give it as "
                 f"{'--out' if args.command == 'pretrain' else '--dir'} DIR (runs keep using the current recipes)")
    if args.command == "pretrain":
        import torch

        from harness.train import resolve_device

        try:
            device = resolve_device(args.device)
        except RuntimeError as e:
            ap.error(f"--device: {e}")
        if device.type == "cuda" and not torch.cuda.is_available():
            ap.error(f"--device {args.device}: torch sees no CUDA device here")
        pretrain(args.only, force=args.force, out=args.out, sizes=sizes, jobs=args.jobs, threads_per_job=args.threads,
                 device=str(device), overrides=tuple(args.overrides))
    else:
        threads(args.threads)
        try:
            report = evaluate(args.dir, n_captions=args.captions, n_pairs=args.pairs, sizes=sizes,
                              overrides=tuple(args.overrides), only=args.only)
        except ValueError as e:
            ap.error(str(e))
        json.dump(report, sys.stdout, indent=1)
        print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
