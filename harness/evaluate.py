"""Score an editing model on benchmarks.

    python -m harness.evaluate --run RUN_DIR --benchmark shapes_edit [key=value ...]
    python -m harness.evaluate --run RUN_DIR --benchmark gedit path=/data/GEdit-Bench judge.model=gpt-4.1

Outputs go to RUN_DIR/eval/<benchmark>/ in the benchmark's public layout; generation skips outputs
that exist, so an interrupted evaluation resumes. Results are merged into RUN_DIR/result.json.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import sys
import time
from typing import Any

from benchmarks.base import BenchmarkResult
from harness import config as C
from harness.registry import BENCHMARKS, load_plugins
from harness.runstore import RunDir


def benchmark_dirname(bcfg: Any, bench: Any, eval_seed: int) -> str:
    """Outputs of different generation settings must not share a folder; judge settings do not
    change the images, so a new judge re-scores the same outputs."""
    gen = bench.generation_config() if hasattr(bench, "generation_config") else C.to_dict(bcfg)
    return f"{bcfg.name}-{C.config_hash({'gen': gen, 'seed': eval_seed}, 6)}"


def evaluate_editor(editor: Any, cfg: Any, rd: RunDir, *, progress: bool = False, preemption: Any = None,
                    benchmarks: list[Any] | None = None) -> list[BenchmarkResult]:
    results: list[BenchmarkResult] = []
    guard = preemption.immediate() if preemption is not None else contextlib.nullcontext()
    with guard:  # outputs are written one by one and skipped when present: requeue at once is safe
        for bcfg in benchmarks if benchmarks is not None else cfg.eval.benchmarks:
            bench = BENCHMARKS.get(bcfg.name).build(bcfg)
            out = rd.eval_dir / benchmark_dirname(bcfg, bench, cfg.eval.seed)
            bench.generate(editor, out, model_name="model", batch_size=cfg.eval.batch_size, progress=progress,
                           seed=cfg.eval.seed)
            for r in bench.score(out, model_name="model"):
                sampling = getattr(editor, "sampling", None)
                if sampling is not None:
                    r.meta.setdefault("sampling", dataclasses.asdict(sampling))
                r.meta.setdefault("date", time.strftime("%Y-%m-%d"))
                results.append(r)
    return results


def merge_results(rd: RunDir, new: list[BenchmarkResult]) -> dict[str, Any]:
    """Replace results of the same (benchmark, subset) in result.json, keep the others."""
    res = rd.read_result() if rd.is_done() else {"run_id": rd.id, "results": []}
    keys = {(r.benchmark, r.subset) for r in new}
    kept = [r for r in res["results"] if (r["benchmark"], r["subset"]) not in keys]
    res["results"] = kept + [r.to_dict() for r in new]
    res["evaluated"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    rd.write_result(res)
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m harness.evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="a run folder with a trained model (RUN_DIR/model)")
    p.add_argument("--benchmark", required=True, help=f"benchmark name ({', '.join(BENCHMARKS.names())})")
    p.add_argument("options", nargs="*", help="benchmark config overrides, key=value")
    p.add_argument("--device", default="auto")
    args = p.parse_args(argv)

    from harness.edit import load_editor
    from harness.train import load_run

    rd = RunDir(args.run)
    if not rd.config_path.exists():
        print(f"error: {rd.config_path}: not a run folder (no config.yaml)", file=sys.stderr)
        return 2
    try:
        cfg = load_run(rd)
        load_plugins(cfg.plugins)
        raw, keys = C.resolve_dict({"name": args.benchmark}, args.options)
        bcfg = C.build_section(BENCHMARKS, raw, "command line", "benchmark", keys)
        from harness.preflight import check_benchmark

        check_benchmark(bcfg, "benchmark")  # a missing benchmark path fails before the model loads
    except (C.ConfigError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    editor = load_editor(rd.path, device=args.device)
    results = evaluate_editor(editor, cfg, rd, progress=sys.stderr.isatty(), benchmarks=[bcfg])
    merge_results(rd, results)
    for r in results:
        vals = "  ".join(f"{k}={v:.3f}" for k, v in r.metrics.items())
        print(f"{r.benchmark}/{r.subset}: {vals}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
