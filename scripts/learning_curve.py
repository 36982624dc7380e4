"""Score against training steps, over seeds: how many steps a recipe needs (a research script).

    python scripts/learning_curve.py configs/toy/np_edit.yaml --seeds 0 1 2 --every 50 --runs-dir ~/runs
    python scripts/learning_curve.py configs/toy/np_edit.yaml method.n_aux=1 --seeds 0 1 2 --jobs 2 --threads 1

Each seed is an ordinary run (`harness.train`'s run folder under RUNS_DIR/learning_curve/<run-id>,
resumable, skipped when done) that keeps a checkpoint every `--every` steps. Every checkpoint (and
step 0, the untrained editor) is then scored on the run's benchmarks with the run's own evaluation
setting; scores are cached in <run>/curve.jsonl, so a rerun scores only what is new. Without an LR
schedule or EMA (the toy preset has neither) a run of N steps is exactly the first N steps of a
longer one, so one curve answers "what if train.steps were N" for every N on it (the script says
when that does not hold).

Prints mean ± std over seeds per step and writes RUNS_DIR/learning_curve/<name>.csv and .png.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from harness import config as C  # noqa: E402
from harness.runstore import RunDir  # noqa: E402

METRICS = ("O", "SC", "PQ", "edit_success", "preservation")
GROUP = "learning_curve"


def run_config(config: str, overrides: list[str], seed: int, every: int):
    return C.load_run_config(config, [*overrides, f"seed={seed}", f"train.ckpt_every={every}",
                                      "train.keep_checkpoints=100000"])


def train(run_dir: str, threads: int) -> None:
    import torch

    from harness.train import run

    torch.set_num_threads(threads)
    run(Path(run_dir), progress=False)


def score_checkpoints(run_dir: str, threads: int) -> list[dict]:
    """Score step 0 and every checkpoint of a finished run; cached in <run>/curve.jsonl."""
    import torch

    from harness.evaluate import evaluate_editor
    from harness.registry import METHODS
    from harness.train import load_run, resolve_device, seed_everything

    torch.set_num_threads(threads)
    rd = RunDir(run_dir)
    cache = rd.path / "curve.jsonl"
    rows = [json.loads(x) for x in cache.read_text().splitlines()] if cache.exists() else []
    done = {r["step"] for r in rows}
    todo = [(0, None), *rd.checkpoints()]
    todo = [(s, p) for s, p in todo if s not in done]
    if not todo:
        return rows
    cfg = load_run(rd)
    seed_everything(cfg.seed, cfg.train.deterministic)
    method = METHODS.get(cfg.method.name).build(cfg, rd, resolve_device(cfg.train.device))
    for step, path in todo:
        if path is not None:
            method.load_state_dict(RunDir.load_checkpoint(path)["state"])
        with tempfile.TemporaryDirectory() as tmp:
            results = evaluate_editor(method.editor(), cfg, RunDir(tmp))
        for r in results:
            rows.append({"run_id": rd.id, "seed": cfg.seed, "step": step, "benchmark": r.benchmark,
                         **{m: r.metrics[m] for m in METRICS if m in r.metrics}})
        with open(cache, "a") as f:
            for r in rows[-len(results):]:
                f.write(json.dumps(r) + "\n")
    return rows


def _one_seed(job: tuple[str, int]) -> list[dict]:
    run_dir, threads = job
    train(run_dir, threads)
    return score_checkpoints(run_dir, threads)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config")
    p.add_argument("overrides", nargs="*", help="key=value overrides of the run config")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--every", type=int, default=50, help="steps between scored checkpoints (default 50)")
    p.add_argument("--runs-dir", default="runs", help="root of the run folders (default: runs)")
    p.add_argument("--jobs", type=int, default=1, help="seeds trained at once, each in its own process")
    p.add_argument("--threads", type=int, default=2, help="torch threads per process (default 2)")
    p.add_argument("--name", default="", help="name of the csv/png (default: the first run id)")
    args = p.parse_args(argv)
    if args.every < 1:
        p.error("--every must be >= 1")

    cfgs = [run_config(args.config, args.overrides, s, args.every) for s in args.seeds]
    if cfgs[0].train.ema_decay > 0:
        print("note: the run uses EMA: a checkpoint's score is not that of a shorter run", file=sys.stderr)
    from harness.train import prepare_run_dir

    dirs = [str(prepare_run_dir(c, Path(args.runs_dir), GROUP).path) for c in cfgs]
    for s, d in zip(args.seeds, dirs):
        print(f"seed {s}: {d}", file=sys.stderr)
    jobs = [(d, args.threads) for d in dirs]
    if args.jobs > 1:
        with mp.get_context("spawn").Pool(args.jobs) as pool:
            per_seed = pool.map(_one_seed, jobs, chunksize=1)
    else:
        per_seed = [_one_seed(j) for j in jobs]
    rows = [r for rs in per_seed for r in rs]

    import pandas as pd

    df = pd.DataFrame(rows).sort_values(["benchmark", "step", "seed"])
    out = Path(args.runs_dir) / GROUP / (args.name or Path(dirs[0]).name)
    df.to_csv(out.with_suffix(".csv"), index=False)
    for bench, d in df.groupby("benchmark"):
        print(f"# {bench}: mean ± std over seeds {args.seeds}")
        print("step  " + "  ".join(f"{m:>16}" for m in METRICS if m in d))
        for step, s in d.groupby("step"):
            cells = []
            for m in METRICS:
                if m in s:
                    v = list(s[m])
                    sd = statistics.stdev(v) if len(v) > 1 else float("nan")
                    cells.append(f"{statistics.mean(v):>9.2f} ± {sd:<4.2f}")
            print(f"{step:<6}" + "  ".join(cells))
    _plot(df, out.with_suffix(".png"))
    print(f"wrote {out.with_suffix('.csv')} and {out.with_suffix('.png')}")
    return 0


def _plot(df, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.2))
    for ax, m in zip(axes, ("O", "edit_success", "preservation")):
        sns.lineplot(data=df, x="step", y=m, hue="benchmark", errorbar="sd", marker="o", ax=ax, legend=False)
        sns.lineplot(data=df, x="step", y=m, units="seed", estimator=None, alpha=0.3, lw=0.8, ax=ax)
        ax.set_title(m)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
