"""python -m harness.toyworld pretrain [--only teacher|critics] [--force] [--out DIR]
python -m harness.toyworld evaluate [--dir DIR]

pretrain: build the built-in world's teacher and critics for the current recipes (into the cache,
or into DIR: `--out harness/toyworld/pretrained` refreshes the copies shipped with the package).
evaluate: measure them (teacher parse-back rate, critic accuracy per question kind)."""
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
    e = sub.add_parser("evaluate", help="measure the current recipes' models")
    e.add_argument("--dir", type=Path, help="look for the models here (default: shipped copy, else cache)")
    e.add_argument("--captions", type=int, default=100, help="held-out captions per object count")
    e.add_argument("--pairs", type=int, default=1200, help="held-out (reference, candidate) pairs for the critics")
    e.add_argument("--sizes", default=",".join(SIZES))
    e.add_argument("--threads", type=int, default=0)
    args = ap.parse_args(argv)
    sizes = tuple(s for s in args.sizes.split(",") if s)
    bad = [s for s in sizes if s not in SIZES]
    if bad:
        ap.error(f"--sizes: unknown {bad}; sizes: {', '.join(SIZES)}")
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
                 device=str(device))
    else:
        threads(args.threads)
        report = evaluate(args.dir, n_captions=args.captions, n_pairs=args.pairs, sizes=sizes)
        json.dump(report, sys.stdout, indent=1)
        print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
