"""Score an editing model on benchmarks.

    python -m harness.evaluate --run RUN_DIR --benchmark shapes_edit [key=value ...]
    python -m harness.evaluate --run RUN_DIR --benchmark gedit path=/data/GEdit-Bench judge.model=gpt-4.1
    python -m harness.evaluate --run RUN_DIR --benchmark shapes_edit eval.sampler=euler eval.steps=28 eval.guidance=1

Outputs go to RUN_DIR/eval/<benchmark>-<setting>/ in the benchmark's public layout; generation skips
outputs that exist, so an interrupted evaluation resumes. Results are merged into RUN_DIR/result.json.
With --run, a benchmark the run was scored on starts from the run's config of it (eval.benchmarks);
key=value options change it.

The evaluation setting is the editor's sampler (eval.sampler: few_step | euler | method, eval.steps,
eval.guidance) and the eval seed (eval.seed), with the benchmark's own generation config. Options
`eval.*` re-score a finished run under another setting without retraining: the keys not given keep
the setting the run exported (RUN_DIR/model/editor.json; 'method' and 0 mean that too; eval.seed
defaults to the run's). Each setting has its own output folder, so the outputs and results of the
others are kept: result.json holds one result per benchmark, subset and setting, each recording its
setting in `meta` (sampling, eval_seed, benchmark_config), and reports.collect turns that into the
columns eval.sampler, eval.steps, eval.guidance, eval.seed, eval.benchmark_config of results.csv.
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
from harness.runconfig import EvalConfig
from harness.runstore import RunDir

EVAL_OPTIONS = ("sampler", "steps", "guidance", "seed", "batch_size")  # the eval.* keys of the command line


def _generation_config(bcfg: Any, bench: Any) -> dict[str, Any]:
    return bench.generation_config() if hasattr(bench, "generation_config") else C.to_dict(bcfg)


def _sampling_dict(sampling: Any) -> dict[str, Any] | None:
    if sampling is None or isinstance(sampling, dict):
        return sampling
    return dataclasses.asdict(sampling)


def benchmark_dirname(bcfg: Any, bench: Any, eval_seed: int, sampling: Any = None) -> str:
    """Outputs of different generation settings must not share a folder: the benchmark's generation
    config, the eval seed and the editor's sampler (kind, steps, guidance) name it, readable in front,
    hashed at the end. Judge settings do not change the images, so a new judge re-scores the same
    outputs. An editor without a sampler setting (`sampling`) keeps the name of config and seed alone."""
    gen = _generation_config(bcfg, bench)
    s = _sampling_dict(sampling)
    if s is None:
        return f"{bcfg.name}-{C.config_hash({'gen': gen, 'seed': eval_seed}, 6)}"
    tag = f"{s['sampler']}{s['steps']}-cfg{float(s['guidance']):g}-seed{eval_seed}"
    return f"{bcfg.name}-{tag}-{C.config_hash({'gen': gen, 'seed': eval_seed, 'sampling': s}, 6)}"


def evaluate_editor(editor: Any, cfg: Any, rd: RunDir, *, progress: bool = False, preemption: Any = None,
                    benchmarks: list[Any] | None = None) -> list[BenchmarkResult]:
    results: list[BenchmarkResult] = []
    guard = preemption.immediate() if preemption is not None else contextlib.nullcontext()
    with guard:  # outputs are written one by one and skipped when present: requeue at once is safe
        for bcfg in benchmarks if benchmarks is not None else cfg.eval.benchmarks:
            bench = BENCHMARKS.get(bcfg.name).build(bcfg)
            sampling = _sampling_dict(getattr(editor, "sampling", None))
            out = rd.eval_dir / benchmark_dirname(bcfg, bench, cfg.eval.seed, sampling)
            bench.generate(editor, out, model_name="model", batch_size=cfg.eval.batch_size, progress=progress,
                           seed=cfg.eval.seed)
            for r in bench.score(out, model_name="model"):
                # the evaluation setting, recorded with the numbers it produced
                if sampling is not None:
                    r.meta.setdefault("sampling", sampling)
                r.meta["eval_seed"] = cfg.eval.seed
                r.meta["benchmark_config"] = C.config_hash(_generation_config(bcfg, bench), 6)
                r.meta["eval_dir"] = out.name
                r.meta.setdefault("date", time.strftime("%Y-%m-%d"))
                results.append(r)
    return results


def _same_evaluation(old: dict[str, Any], new: dict[str, Any], default_seed: int) -> bool:
    """Whether two results (dicts of result.json) score the same benchmark subset under the same setting.
    Results written before the eval seed and benchmark config were recorded count as the run's eval
    seed and as any benchmark config."""
    om, nm = old.get("meta") or {}, new.get("meta") or {}
    return (old["benchmark"] == new["benchmark"] and old.get("subset", "all") == new.get("subset", "all")
            and om.get("sampling") == nm.get("sampling")
            and om.get("eval_seed", default_seed) == nm.get("eval_seed", default_seed)
            and om.get("benchmark_config", nm.get("benchmark_config")) == nm.get("benchmark_config"))


def merge_results(rd: RunDir, new: list[BenchmarkResult]) -> dict[str, Any]:
    """Replace results of the same benchmark, subset and evaluation setting in result.json; keep the
    others (the same benchmark scored under other settings included)."""
    res = rd.read_result() if rd.is_done() else {"run_id": rd.id, "results": []}
    default_seed = 0
    if rd.config_path.exists():
        default_seed = (C.read_yaml(rd.config_path).get("eval") or {}).get("seed", 0)
    fresh = [r.to_dict() for r in new]
    kept = [r for r in res["results"] if not any(_same_evaluation(r, f, default_seed) for f in fresh)]
    res["results"] = kept + fresh
    res["evaluated"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    rd.write_result(res)
    return res


def _eval_options(options: list[str]) -> tuple[dict[str, Any], list[str]]:
    """Split the command line's key=value options into the evaluation setting (eval.*) and benchmark options."""
    setting, rest = {}, []
    for o in options:
        key, value = C.parse_override(o)
        if not key.startswith("eval."):
            rest.append(o)
            continue
        name = key[len("eval."):]
        if name not in EVAL_OPTIONS:
            raise C.ConfigError(f"command line: key {key!r}: not an evaluation option; allowed: "
                                + ", ".join(f"eval.{k}" for k in EVAL_OPTIONS))
        setting[name] = value
    return setting, rest


@dataclasses.dataclass
class _Setting:  # the eval.* options of the command line, type-checked as the run config's
    eval: EvalConfig = dataclasses.field(default_factory=EvalConfig)


def _apply_setting(editor: Any, cfg: Any, setting: dict[str, Any], rd: RunDir) -> None:
    """Set the evaluation setting of `setting` (eval.* options) on the loaded editor and the run's config
    (in memory only: config.yaml and the run id stay as trained)."""
    raw, keys = C.resolve_dict({"eval": {}}, {f"eval.{k}": v for k, v in setting.items()}, "command line")
    new = C.from_dict(_Setting, raw, "command line", keys).eval
    if new.steps < 0 or new.guidance < 0 or new.batch_size < 1:
        raise C.ConfigError("command line: eval.steps and eval.guidance must be >= 0 (0 = the run's own), "
                            "eval.batch_size >= 1")
    cfg.eval.seed = new.seed if "seed" in setting else cfg.eval.seed
    cfg.eval.batch_size = new.batch_size if "batch_size" in setting else cfg.eval.batch_size
    changes = {k: v for k, v in (("sampler", new.sampler if new.sampler != "method" else None),
                                 ("steps", new.steps or None), ("guidance", float(new.guidance) or None))
               if v is not None and k in setting}
    if not changes:
        return
    if getattr(editor, "sampling", None) is None:
        raise C.ConfigError(f"{rd.model_dir}: this editor has no sampler setting, so eval.sampler, eval.steps and "
                            "eval.guidance cannot change it (eval.seed can)")
    editor.sampling = dataclasses.replace(editor.sampling, **changes)


def _describe_setting(meta: dict[str, Any]) -> str:
    """'euler, 28 steps, guidance 4.5, eval seed 0' from a result's meta."""
    s = meta.get("sampling") or {}
    parts = [f"{s['sampler']}, {s['steps']} steps, guidance {float(s['guidance']):g}"] if s else []
    if "eval_seed" in meta:
        parts.append(f"eval seed {meta['eval_seed']}")
    return ", ".join(parts)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m harness.evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="a run folder with a trained model (RUN_DIR/model)")
    p.add_argument("--benchmark", required=True, help=f"benchmark name ({', '.join(BENCHMARKS.names())}); with "
                   "--run, the run's own config of it (eval.benchmarks) is the base of the options")
    p.add_argument("options", nargs="*", help="benchmark config overrides, key=value; eval.sampler=few_step|euler|method, "
                   "eval.steps=N, eval.guidance=X, eval.seed=N (the evaluation setting), eval.batch_size=N")
    p.add_argument("--device", default="auto")
    args = p.parse_args(argv)

    from harness.edit import EditError, load_editor
    from harness.train import load_run

    rd = RunDir(args.run)
    if not rd.config_path.exists():
        print(f"error: {rd.config_path}: not a run folder (no config.yaml)", file=sys.stderr)
        return 2
    try:
        cfg = load_run(rd)
        load_plugins(cfg.plugins)
        setting, options = _eval_options(args.options)
        # the run's own config of this benchmark (as trained and scored), else the benchmark's defaults
        own = [C.to_dict(b) for b in cfg.eval.benchmarks if b.name == args.benchmark]
        raw, keys = C.resolve_dict(own[0] if own else {"name": args.benchmark}, options)
        bcfg = C.build_section(BENCHMARKS, raw, "command line", "benchmark", keys)
        editor = load_editor(rd.path, device=args.device)
        _apply_setting(editor, cfg, setting, rd)
    except (C.ConfigError, KeyError, EditError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    results = evaluate_editor(editor, cfg, rd, progress=sys.stderr.isatty(), benchmarks=[bcfg])
    merge_results(rd, results)
    for r in results:
        vals = "  ".join(f"{k}={v:.3f}" for k, v in r.metrics.items())
        print(f"{r.benchmark}/{r.subset} [{_describe_setting(r.meta)}] in {rd.eval_dir / r.meta['eval_dir']}: {vals}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
