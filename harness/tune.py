"""Hyperparameter search with optuna over the same runs, launchers and reports as sweeps.

    python -m harness.tune sweeps/toy/tune_loss_ablation.yaml [--cluster local] [--trials N]
    python -m harness.tune sweeps/toy/tune_loss_ablation.yaml --summary --emit   # best values as sweep runs

Tune file:

    name: my_search
    base: ../../configs/toy/np_edit.yaml
    overrides: {train.steps: 200}
    params:                       # the search space
      method.lambda_vlm: {type: float, low: 0.001, high: 1.0, log: true}
      method.lambda_dmd: {type: float, low: 0.1, high: 2.0}
      method.n_aux: {type: int, low: 1, high: 4}
      method.vlm_loss: {type: categorical, choices: [bce, ce]}
    objective: {benchmark: shapes_edit, subset: val, metric: O, direction: maximize}
    trials: 16                    # per variant: every variant gets the same budget
    variants:                     # optional: tune several variants, each over its own knobs
      - {name: ours, set: {method.name: np_edit}}
      - {name: only_dmd, set: {method.name: dmd_only}, params: [method.lambda_dmd, train.lr]}
    batch: 2                      # trials launched together (one job array per batch)
    seed: 0
    launcher: {...}               # as in sweeps
    report: {...}                 # optional, as in sweeps

Every trial is an ordinary run folder named by the hash of its config, and the studies (one per
variant) live in <runs-dir>/<name>/optuna.db: running the same command again continues the search,
and a trial whose run is already done is never trained again.

Fair comparisons: every variant gets `trials` trials over the knobs it has (a variant's `params`
names a subset of the file's search space; default: all of it), and trials are scored on validation
splits only: a benchmark of a trial's config that has a `split` setting must be set to `val`
(e.g. `overrides: {eval.benchmarks: [{name: shapes_edit, split: val}]}`), so a search never sees the
test split the table is scored on. `--emit` prints each variant's best values as the `runs:` of a
sweep, with a `tuning:` record of the budget, for the table's sweep file.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from harness import config as C
from harness import sweep as S
from harness.launch import LauncherConfig


@dataclass
class Param:
    type: Literal["float", "int", "categorical"] = "float"
    low: float = 0.0
    high: float = 1.0
    log: bool = False
    step: float | None = None
    choices: list[Any] = field(default_factory=list)

    def validate(self) -> None:
        if self.type == "categorical" and not self.choices:
            raise ValueError("a categorical parameter needs 'choices'")
        if self.type != "categorical" and not self.low < self.high:
            raise ValueError(f"need low < high, got {self.low}, {self.high}")
        if self.log and self.low <= 0:
            raise ValueError("log-scaled parameters need low > 0")


@dataclass
class Objective:
    benchmark: str = "shapes_edit"
    subset: str = "all"
    metric: str = "O"
    direction: Literal["maximize", "minimize"] = "maximize"


@dataclass
class Variant:
    name: str = ""
    set: dict[str, Any] = field(default_factory=dict)  # overrides that make the variant (e.g. method.name)
    params: list[str] = field(default_factory=list)  # the knobs it is tuned over; empty = every param

    def validate(self) -> None:
        if not self.name:
            raise ValueError("every variant needs a 'name'")


@dataclass
class TuneConfig:
    name: str = ""
    base: Any = None
    overrides: dict[str, Any] = field(default_factory=dict)
    params: dict[str, Param] = field(default_factory=dict)
    objective: Objective = field(default_factory=Objective)
    trials: int = 16
    batch: int = 2
    seed: int = 0
    launcher: LauncherConfig = field(default_factory=LauncherConfig)
    report: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    variants: list[Variant] = field(default_factory=list)

    def validate(self) -> None:
        if not self.name:
            raise ValueError("'name' is required (the trials go to <runs-dir>/<name>/)")
        if not self.params:
            raise ValueError("'params' must name at least one parameter to search")
        if self.trials < 1 or self.batch < 1:
            raise ValueError("'trials' and 'batch' must be >= 1")
        names = [v.name for v in self.variants]
        if len(set(names)) != len(names):
            raise ValueError(f"variants: names must be unique, got {names}")
        for v in self.variants:
            unknown = [k for k in v.params if k not in self.params]
            if unknown:
                raise ValueError(f"variant {v.name!r}: params {unknown} are not in 'params' ({', '.join(self.params)})")
            fixed = [k for k in v.set if k in self.params and (not v.params or k in v.params)]
            if fixed:
                raise ValueError(f"variant {v.name!r}: {fixed} are both set and searched; list its searched "
                                 f"knobs in the variant's 'params'")

    def all_variants(self) -> list[Variant]:
        return self.variants or [Variant(name="", params=list(self.params))]

    def space(self, v: Variant) -> dict[str, "Param"]:
        return {k: self.params[k] for k in (v.params or self.params)}


def suggest(trial: Any, name: str, p: Param) -> Any:
    if p.type == "categorical":
        return trial.suggest_categorical(name, p.choices)
    if p.type == "int":
        return trial.suggest_int(name, int(p.low), int(p.high), step=int(p.step or 1), log=p.log)
    return trial.suggest_float(name, p.low, p.high, step=p.step, log=p.log)


def objective_value(pr: S.PlannedRun, obj: Objective) -> float | None:
    if not pr.dir.is_done():
        return None
    for r in pr.dir.read_result().get("results", []):
        if r["benchmark"] == obj.benchmark and r.get("subset", "all") == obj.subset and obj.metric in r["metrics"]:
            return float(r["metrics"][obj.metric])
    raise C.ConfigError(f"objective: run {pr.run_id} has no {obj.benchmark}/{obj.subset} metric {obj.metric!r}")


def check_validation_only(cfg: Any, where: str) -> None:
    """Tuning scores validation splits only: a benchmark with a `split` setting must be at 'val'."""
    for b in cfg.eval.benchmarks:
        split = getattr(b, "split", None)
        if split is not None and split != "val":
            raise C.ConfigError(f"{where}: eval.benchmarks: {b.name} is set to split {split!r}; tuning scores the "
                                f"validation split only, so that the test split stays unseen: set split: val "
                                f"(e.g. overrides: {{eval.benchmarks: [{{name: {b.name}, split: val}}]}})")


class Tuner:
    def __init__(self, path: Path, runs_dir: Path, cluster: str | None = None, out=sys.stdout):
        raw = C.read_yaml(path)
        self.cfg: TuneConfig = C.from_dict(TuneConfig, raw, str(path))
        sweep_cfg = S.SweepConfig(name=self.cfg.name, base=self.cfg.base, overrides=self.cfg.overrides,
                                  launcher=self.cfg.launcher, report=self.cfg.report)
        self.sweep = S.Sweep(path, sweep_cfg, runs_dir)
        self.cluster, self.out = cluster, out

    def plan(self, params: dict[str, Any], variant: Variant | None = None) -> S.PlannedRun:
        variant = variant or self.cfg.all_variants()[0]
        base, source = S._base_dict(self.sweep)
        overrides = {**self.cfg.overrides, **variant.set, **params}
        label = f"{self.sweep.path}: {f'variant {variant.name}, ' if variant.name else ''}trial {S._fmt(params)}"
        cfg = C.load_run_config(None, overrides, data=base, label=label, source=source)
        check_validation_only(cfg, label)
        rid = C.config_hash(cfg)
        return S.PlannedRun({**variant.set, **params}, cfg, rid, S.RunDir(self.sweep.root / rid))

    def check(self) -> None:
        """Every variant's config resolves (at the low end of its search space) before any trial runs."""
        for v in self.cfg.all_variants():
            self.plan({k: (p.choices[0] if p.type == "categorical" else p.low) for k, p in self.cfg.space(v).items()}, v)

    def study(self, variant: Variant | None = None) -> Any:
        import optuna

        name = self.cfg.name + (f"/{variant.name}" if variant is not None and variant.name else "")
        self.sweep.root.mkdir(parents=True, exist_ok=True)
        study = optuna.create_study(
            study_name=name, storage=f"sqlite:///{(self.sweep.root / 'optuna.db').resolve()}",
            load_if_exists=True, direction=self.cfg.objective.direction)
        # seeded by the trials so far: a resumed search does not draw its first random trials again
        study.sampler = optuna.samplers.TPESampler(seed=self.cfg.seed + len(study.get_trials(deepcopy=False)))
        return study

    def run(self, trials: int | None = None) -> dict[str, Any]:
        """Every variant's study, `trials` trials each (one after another); {variant name: study}."""
        studies = {}
        for v in self.cfg.all_variants():
            if v.name:
                print(f"variant {v.name}: {S._fmt(v.set)}; searching {', '.join(self.cfg.space(v))}", file=self.out)
            studies[v.name] = self.run_variant(v, trials)
        return studies

    def run_variant(self, variant: Variant, trials: int | None = None) -> Any:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = self.study(variant)
        target = trials or self.cfg.trials
        # trials asked by an interrupted search: finish them first
        pending = [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.RUNNING]
        for t in [t for t in pending if not t.params]:  # asked, killed before its params were drawn
            study.tell(t.number, state=optuna.trial.TrialState.FAIL)
        pending = [t for t in pending if t.params]
        while True:
            finished = sum(t.state.is_finished() for t in study.get_trials(deepcopy=False))
            if finished >= target and not pending:
                break
            batch = list(pending)
            pending = []
            while len(batch) < self.cfg.batch and finished + len(batch) < target:
                batch.append(study.ask())
            planned = []
            for t in batch:
                space = self.cfg.space(variant)
                params = dict(t.params) if t.params else {k: suggest(t, k, p) for k, p in space.items()}
                planned.append((t, self.plan(params, variant)))
            unique = {pr.run_id: pr for _, pr in planned}  # two trials drawing the same values share one run
            S.launch(self.sweep, list(unique.values()), cluster=self.cluster, out=self.out)
            for t, pr in planned:
                value = objective_value(pr, self.cfg.objective)
                if value is None:
                    study.tell(t.number, state=optuna.trial.TrialState.FAIL)
                    print(f"  trial {t.number} ({pr.run_id}) did not finish: {S.run_state(pr.dir)}", file=self.out)
                else:
                    study.tell(t.number, value)
                    print(f"  trial {t.number} ({pr.run_id}) {S._fmt(pr.overrides)}: "
                          f"{self.cfg.objective.metric}={value:.4f}", file=self.out)
        return study


def _completed(study: Any, obj: Objective) -> list[Any]:
    import optuna

    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    return sorted(done, key=lambda t: t.value, reverse=obj.direction == "maximize")


def summary(study: Any, obj: Objective) -> str:
    done = _completed(study, obj)
    if not done:
        return "no completed trial"
    lines = [f"{len(done)} completed trials; best {obj.metric} = {done[0].value:.4f}"]
    for t in done[:10]:
        lines.append(f"  #{t.number:<4} {obj.metric}={t.value:.4f}  " + " ".join(f"{k}={v}" for k, v in t.params.items()))
    return "\n".join(lines)


def emit(tuner: Tuner, studies: dict[str, Any], path: str) -> str:
    """The best values of every variant as the `runs:` of a sweep, with the `tuning:` record of the budget."""
    import yaml

    obj, runs, best = tuner.cfg.objective, [], {}
    for v in tuner.cfg.all_variants():
        done = _completed(studies[v.name], obj)
        if not done:
            raise C.ConfigError(f"{path}: variant {v.name or '(base)'} has no completed trial yet")
        params = {k: (float(f"{x:.4g}") if isinstance(x, float) else x) for k, x in done[0].params.items()}
        runs.append({**({"name": v.name} if v.name else {}), **v.set, **params})
        best[v.name or "base"] = round(done[0].value, 4)
    record = {"file": str(path), "trials_per_variant": tuner.cfg.trials,
              "completed": {v.name or "base": len(_completed(studies[v.name], obj)) for v in tuner.cfg.all_variants()},
              "objective": f"{obj.benchmark}/{obj.subset} {obj.metric} ({obj.direction})", "best": best}
    return yaml.safe_dump({"tuning": record, "runs": runs}, sort_keys=False, default_flow_style=None, width=110)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m harness.tune", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("tune", help="tune YAML")
    p.add_argument("--cluster", choices=["auto", "slurm", "local", "debug"], default=None)
    p.add_argument("--trials", type=int, default=None, help="total trials to reach (default: the file's)")
    p.add_argument("--runs-dir", default="runs")
    p.add_argument("--summary", action="store_true", help="print the best trials so far; run nothing")
    p.add_argument("--emit", action="store_true",
                   help="print each variant's best values as sweep `runs:` with a `tuning:` record (for the table's sweep)")
    args = p.parse_args(argv)
    try:
        tuner = Tuner(Path(args.tune), Path(args.runs_dir), args.cluster)
        tuner.check()
    except (C.ConfigError, KeyError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.summary:
        studies = {v.name: tuner.study(v) for v in tuner.cfg.all_variants()}
    else:
        studies = tuner.run(args.trials)
    for name, study in studies.items():
        print((f"variant {name}: " if name else "") + summary(study, tuner.cfg.objective))
    if args.emit:
        try:
            print(emit(tuner, studies, args.tune), end="")
        except C.ConfigError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
    if tuner.cfg.report and not args.summary:
        S.build_report(tuner.sweep)
    return 0


if __name__ == "__main__":
    sys.exit(main())
