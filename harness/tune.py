"""Hyperparameter search with optuna over the same runs, launchers and reports as sweeps.

    python -m harness.tune sweeps/toy/tune_lambdas.yaml [--cluster local] [--trials N]

Tune file:

    name: toy_tune_lambdas
    base: ../../configs/toy/np_edit.yaml
    overrides: {train.steps: 200}
    params:                       # the search space
      method.lambda_vlm: {type: float, low: 0.001, high: 1.0, log: true}
      method.lambda_dmd: {type: float, low: 0.1, high: 2.0}
      method.n_aux: {type: int, low: 1, high: 4}
      method.vlm_loss: {type: categorical, choices: [bce, ce]}
    objective: {benchmark: shapes_edit, subset: all, metric: O, direction: maximize}
    trials: 16
    batch: 2                      # trials launched together (one job array per batch)
    seed: 0
    launcher: {...}               # as in sweeps
    report: {...}                 # optional, as in sweeps

Every trial is an ordinary run folder named by the hash of its config, and the study lives in
<runs-dir>/<name>/optuna.db: running the same command again continues the search, and a trial
whose run is already done is never trained again.
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

    def validate(self) -> None:
        if not self.name:
            raise ValueError("'name' is required (the trials go to <runs-dir>/<name>/)")
        if not self.params:
            raise ValueError("'params' must name at least one parameter to search")
        if self.trials < 1 or self.batch < 1:
            raise ValueError("'trials' and 'batch' must be >= 1")


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


class Tuner:
    def __init__(self, path: Path, runs_dir: Path, cluster: str | None = None, out=sys.stdout):
        raw = C.read_yaml(path)
        self.cfg: TuneConfig = C.from_dict(TuneConfig, raw, str(path))
        sweep_cfg = S.SweepConfig(name=self.cfg.name, base=self.cfg.base, overrides=self.cfg.overrides,
                                  launcher=self.cfg.launcher, report=self.cfg.report)
        self.sweep = S.Sweep(path, sweep_cfg, runs_dir)
        self.cluster, self.out = cluster, out

    def plan(self, params: dict[str, Any]) -> S.PlannedRun:
        base, source = S._base_dict(self.sweep)
        overrides = {**self.cfg.overrides, **params}
        cfg = C.load_run_config(None, overrides, data=base, label=f"{self.sweep.path}: trial {S._fmt(params)}",
                                source=source)
        rid = C.config_hash(cfg)
        return S.PlannedRun(params, cfg, rid, S.RunDir(self.sweep.root / rid))

    def study(self) -> Any:
        import optuna

        self.sweep.root.mkdir(parents=True, exist_ok=True)
        return optuna.create_study(
            study_name=self.cfg.name, storage=f"sqlite:///{(self.sweep.root / 'optuna.db').resolve()}",
            load_if_exists=True, direction=self.cfg.objective.direction,
            sampler=optuna.samplers.TPESampler(seed=self.cfg.seed))

    def run(self, trials: int | None = None) -> Any:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = self.study()
        target = trials or self.cfg.trials
        # trials asked by an interrupted search: finish them first
        pending = [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.RUNNING]
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
                params = dict(t.params) if t.params else {k: suggest(t, k, p) for k, p in self.cfg.params.items()}
                planned.append((t, self.plan(params)))
            S.launch(self.sweep, [pr for _, pr in planned], cluster=self.cluster, out=self.out)
            for t, pr in planned:
                value = objective_value(pr, self.cfg.objective)
                if value is None:
                    study.tell(t, state=optuna.trial.TrialState.FAIL)
                    print(f"  trial {t.number} ({pr.run_id}) did not finish: {S.run_state(pr.dir)}", file=self.out)
                else:
                    study.tell(t, value)
                    print(f"  trial {t.number} ({pr.run_id}) {S._fmt(pr.overrides)}: "
                          f"{self.cfg.objective.metric}={value:.4f}", file=self.out)
        return study


def summary(study: Any, obj: Objective) -> str:
    import optuna

    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not done:
        return "no completed trial"
    done.sort(key=lambda t: t.value, reverse=obj.direction == "maximize")
    lines = [f"{len(done)} completed trials; best {obj.metric} = {done[0].value:.4f}"]
    for t in done[:10]:
        lines.append(f"  #{t.number:<4} {obj.metric}={t.value:.4f}  " + " ".join(f"{k}={v}" for k, v in t.params.items()))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m harness.tune", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("tune", help="tune YAML")
    p.add_argument("--cluster", choices=["auto", "slurm", "local", "debug"], default=None)
    p.add_argument("--trials", type=int, default=None, help="total trials to reach (default: the file's)")
    p.add_argument("--runs-dir", default="runs")
    p.add_argument("--summary", action="store_true", help="print the best trials so far; run nothing")
    args = p.parse_args(argv)
    try:
        tuner = Tuner(Path(args.tune), Path(args.runs_dir), args.cluster)
        tuner.plan({k: (v.choices[0] if v.type == "categorical" else v.low) for k, v in tuner.cfg.params.items()})
    except (C.ConfigError, KeyError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    study = tuner.study() if args.summary else tuner.run(args.trials)
    print(summary(study, tuner.cfg.objective))
    if tuner.cfg.report and not args.summary:
        S.build_report(tuner.sweep)
    return 0


if __name__ == "__main__":
    sys.exit(main())
