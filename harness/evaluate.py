"""Score an editing model on benchmarks, or score a folder of edits that any model made.

    python -m harness.evaluate --run RUN_DIR --benchmark shapes_edit [key=value ...]
    python -m harness.evaluate --run RUN_DIR --benchmark gedit path=/data/GEdit-Bench judge.model=gpt-4.1
    python -m harness.evaluate --run RUN_DIR --benchmark shapes_edit eval.sampler=euler eval.steps=28 eval.guidance=1
    python -m harness.evaluate --config configs/editors/flux.1-kontext-dev.yaml --benchmark gedit path=/data/GEdit-Bench
    python -m harness.evaluate --outputs DIR --benchmark imgedit path=/data/ImgEdit/Benchmark/Basic \
        --judge configs/judges/gpt-4o.yaml [--out OUT] [--dry-run]

--run: outputs go to RUN_DIR/eval/<benchmark>-<setting>/ in the benchmark's public layout; generation
skips outputs that exist, so an interrupted evaluation resumes. Results are merged into RUN_DIR/result.json.
A benchmark the run was scored on starts from the run's config of it (eval.benchmarks); key=value
options change it.

The evaluation setting is the editor's sampler (eval.sampler: few_step | euler | method, eval.steps,
eval.guidance) and the eval seed (eval.seed), with the benchmark's own generation config. Options
`eval.*` re-score a finished run under another setting without retraining: the keys not given keep
the setting the run exported (RUN_DIR/model/editor.json; 'method' and 0 mean that too; eval.seed
defaults to the run's). Each setting has its own output folder, so the outputs and results of the
others are kept: result.json holds one result per benchmark, subset and setting, each recording its
setting in `meta` (sampling, eval_seed, benchmark_config), and reports.collect turns that into the
columns eval.sampler, eval.steps, eval.guidance, eval.seed, eval.benchmark_config of results.csv.

--config CONFIG: an editor that trains nothing (configs/editors/*.yaml: a diffusers pipeline, or a backbone
as it is) is scored as a run: its folder runs/editors/<id> is made as harness.train makes it (--runs-dir,
--group; --set KEY=VALUE changes the config), then it goes as --run RUN_DIR, and a later --run on that
folder re-scores it (eval.steps=4 ...; eval.sampler is the pipeline's own and cannot change).

--outputs DIR: DIR holds edits in the benchmark's public layout (imgedit, imgedit_uge: DIR/{key}.png;
gedit: DIR/fullset/{task_type}/{language}/{key}.png; dreambooth: DIR/{subject}/{NN}_{k}.png). Nothing is
written into DIR: results (result.json), the judge's cache and the per-sample rows go to --out
(default: DIR_eval next to DIR). Missing and extra files are counted and named.

The judge: each benchmark has its own (GEdit: gpt-4.1, JPEG; ImgEdit: gpt-4o, PNG); `--judge FILE`
(e.g. configs/judges/*.yaml) and `judge.KEY=VALUE` overrides are merged onto it, key by key, unless they
name another backend (judge.name=...), which then starts from its own defaults. --dry-run prints the
resolved benchmark and judge. Before a run's outputs are generated, one cheap request checks the
judge's endpoint, key and model; scoring does the same before its first request that the cache cannot
answer, so an evaluation whose replies are all cached makes no request at all. A judge that cannot
work (no key, key refused, unknown model, unreachable) is a one-line error, exit status 2.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.base import BenchmarkResult
from harness import config as C
from harness.registry import BENCHMARKS, load_plugins
from harness.runconfig import EvalConfig
from harness.runstore import RunDir, atomic_write_json


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


def _apply_setting(cfg: Any, setting: dict[str, Any]) -> dict[str, Any]:
    """Set the eval seed and batch size of `setting` (eval.* options) on the run's config (in memory only:
    config.yaml and the run id stay as trained); return the sampler changes for the editor."""
    raw, keys = C.resolve_dict({"eval": {}}, {f"eval.{k}": v for k, v in setting.items()}, "command line")
    new = C.from_dict(_Setting, raw, "command line", keys).eval
    if new.steps < 0 or new.guidance < 0 or new.batch_size < 1:
        raise C.ConfigError("command line: eval.steps and eval.guidance must be >= 0 (0 = the run's own), "
                            "eval.batch_size >= 1")
    cfg.eval.seed = new.seed if "seed" in setting else cfg.eval.seed
    cfg.eval.batch_size = new.batch_size if "batch_size" in setting else cfg.eval.batch_size
    return {k: v for k, v in (("sampler", new.sampler if new.sampler != "method" else None),
                              ("steps", new.steps or None), ("guidance", float(new.guidance) or None))
            if v is not None and k in setting}


def _exported_sampling(rd: RunDir, changes: dict[str, Any]) -> dict[str, Any] | None:
    """The sampler the run exported (RUN_DIR/model/editor.json) with `changes`, read without loading the
    editor; None for an editor without a sampler setting."""
    path = rd.model_dir / "editor.json"
    meta = json.loads(path.read_text()) if path.exists() else {}
    sampling = meta.get("sampling")
    if meta.get("fixed_sampler") and "sampler" in changes:
        raise C.ConfigError(f"{rd.model_dir}: this editor samples with its own pipeline ({sampling['sampler']}), so "
                            "eval.sampler cannot change it (eval.steps, eval.guidance and eval.seed can)")
    if sampling is None:
        if changes:
            raise C.ConfigError(f"{rd.model_dir}: this editor has no sampler setting, so eval.sampler, eval.steps "
                                "and eval.guidance cannot change it (eval.seed can)")
        return None
    return {**sampling, **changes}


def rescore_run(rd: RunDir, setting: dict[str, Any], device: str = "auto") -> list[BenchmarkResult]:
    """Score a done run on every benchmark of its config under `setting` (the eval.* options without
    the prefix, e.g. {'sampler': 'euler', 'steps': 28, 'guidance': 1.0}), as `--run RUN eval.*=...` does;
    a benchmark already scored under that setting (its eval folder is in result.json) is skipped, so the
    editor is loaded only when there is something to score."""
    from harness.train import load_run

    cfg = load_run(rd)
    changes = _apply_setting(cfg, setting)
    sampling = _exported_sampling(rd, changes)
    have = {(r.get("meta") or {}).get("eval_dir") for r in rd.read_result().get("results", [])}
    todo = [b for b in cfg.eval.benchmarks
            if benchmark_dirname(b, BENCHMARKS.get(b.name).build(b), cfg.eval.seed, sampling) not in have]
    if not todo:
        return []
    preflight_judges([b for b in todo if getattr(b, "judge", None) is not None])
    return score_run(rd, cfg, changes, todo, device=device)


def score_run(rd: RunDir, cfg: Any, changes: dict[str, Any], benchmarks: list[Any], *, device: str = "auto",
              progress: bool = False) -> list[BenchmarkResult]:
    """Load the run's exported editor (harness.edit.EditError if there is none), apply the sampler
    `changes`, score `benchmarks` and merge the results into the run's result.json."""
    from harness.edit import load_editor

    editor = load_editor(rd.path, device=device)
    if changes:
        editor.sampling = dataclasses.replace(editor.sampling, **changes)
    results = evaluate_editor(editor, cfg, rd, progress=progress, benchmarks=benchmarks)
    merge_results(rd, results)
    return results


def _describe_setting(meta: dict[str, Any]) -> str:
    """'euler, 28 steps, guidance 4.5, eval seed 0' from a result's meta."""
    s = meta.get("sampling") or {}
    parts = [f"{s['sampler']}, {s['steps']} steps, guidance {float(s['guidance']):g}"] if s else []
    if "eval_seed" in meta:
        parts.append(f"eval seed {meta['eval_seed']}")
    return ", ".join(parts)


# ---------------------------------------------------------------------------------------------
# The benchmark and its judge from the command line


def default_judge(name: str) -> dict[str, Any] | None:
    """The judge section benchmark `name` has by default (None: none, or no judge at all)."""
    spec = BENCHMARKS.get(name)
    if "judge" in spec.defaults:
        j = spec.defaults["judge"]
        return {"name": j} if isinstance(j, str) else j
    if not any(f.name == "judge" for f in dataclasses.fields(spec.config)):
        return None
    judge = spec.config().judge
    return None if judge is None else C.to_dict(judge)


def compose_judge(base: dict[str, Any] | None, *layers: Any) -> dict[str, Any] | None:
    """`layers` (a judge file's mapping, then the command line's judge.* keys) merged onto the
    benchmark's judge key by key; a layer naming another backend starts from that backend's defaults,
    `None` (judge=null) removes the judge."""
    cur = dict(base) if base is not None else None
    for layer in layers:
        if layer is None:
            cur = None
            continue
        layer = {"name": layer} if isinstance(layer, str) else dict(layer)
        if cur is None or ("name" in layer and layer["name"] != cur.get("name")):
            cur = layer
        else:
            cur = {**cur, **layer}
    return cur


def read_judge_file(path: str) -> dict[str, Any]:
    data = C.read_yaml(path)
    if "name" not in data:
        raise C.ConfigError(f"{path}: a judge config needs 'name' (one of: openai_api, local_vlm)")
    return data


def resolve_benchmark(name: str, options: list[str], judge_file: str | None = None,
                      start: dict[str, Any] | None = None) -> Any:
    """The benchmark config of `name` with the command line's key=value options, its judge composed
    from the benchmark's own judge (or `start`'s: a run's config of the benchmark), `judge_file` and the
    judge.* options (see compose_judge)."""
    start = dict(start) if start else {"name": name}
    own_judge = start.pop("judge", None)
    raw, keys = C.resolve_dict(start, options)
    base = own_judge if own_judge is not None else default_judge(name)
    source = "command line" if judge_file is None else f"--judge {judge_file}"
    if base is None and not any(f.name == "judge" for f in dataclasses.fields(BENCHMARKS.get(name).config)):
        if judge_file or "judge" in raw:
            raise C.ConfigError(f"{source}: benchmark {name!r} has no judge (it is scored without one)")
        return C.build_section(BENCHMARKS, raw, source, "benchmark", keys)
    layers = ([read_judge_file(judge_file)] if judge_file else []) + ([raw["judge"]] if "judge" in raw else [])
    if layers:
        raw["judge"] = compose_judge(base, *layers)
        if raw["judge"] is not None and "name" not in raw["judge"]:
            raise C.ConfigError(f"{source}: key 'benchmark.judge.name' must be set (benchmark {name!r} has no judge "
                                "by default); one of: openai_api, local_vlm")
    return C.build_section(BENCHMARKS, raw, source, "benchmark", keys)


def describe(bcfg: Any, where: dict[str, str]) -> str:
    """--dry-run: the resolved benchmark and judge (the key's variable NAME only), and where things go."""
    judge = getattr(bcfg, "judge", None)
    head = [f"# benchmark {bcfg.name}" + (f", judge {judge.name} {judge.model}" if judge is not None else ", no judge")]
    head += [f"# {k}: {v}" for k, v in where.items()]
    import yaml

    return "\n".join(head) + "\n" + yaml.safe_dump(C.to_dict(bcfg), sort_keys=False, default_flow_style=False)


# ---------------------------------------------------------------------------------------------
# Preflight


def preflight_judges(bcfgs: list[Any]) -> int:
    """One cheap request per distinct judge of `bcfgs` (endpoint, key, model); JudgeFatalError with one
    line naming the config key to fix when a judge cannot work. Returns the requests made."""
    from benchmarks.judges.base import preflight

    seen, n = set(), 0
    for b in bcfgs:
        judge = getattr(b, "judge", None)
        if judge is None:
            continue
        key = json.dumps(C.to_dict(judge), sort_keys=True, default=str)
        if key not in seen:
            seen.add(key)
            n += preflight(judge)
            print(f"judge preflight: {judge.name} {judge.model} ok", file=sys.stderr)
    return n


def generation_pending(bench: Any, out: Path, model_name: str = "model") -> bool:
    """Whether generating into `out` has outputs left to write (unknown layouts: assume so)."""
    if not (hasattr(bench, "outputs_folder") and hasattr(bench, "expected_outputs")):
        return True
    return any(not p.exists() for p in bench.expected_outputs(bench.outputs_folder(out, model_name)).values())


# ---------------------------------------------------------------------------------------------
# Scoring a folder of outputs


def default_out(outputs: Path) -> Path:
    return outputs.parent / f"{outputs.name}_eval"


def score_outputs(bcfg: Any, outputs: Path, out: Path, *, progress: bool = False) -> list[BenchmarkResult]:
    """Score the edits in `outputs` (the benchmark's public layout, any model's); judge cache, per-sample
    rows and result.json in `out`. Nothing is written into `outputs`."""
    previous = out / "result.json"
    if previous.is_file() and json.loads(previous.read_text()).get("outputs") != str(outputs.resolve()):
        raise C.ConfigError(f"--out {out}: holds the results of another outputs folder "
                            f"({json.loads(previous.read_text()).get('outputs')}); give another --out")
    bench = BENCHMARKS.get(bcfg.name).build(bcfg)
    if not hasattr(bench, "score_folder"):
        raise C.ConfigError(f"--outputs: benchmark {bcfg.name!r} cannot score a folder of outputs; use --run")
    expected = bench.expected_outputs(outputs)
    if not any(p.exists() for p in expected.values()):
        example = next(iter(expected.values()), outputs / "?")
        raise FileNotFoundError(f"{outputs}: none of the {len(expected)} outputs of benchmark {bcfg.name!r} is there "
                                f"(expected e.g. {example})")
    results = bench.score_folder(outputs, cache_dir=out / ".judge_cache", report_dir=out, model_name=outputs.name,
                                 progress=progress)
    for r in results:
        r.meta.setdefault("date", time.strftime("%Y-%m-%d"))
    merge_outputs_results(out, outputs, results)
    return results


def merge_outputs_results(out: Path, outputs: Path, new: list[BenchmarkResult]) -> dict[str, Any]:
    """out/result.json: replace results of the same (benchmark, subset), keep the others."""
    path = out / "result.json"
    res = json.loads(path.read_text()) if path.is_file() else {"outputs": str(outputs.resolve()), "results": []}
    keys = {(r.benchmark, r.subset) for r in new}
    res["results"] = [r for r in res["results"] if (r["benchmark"], r["subset"]) not in keys] + [r.to_dict() for r in new]
    res["evaluated"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    atomic_write_json(path, res)
    return res


def print_results(results: list[BenchmarkResult]) -> None:
    for r in results:
        vals = "  ".join(f"{k}={v:.3f}" for k, v in r.metrics.items())
        print(f"{r.benchmark}/{r.subset}: {vals}")
    if not results:
        return
    m = results[0].meta
    lines = []
    if m.get("missing"):
        lines.append(f"missing {m['missing']} output(s): {', '.join(m.get('missing_outputs', []))}")
    if m.get("extra"):
        lines.append(f"extra {m['extra']} file(s), not scored: {', '.join(m.get('extra_outputs', []))}")
    if m.get("failed"):
        lines.append(f"failed {m['failed']} sample(s) (no usable judge reply; see the per-sample rows)")
    if "judge_calls" in m:
        lines.append(f"judge {m['judge_model']}: {m['judge_calls']} request(s) ({m.get('judge_preflight_calls', 0)} "
                     f"preflight), {m['judge_cache_hits']} cached answer(s), {m['judge_failed_requests']} failed")
    for line in lines:
        print(f"  {line}", file=sys.stderr)


def before_generation(args: argparse.Namespace, cfg: Any, rd: RunDir, bcfg: Any, sampling: Any = None) -> bool:
    """--run: print the resolved benchmark for --dry-run (True: stop there); otherwise check the judge
    with one cheap request when outputs are still to be generated (before any generation)."""
    if not args.dry_run and getattr(bcfg, "judge", None) is None:
        return False
    bench = BENCHMARKS.get(bcfg.name).build(bcfg)
    out = rd.eval_dir / benchmark_dirname(bcfg, bench, cfg.eval.seed, sampling)
    if args.dry_run:
        print(describe(bcfg, {"run": str(rd.path), "outputs": str(out)}), end="")
        return True
    if generation_pending(bench, out):
        preflight_judges([bcfg])
    return False


def editor_run(config: str, overrides: list[str], runs_dir: Path, group: str, device: str = "auto", *,
               dry_run: bool = False) -> RunDir:
    """--config: the run folder of an editor that trains nothing (runs_dir/group/<id>, config.yaml and its
    exported editor.json, as harness.train would write them); nothing is written with `dry_run`."""
    from harness.registry import METHODS
    from harness.train import prepare_run_dir, resolve_device

    cfg = C.load_run_config(config, overrides)
    if getattr(cfg.method, "TRAINS", True):
        raise C.ConfigError(f"{config}: --config takes an editor that trains nothing (method diffusers or "
                            f"backbone_editor), not {cfg.method.name!r}: train it with python -m harness.train "
                            f"{config}, then score it with --run RUN_DIR")
    if dry_run:
        return RunDir(runs_dir / group / C.config_hash(cfg))
    rd = prepare_run_dir(cfg, runs_dir, group)
    if not (rd.model_dir / "editor.json").exists():
        METHODS.get(cfg.method.name).build(cfg, rd, resolve_device(device)).export(str(rd.model_dir))
    print(f"run {rd.id}: {rd.path}", file=sys.stderr)
    return rd


def judge_errors_exit_2(main: Any) -> Any:
    """A judge that cannot work (no key, key refused, unknown model, unreachable) ends the command with
    its one-line message and exit status 2, wherever it shows (preflight or the first request)."""
    import functools

    @functools.wraps(main)
    def wrapped(argv: list[str] | None = None) -> int:
        from benchmarks.judges.base import JudgeFatalError

        try:
            return main(argv)
        except JudgeFatalError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    return wrapped


def _main_outputs(args: argparse.Namespace) -> int:
    from benchmarks.common import BenchmarkDataError

    outputs = Path(args.outputs)
    out = Path(args.out) if args.out else default_out(outputs)
    try:
        bcfg = resolve_benchmark(args.benchmark, args.options, args.judge)
    except (C.ConfigError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.dry_run:
        print(describe(bcfg, {"outputs": str(outputs), "results": str(out / "result.json")}), end="")
        return 0
    if not outputs.is_dir():
        print(f"error: --outputs {outputs}: not a folder", file=sys.stderr)
        return 2
    try:
        results = score_outputs(bcfg, outputs, out, progress=sys.stderr.isatty())
    except (FileNotFoundError, BenchmarkDataError, C.ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print_results(results)
    print(f"results: {out / 'result.json'}", file=sys.stderr)
    return 0


@judge_errors_exit_2
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m harness.evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--run", help="a run folder with a trained model (RUN_DIR/model)")
    mode.add_argument("--outputs", metavar="DIR", help="score the edits in DIR (the benchmark's public layout, any model's)")
    mode.add_argument("--config", metavar="CONFIG", help="an editor that trains nothing (configs/editors/*.yaml): "
                      "its run folder RUNS_DIR/GROUP/<id> is made as harness.train makes it, then scored as with --run")
    p.add_argument("--benchmark", required=True, help=f"benchmark name ({', '.join(BENCHMARKS.names())}); with "
                   "--run, the run's own config of it (eval.benchmarks) is the base of the options")
    p.add_argument("options", nargs="*", help="benchmark config overrides, key=value (judge.KEY=VALUE for the judge); "
                   "with --run also the evaluation setting: eval.sampler=few_step|euler|method, eval.steps=N, "
                   "eval.guidance=X, eval.seed=N, eval.batch_size=N")
    p.add_argument("--judge", metavar="FILE", help="a judge config (e.g. configs/judges/gpt-4.1.yaml) merged onto the benchmark's judge")
    p.add_argument("--out", metavar="OUT", help="with --outputs: where results, judge cache and per-sample rows go (default: DIR_eval)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="with --config: a run config override (repeatable), e.g. --set method.steps=4")
    p.add_argument("--runs-dir", default="runs", help="with --config: root of run folders (default: runs)")
    p.add_argument("--group", default="editors", help="with --config: subfolder of --runs-dir (default: editors)")
    p.add_argument("--dry-run", action="store_true", help="print the resolved benchmark and judge, do nothing")
    p.add_argument("--device", default="auto")
    args = p.parse_intermixed_args(argv)  # key=value options before or after the flags
    if args.outputs is not None:
        return _main_outputs(args)
    if args.out:
        p.error("--out goes with --outputs (a run's results go into the run folder)")

    if args.set and args.config is None:
        p.error("--set goes with --config (a run's config is fixed once it exists)")

    from harness.edit import EditError
    from harness.train import load_run

    if args.config is not None:
        try:
            args.run = str(editor_run(args.config, args.set, Path(args.runs_dir), args.group, args.device,
                                      dry_run=args.dry_run).path)
        except (C.ConfigError, KeyError, ValueError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    rd = RunDir(args.run)
    if not rd.config_path.exists() and not (args.config and args.dry_run):
        print(f"error: {rd.config_path}: not a run folder (no config.yaml)", file=sys.stderr)
        return 2
    try:
        cfg = load_run(rd) if rd.config_path.exists() else C.load_run_config(args.config, args.set)
        load_plugins(cfg.plugins)
        setting, options = _eval_options(args.options)
        # the run's own config of this benchmark (as trained and scored), else the benchmark's defaults
        own = [C.to_dict(b) for b in cfg.eval.benchmarks if b.name == args.benchmark]
        bcfg = resolve_benchmark(args.benchmark, options, args.judge, start=own[0] if own else None)
        changes = _apply_setting(cfg, setting)
        sampling = _exported_sampling(rd, changes)
        from harness.preflight import check_benchmark

        check_benchmark(bcfg, "benchmark")  # a missing benchmark path fails before the model loads
        if sampling is None and args.config is not None:  # --dry-run: the setting the editor would export
            from methods.common import eval_sampling

            sampling = {**dataclasses.asdict(eval_sampling(cfg, cfg.method.default_sampling())), **changes}
    except (C.ConfigError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if before_generation(args, cfg, rd, bcfg, sampling):
        return 0  # --dry-run
    try:
        results = score_run(rd, cfg, changes, [bcfg], device=args.device, progress=sys.stderr.isatty())
    except EditError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for r in results:
        vals = "  ".join(f"{k}={v:.3f}" for k, v in r.metrics.items())
        print(f"{r.benchmark}/{r.subset} [{_describe_setting(r.meta)}] in {rd.eval_dir / r.meta['eval_dir']}: {vals}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
