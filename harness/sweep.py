"""Sweeps: a base config, a grid of overrides, a launcher and a report, in one YAML file.

    python -m harness.sweep SWEEP.yaml --dry-run          # table of runs and their states; launches nothing
    python -m harness.sweep SWEEP.yaml [--cluster slurm]   # launch the runs not done, as one job array; wait; report
    python -m harness.sweep SWEEP.yaml --retry             # also relaunch failed runs
    python -m harness.sweep SWEEP.yaml --debug             # tracebacks of errors on the screen too

Sweep file:

    name: loss_ablation            # runs go to <runs-dir>/<name>/<run-id>/
    base: ../configs/toy.yaml      # run config (path relative to this file) or an inline mapping
    overrides: {train.steps: 300}  # applied to every run
    grid:                          # cartesian product of these lists
      method.name: [np_edit, dmd_only]
    zip:                           # groups of lists that move together (same length), crossed with the grid
      - {data.fraction: [0.01, 0.5, 1.0], train.steps: [100, 200, 300]}
    runs:                          # explicit runs (override mappings), crossed with the grid and zips
      - {method.name: sft, name: sft}
      - {include: ../configs/np_edit.yaml, train.init_from: "@sft"}   # a config file merged over the base
    seeds: [0, 1, 2]               # every run above, once per training seed (sets `seed`; its own run id)
    launcher: {cluster: auto, partition: gpu, gpus_per_node: 1, cpus_per_task: 8, mem_gb: 64,
               timeout_min: 240, array_parallelism: 8}
    rescore: [{eval.sampler: euler, eval.steps: 28, eval.guidance: 1.0}]  # every done run also scored so
    report: {...}                  # tables and plots (see reports/spec.py)

Runs are named by a hash of their resolved config; running the same command again never redoes a
done run, resumes interrupted ones from their checkpoints, and relaunches failed runs only with --retry.
With `seeds`, a run that starts from another run of the sweep (`train.init_from: "@name"`) starts from
that run's copy with the same seed; reports average a row over its seeds (mean, std, n).
Every run's config, data and benchmark paths are checked before anything is written or queued.

Local sweeps (--cluster local) own their jobs: Ctrl-C or SIGTERM stops them (each saves a checkpoint
at its next step and is marked interrupted; a second Ctrl-C stops them at once). Jobs that outlive
their sweep (it was killed with SIGKILL, or --no-wait) are adopted by the next run of the sweep,
which waits for them and counts them against launcher.array_parallelism. SLURM jobs stay queued
when the sweep stops: the cluster runs them (scancel to stop them).
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import signal
import socket
import sys
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness import config as C
from harness.launch import LauncherConfig, RunJob, job_alive, make_executor, resolve_cluster
from harness.runstore import RunDir, atomic_write_json, atomic_write_text, pid_alive


@dataclass
class SweepConfig:
    name: str = ""
    base: Any = None  # path (relative to the sweep file) or inline mapping
    overrides: dict[str, Any] = field(default_factory=dict)
    grid: dict[str, list[Any]] = field(default_factory=dict)
    zip: list[dict[str, list[Any]]] = field(default_factory=list)
    runs: list[dict[str, Any]] = field(default_factory=list)
    launcher: LauncherConfig = field(default_factory=LauncherConfig)
    report: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    # Training seeds: every run of grid x zip x runs is expanded once per seed (sets the run's `seed`).
    seeds: list[int] = field(default_factory=list)
    # How the runs' hyperparameters were chosen (`harness.tune --emit` writes it): the report names it.
    tuning: dict[str, Any] = field(default_factory=dict)
    # Evaluation settings every done run is also scored under before the report, e.g.
    # [{eval.sampler: euler, eval.steps: 28, eval.guidance: 1.0}]: a table then compares its rows under
    # one setting (`where:`) whatever sampler each method exports. A result already there is kept.
    rescore: list[dict[str, Any]] = field(default_factory=list)

    def validate(self) -> None:
        if not self.name:
            raise ValueError("'name' is required (the runs go to <runs-dir>/<name>/)")
        if self.base is not None and not isinstance(self.base, (str, dict)):
            raise ValueError(f"'base' must be a path or a mapping, got {self.base!r}")
        for key, values in self.grid.items():
            _check_axis(f"grid.{key}", values)
        for i, group in enumerate(self.zip):
            lengths = {k: len(v) for k, v in group.items()}
            if len(set(lengths.values())) > 1:
                raise ValueError(f"zip[{i}]: lists must have the same length, got {lengths}")
            for key, values in group.items():
                _check_axis(f"zip[{i}].{key}", values, distinct=False)
            rows = [json.dumps([group[k][j] for k in group], sort_keys=True) for j in range(min(lengths.values(), default=0))]
            _check_distinct(f"zip[{i}]", rows, "row")
        _check_distinct("runs", [json.dumps(r, sort_keys=True) for r in self.runs], "run")
        for i, setting in enumerate(self.rescore):
            rescore_setting(setting, f"rescore[{i}]")
        axes = [(f"grid.{k}", k) for k in self.grid] + [(f"zip[{i}].{k}", k) for i, g in enumerate(self.zip) for k in g]
        others = [(f"overrides.{k}", k) for k in self.overrides]
        others += [(f"runs[{i}].{k}", k) for i, r in enumerate(self.runs) for k in r if k != "include"]
        for n, (where, key) in enumerate(axes):
            for where2, key2 in axes[n + 1:] + others:
                if key == key2 or key.startswith(key2 + ".") or key2.startswith(key + "."):
                    raise C.FieldError(where, f"overlaps {where2}: one would overwrite the other in every run; "
                                              f"allowed: each key in one place (grid, one zip group, overrides or runs)")


def _check_axis(where: str, values: Any, distinct: bool = True) -> None:
    if not values:
        raise C.FieldError(where, "an empty list: the sweep would have no runs; allowed: a list of one value or more")
    if distinct:
        _check_distinct(where, [json.dumps(v, sort_keys=True) for v in values], "value")


def _check_distinct(where: str, items: list[str], what: str) -> None:
    seen: dict[str, int] = {}
    for i, item in enumerate(items):
        if item in seen:
            raise C.FieldError(where, f"{what} {seen[item]} and {what} {i} are the same ({item}): the same run twice; "
                                      f"allowed: distinct {what}s")
        seen[item] = i


@dataclass
class PlannedRun:
    overrides: dict[str, Any]  # what distinguishes this run within the sweep
    config: Any
    run_id: str
    dir: RunDir


@dataclass
class Sweep:
    path: Path
    cfg: SweepConfig
    runs_dir: Path
    cli_overrides: list[str] = field(default_factory=list)

    @property
    def root(self) -> Path:
        return self.runs_dir / self.cfg.name


def load_sweep(path: str | Path, runs_dir: str | Path = "runs", cli_overrides: list[str] = ()) -> Sweep:
    path = Path(path)
    lines: dict[str, str] = {}
    raw = C.read_yaml(path, lines)
    cfg = C.from_dict(SweepConfig, raw, C.Source(str(path), lines))
    if cfg.report:  # a typo in the report spec should fail now, not after every run has finished
        from reports.spec import spec_from_dict

        spec_from_dict(cfg.report, source=f"{path}, section 'report'")
    return Sweep(path, cfg, Path(runs_dir), list(cli_overrides))


def _base_dict(sweep: Sweep) -> tuple[dict, str]:
    base = sweep.cfg.base
    if base is None:
        return {}, str(sweep.path)
    if isinstance(base, dict):
        return base, f"{sweep.path} (base)"
    bpath = (sweep.path.parent / base).resolve()
    if not bpath.exists():
        raise C.ConfigError(f"{sweep.path}: key 'base': file not found: {bpath}")
    lines: dict[str, str] = {}
    return C.read_config_yaml(bpath, lines=lines), C.Source(str(bpath), lines)


def combinations(cfg: SweepConfig) -> list[dict[str, Any]]:
    """grid x zip groups x runs (x seeds), in a stable order: the seeds of one run are adjacent, and
    `seed` comes first in each, so that a truncated overrides column still shows it."""
    axes: list[list[dict[str, Any]]] = []
    if cfg.grid:
        keys = list(cfg.grid)
        axes.append([dict(zip(keys, vals)) for vals in itertools.product(*(cfg.grid[k] for k in keys))])
    for group in cfg.zip:
        keys = list(group)
        n = len(group[keys[0]]) if keys else 0
        axes.append([{k: group[k][i] for k in keys} for i in range(n)])
    if cfg.runs:
        axes.append([dict(r) for r in cfg.runs])
    out = []
    for parts in itertools.product(*axes):
        combo: dict[str, Any] = {}
        for p in parts:
            combo.update(p)
        out.append(combo)
    if not cfg.seeds:
        return out
    dup = sorted({s for s in cfg.seeds if cfg.seeds.count(s) > 1})
    if dup:
        raise ValueError(f"key 'seeds': {', '.join(map(str, dup))} listed twice")
    setting = [c for c in out if "seed" in c]
    if setting:
        raise ValueError(f"key 'seeds' expands every run per seed, but the run {_fmt(setting[0])} sets 'seed' "
                         "itself: list the seeds in one place")
    return [{"seed": s, **combo} for combo in out for s in cfg.seeds]


def expand(sweep: Sweep) -> list[PlannedRun]:
    """Resolve every run of the sweep (pure: reads files, writes nothing). Duplicates are merged."""
    base, source = _base_dict(sweep)
    cli = dict(C.parse_override(o) for o in sweep.cli_overrides)
    if sweep.cfg.seeds:
        for where, given in (("overrides", sweep.cfg.overrides), ("the command line", cli)):
            if "seed" in given:
                raise C.ConfigError(f"{sweep.path}: key 'seeds' expands every run per seed, but {where} sets "
                                    "'seed' too: list the seeds in one place")
    try:
        combos = combinations(sweep.cfg)
    except ValueError as e:
        raise C.ConfigError(f"{sweep.path}: {e}") from None
    configs = []
    for combo in combos:
        run_base, run_source = base, source
        if "include" in combo:  # a run may bring a config file of its own, merged over the base
            inc = sweep.path.parent / str(combo["include"])
            if not inc.exists():
                raise C.ConfigError(f"{sweep.path}: run {_fmt(combo)}: include: file not found: {inc}")
            run_base, run_source = C.deep_merge(base, C.read_config_yaml(inc)), f"{source} + {inc}"
        overrides = {**sweep.cfg.overrides, **{k: v for k, v in combo.items() if k != "include"}, **cli}
        label = f"{sweep.path}: overrides {_fmt(combo)}" if combo else f"{sweep.path}: overrides"
        configs.append((combo, C.load_run_config(None, overrides, data=run_base, label=label, source=run_source)))
    _resolve_references(sweep, configs)
    planned: list[PlannedRun] = []
    seen: set[str] = set()
    for combo, cfg in configs:
        run_id = C.config_hash(cfg)
        if run_id in seen:
            continue
        seen.add(run_id)
        planned.append(PlannedRun(combo, cfg, run_id, RunDir(sweep.root / run_id)))
    return planned


def _resolve_references(sweep: Sweep, configs: list[tuple[dict, Any]]) -> None:
    """`train.init_from: '@<name>'` names another run of this sweep (by its `name`); it becomes
    '@<run-id>' so the run id depends on the config of the run it starts from. When several runs share
    the name (one per seed), the reference is to the one with the referring run's `seed`."""
    by_name: dict[str, list[Any]] = {}
    for _, cfg in configs:
        if cfg.name:
            by_name.setdefault(cfg.name, []).append(cfg)
    pending = [cfg for _, cfg in configs if _ref(cfg)]
    for _ in range(len(pending) + 1):
        progressed = False
        for cfg in list(pending):
            named = by_name.get(_ref(cfg), [])
            target = [t for t in named if t.seed == cfg.seed] if len(named) > 1 else named
            if len(target) != 1:
                known = ", ".join(sorted(by_name)) or "(no run has a name)"
                found = f"{len(named)}" + (f", {len(target)} with seed {cfg.seed}" if len(named) > 1 else "")
                raise C.ConfigError(f"{sweep.path}: train.init_from '@{_ref(cfg)}' must name exactly one run of the "
                                    f"sweep (per seed; found {found}); run names: {known}")
            if _ref(target[0]) and target[0] in pending:
                continue  # resolve what it depends on first
            cfg.train.init_from = "@" + C.config_hash(target[0])
            pending.remove(cfg)
            progressed = True
        if not pending:
            return
        if not progressed:
            raise C.ConfigError(f"{sweep.path}: train.init_from references form a cycle")


def _ref(cfg: Any) -> str:
    """The run name an unresolved '@name' reference points to ('' when none)."""
    v = cfg.train.init_from
    return v[1:] if v.startswith("@") and not _is_run_id(v[1:]) else ""


def _is_run_id(s: str) -> bool:
    return len(s) == 8 and all(c in "0123456789abcdef" for c in s)


def dependencies(pr: PlannedRun) -> list[str]:
    v = pr.config.train.init_from
    return [v[1:]] if v.startswith("@") else []


def _fmt(overrides: dict[str, Any]) -> str:
    return " ".join(f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in overrides.items())


# ---------------------------------------------------------------------------------------------
# states


RESUMABLE = ("todo", "interrupted")  # launched by a plain rerun


def run_state(rd: RunDir) -> str:
    """todo | queued | running | interrupted | done | failed (a queued/running run whose job is gone
    counts as todo; interrupted ones were stopped by a signal and resume like todo ones)."""
    st = rd.read_status()
    state = st.get("state", "todo")
    if state in ("queued", "running"):
        job = _read_job(rd)
        info = {**job, **({"pid": st.get("pid"), "host": st.get("host")} if state == "running" else {}), "state": state}
        if not job_alive(info):
            return "todo"
    return state


def _read_job(rd: RunDir) -> dict[str, Any]:
    try:
        return json.loads((rd.path / "job.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def _progress_note(rd: RunDir, total_steps: int) -> str:
    latest = rd.latest_checkpoint()
    return f"step {latest[0]}/{total_steps}" if latest else ""


def status_table(planned: list[PlannedRun], *, show_errors: bool = True, plan: Any = None) -> str:
    """`plan`: a function of a run's config giving its planned memory per GPU (a column when given)."""
    rows = []
    for pr in planned:
        state = run_state(pr.dir)
        note = ""
        if state == "done":
            note = _result_note(pr.dir)
        elif state == "failed":
            err = pr.dir.read_error().strip().splitlines()
            note = err[-1][:100] if err else ""
        elif state == "interrupted":
            note = f"resumable: {_progress_note(pr.dir, pr.config.train.steps) or 'step 0'}; a plain rerun resumes it"
        elif state in ("todo", "running", "queued"):
            note = _progress_note(pr.dir, pr.config.train.steps)
            job = _read_job(pr.dir)
            if state != "todo" and job.get("job_id"):
                note = f"job {job['job_id']} {note}".strip()
        text = _fmt(pr.overrides) or "(base)"
        rows.append((pr.run_id, state, text if len(text) <= 90 else text[:89] + "…",
                     *([plan(pr.config)] if plan else []), note))
    header = ("id", "state", "overrides", *(["plan mem/GPU"] if plan else []), "note")
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(header, widths)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    counts = {s: sum(1 for r in rows if r[1] == s) for s in ("todo", "queued", "running", "interrupted", "done", "failed")}
    lines.append("")
    lines.append("  ".join(f"{k}: {v}" for k, v in counts.items()))
    if show_errors:
        for pr, r in zip(planned, rows):
            if r[1] == "failed":
                err = pr.dir.read_error().rstrip().splitlines()
                lines.append(f"\n--- {pr.run_id} failed ({pr.dir.error_path}):")
                lines += ["    " + e for e in err[-12:]]
    return "\n".join(lines)


def _result_note(rd: RunDir) -> str:
    try:
        res = rd.read_result()
    except (OSError, json.JSONDecodeError):
        return ""
    parts = []
    for r in res.get("results", [])[:2]:
        m = r.get("metrics", {})
        parts.append(f"{r['benchmark']}: " + " ".join(f"{k}={v:.2f}" for k, v in list(m.items())[:3]
                                                     if isinstance(v, (int, float))))
    return "; ".join(parts)


# ---------------------------------------------------------------------------------------------
# launching


def write_sweep_copy(sweep: Sweep) -> None:
    sweep.root.mkdir(parents=True, exist_ok=True)
    atomic_write_text(sweep.root / "sweep.yaml", sweep.path.read_text())


def prepare(pr: PlannedRun) -> None:
    pr.dir.path.mkdir(parents=True, exist_ok=True)
    text = C.dump_yaml(pr.config)
    if not pr.dir.config_path.exists() or pr.dir.config_path.read_text() != text:
        atomic_write_text(pr.dir.config_path, text)


def preflight(planned: list[PlannedRun]) -> None:
    """Every check a run's job would make on start (data and benchmark paths, index files, the
    dataset's images), made here, before anything is written or queued (ConfigError)."""
    from harness.preflight import check_run

    seen: set[str] = set()
    for pr in planned:
        key = json.dumps([C.to_dict(pr.config.data), C.to_dict(pr.config.eval.benchmarks)], sort_keys=True, default=str)
        if key not in seen:
            seen.add(key)
            try:
                check_run(pr.config)
            except C.ConfigError as e:
                raise C.ConfigError(f"{e} (run {pr.run_id}: {_fmt(pr.overrides) or 'base'})") from None


def launch(sweep: Sweep, planned: list[PlannedRun], *, cluster: str | None = None, retry: bool = False,
           wait: bool = True, progress: bool | None = None, out=sys.stdout) -> list[PlannedRun]:
    """Submit every run that is not done (failed ones only with retry) as one job array. On
    KeyboardInterrupt (Ctrl-C, or SIGTERM through main) the sweep's local jobs are stopped first."""
    states = {pr.run_id: run_state(pr.dir) for pr in planned}
    todo = [pr for pr in planned if states[pr.run_id] in RESUMABLE or (retry and states[pr.run_id] == "failed")]
    busy = [pr for pr in planned if states[pr.run_id] in ("queued", "running")]
    preflight(todo)
    write_sweep_copy(sweep)
    cluster = resolve_cluster(cluster or sweep.cfg.launcher.cluster)
    print(f"{sweep.cfg.name}: {len(planned)} runs; {sum(s == 'done' for s in states.values())} done, "
          f"{len(busy)} queued/running, launching {len(todo)} on {cluster}", file=out)
    try:
        return _launch(sweep, planned, todo, busy, states, cluster, wait=wait, progress=progress, out=out)
    except KeyboardInterrupt:
        if cluster == "local":
            stop_local_jobs(planned, out=out)
            wait_local_exit(planned)
        elif cluster == "slurm":
            print("stopped waiting; the SLURM jobs stay queued (scancel stops them); "
                  "run the same command again to follow them", file=out)
        raise


def _launch(sweep: Sweep, planned: list[PlannedRun], todo: list[PlannedRun], busy: list[PlannedRun],
            states: dict[str, str], cluster: str, *, wait: bool, progress: bool | None, out) -> list[PlannedRun]:
    launched: list[PlannedRun] = []
    by_id = {pr.run_id: pr for pr in planned}
    waiting = list(todo)
    while waiting:  # waves: a run starts once the runs it starts from (train.init_from: '@...') are done
        ready = [pr for pr in waiting if all(run_state(by_id[d].dir) == "done" for d in dependencies(pr) if d in by_id)]
        blocked = [pr for pr in waiting if any(run_state(by_id[d].dir) == "failed" for d in dependencies(pr) if d in by_id)]
        for pr in blocked:
            print(f"  {pr.run_id}: not launched: the run it starts from failed", file=out)
        waiting = [pr for pr in waiting if pr not in ready and pr not in blocked]
        if not ready:
            in_progress = [by_id[d] for pr in waiting for d in dependencies(pr) if d in by_id
                           and run_state(by_id[d].dir) in ("queued", "running")]
            if waiting and wait and in_progress:
                wait_for(in_progress, progress=progress, out=out)
                continue
            if waiting:
                print(f"  {len(waiting)} runs wait for runs still in progress: run the same command again later", file=out)
            break
        launched += _submit_all(sweep, ready, states, cluster, wait=wait, progress=progress, out=out, busy=busy)
        if waiting and not wait:
            print(f"  {len(waiting)} runs wait for these: run the same command again once they are done", file=out)
            break
        if waiting:
            wait_for(ready + busy, progress=progress, out=out)
    if wait:
        wait_for(launched + busy, progress=progress, out=out)
    return launched


def _active(runs: list[PlannedRun]) -> list[PlannedRun]:
    return [pr for pr in runs if run_state(pr.dir) in ("queued", "running")]


def _submit_all(sweep: Sweep, todo: list[PlannedRun], states: dict[str, str], cluster: str, *, wait: bool,
                progress: bool | None, out, busy: list[PlannedRun] = (), poll_s: float = 1.0) -> list[PlannedRun]:
    """SLURM throttles a job array itself (array_parallelism). Local processes have no scheduler: at
    most array_parallelism of the sweep's runs train at once, counting those still running from an
    earlier launch of it (adopted); a run starts when one finishes. With --no-wait, which cannot stay
    to start the next, only the free slots are filled and the rest wait for the next launch."""
    if cluster != "local":
        _submit(sweep, todo, states, cluster)
        return list(todo)
    limit = sweep.cfg.launcher.array_parallelism
    pending, started = list(todo), []
    while pending:
        free = limit - len(_active([*busy, *started]))
        if free > 0:
            part, pending = pending[:free], pending[free:]
            _submit(sweep, part, states, cluster)
            started += part
        elif not wait:
            print(f"  {len(pending)} runs wait for a free slot (array_parallelism {limit}): "
                  f"run the same command again to start them", file=out)
            break
        else:
            time.sleep(poll_s)
    return started


@contextmanager
def _sigint_ignored_in_children():
    """Local job controllers started in this block ignore SIGINT (inherited across exec): Ctrl-C in
    the terminal reaches the sweep and the training processes, not submitit's controllers, which
    would kill their task a second after forwarding it. The sweep then stops them with SIGTERM."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)


def _submit(sweep: Sweep, todo: list[PlannedRun], states: dict[str, str], cluster: str) -> None:
    if todo:
        for pr in todo:
            prepare(pr)
            if states[pr.run_id] == "failed":
                pr.dir.error_path.unlink(missing_ok=True)
            pr.dir.set_status("queued")
        executor = make_executor(sweep.root / ".submitit", sweep.cfg.launcher, cluster=cluster, name=sweep.cfg.name)
        with _sigint_ignored_in_children() if cluster == "local" else _nothing():
            jobs = executor.map_array(RunJob(threads=sweep.cfg.launcher.cpus_per_task), [str(pr.dir.path) for pr in todo])
        for pr, job in zip(todo, jobs):
            atomic_write_json(pr.dir.path / "job.json", {"cluster": cluster, "job_id": str(job.job_id),
                                                         "host": socket.gethostname(),
                                                         "submitted": time.strftime("%Y-%m-%dT%H:%M:%S")})
        if cluster == "debug":  # debug jobs run in this process when their result is asked for
            for job in jobs:
                try:
                    job.result()
                except Exception:  # recorded in the run folder
                    pass


@contextmanager
def _nothing():
    yield


def stop_local_jobs(planned: list[PlannedRun], *, out=sys.stdout, wait_s: float = 300.0, poll_s: float = 1.0) -> None:
    """SIGTERM to the local jobs of these runs (their submitit controllers forward it to the training
    processes, which save a checkpoint at their next step and mark the run interrupted), repeated
    until they have exited (a process still starting up has not installed its handler yet)."""
    host = socket.gethostname()
    pids = {}
    for pr in planned:
        job = _read_job(pr.dir)
        if job.get("cluster") == "local" and str(job.get("job_id", "")).isdigit() and job.get("host", host) == host \
                and pr.dir.read_status().get("state") in ("queued", "running"):
            pids[pr.run_id] = int(job["job_id"])
    if not pids:
        return
    print(f"stopping {len(pids)} local runs (each saves a checkpoint at its next step; Ctrl-C again stops them at once)",
          file=out, flush=True)
    deadline = time.time() + wait_s
    while True:
        alive = {r: pid for r, pid in pids.items() if pid_alive(pid)}
        if not alive:
            break
        if time.time() > deadline:
            print(f"  still stopping after {wait_s:.0f} s: " + ", ".join(f"{r} (PID {p})" for r, p in alive.items()), file=out)
            return
        for pid in alive.values():
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        time.sleep(poll_s)
    states = {pr.run_id: run_state(pr.dir) for pr in planned if pr.run_id in pids}
    print("  " + ", ".join(f"{r}: {st}" for r, st in states.items()) + "; run the same command again to resume", file=out)


def wait_local_exit(planned: list[PlannedRun], *, wait_s: float = 120.0, poll_s: float = 0.2) -> None:
    """Wait until the processes of this host's local jobs of these runs (controller and training process)
    have exited: a run marks itself interrupted a moment before its process ends."""
    host = socket.gethostname()
    pids = []
    for pr in planned:
        job = _read_job(pr.dir)
        if job.get("cluster") == "local" and job.get("host", host) == host \
                and pr.dir.read_status().get("state") in ("queued", "running", "interrupted"):
            pids += [int(x) for x in (job.get("job_id"), pr.dir.read_status().get("pid")) if str(x or "").isdigit()]
    deadline = time.time() + wait_s
    while any(pid_alive(pid) for pid in pids) and time.time() < deadline:
        time.sleep(poll_s)


def wait_for(planned: list[PlannedRun], *, poll_s: float = 2.0, progress: bool | None = None, out=sys.stdout) -> None:
    """Poll run folders until every run is done, failed, interrupted, or its job is gone."""
    from tqdm import tqdm

    if not planned:
        return
    if progress is None:
        progress = sys.stderr.isatty()
    bar = tqdm(total=len(planned), disable=not progress, desc="runs", dynamic_ncols=True)
    finished: set[str] = set()
    while True:
        for pr in planned:
            if pr.run_id in finished:
                continue
            state = run_state(pr.dir)
            if state in ("done", "failed", "todo", "interrupted"):
                finished.add(pr.run_id)
                bar.update(1)
                if state != "done":
                    print(f"  {pr.run_id}: {state}" + (f" (see {pr.dir.error_path})" if state == "failed" else
                                                         " (job ended without finishing; run again to resume)"), file=out)
        if len(finished) == len(planned):
            break
        time.sleep(poll_s)
    bar.close()


def rescore_setting(setting: Any, where: str) -> dict[str, Any]:
    """A `rescore:` entry as harness.evaluate's setting ({'sampler': 'euler', ...}), type-checked."""
    from harness import evaluate as E

    allowed = ", ".join(f"eval.{k}" for k in E.EVAL_OPTIONS)
    if not isinstance(setting, dict) or not setting:
        raise ValueError(f"{where}: expected a mapping of evaluation options ({allowed}), got {setting!r}")
    bad = [k for k in setting if not k.startswith("eval.") or k[len("eval."):] not in E.EVAL_OPTIONS]
    if bad:
        raise ValueError(f"{where}: {bad} are not evaluation options; allowed: {allowed}")
    out = {k[len("eval."):]: v for k, v in setting.items()}
    try:
        E._apply_setting(E._Setting(), out)  # type errors now, not after training
    except C.ConfigError as e:
        raise ValueError(f"{where}: {str(e).replace('command line: ', '')}") from None
    return out


def rescore(sweep: Sweep, planned: list[PlannedRun], out=sys.stdout) -> int:
    """Score every done run under each of the sweep's `rescore` settings; the number of runs that failed."""
    from harness import evaluate as E

    failed = 0
    settings = [rescore_setting(s, f"rescore[{i}]") for i, s in enumerate(sweep.cfg.rescore)]
    done = [pr for pr in planned if run_state(pr.dir) == "done"] if settings else []
    for pr in done:
        for setting in settings:
            try:
                results = E.rescore_run(pr.dir, setting)
            except Exception as e:  # one run that cannot be re-scored must not stop the others or the report
                failed += 1
                print(f"rescore {pr.run_id} {_fmt(setting)}: error: {type(e).__name__}: {e}", file=out)
                continue
            for r in results:
                vals = "  ".join(f"{k}={v:.3f}" for k, v in r.metrics.items() if k in ("SC", "PQ", "O"))
                print(f"rescore {pr.run_id} {r.benchmark}/{r.subset} [{E._describe_setting(r.meta)}]: {vals}", file=out)
    return failed


def build_report(sweep: Sweep, out=sys.stdout) -> list[Path]:
    if not sweep.cfg.report:
        return []
    from reports.build import NoResultsError, build_report as _build
    from reports.spec import ReportError

    spec = {**sweep.cfg.report, **({"tuning": sweep.cfg.tuning} if sweep.cfg.tuning else {})}
    try:
        paths = _build(sweep.root, spec=spec)
    except (NoResultsError, ReportError) as e:
        print(f"report: {e}", file=out)
        return []
    for p in paths:
        print(f"  wrote {p}", file=out)
    return paths


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m harness.sweep", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sweep", help="sweep YAML")
    p.add_argument("overrides", nargs="*", help="key=value overrides applied to every run (they change run ids)")
    p.add_argument("--dry-run", action="store_true", help="check every run, print the table of runs and their states; "
                   "launch nothing")
    p.add_argument("--cluster", choices=["auto", "slurm", "local", "debug"], default=None,
                   help="where to run (default: the sweep's launcher.cluster; auto = slurm if available, else local)")
    p.add_argument("--retry", action="store_true", help="relaunch failed runs too")
    p.add_argument("--no-wait", action="store_true", help="submit and return; run the same command later to report")
    p.add_argument("--runs-dir", default="runs", help="root of run folders (default: runs)")
    p.add_argument("--report-only", action="store_true", help="build the report from the runs done so far")
    p.add_argument("--debug", action="store_true", help="print the traceback of an error")
    args = p.parse_args(argv)
    try:
        sweep = load_sweep(args.sweep, args.runs_dir, args.overrides)
        planned = expand(sweep)
        if args.dry_run:
            preflight([pr for pr in planned if run_state(pr.dir) in (*RESUMABLE, "failed")])
    except (C.ConfigError, KeyError, ValueError) as e:  # ValueError: report spec errors
        if args.debug:
            traceback.print_exc()
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.dry_run:
        print(f"sweep {sweep.cfg.name}: {len(planned)} runs in {sweep.root}"
              f" (cluster: {resolve_cluster(args.cluster or sweep.cfg.launcher.cluster)})")
        from harness.plan import memory_column

        print(status_table(planned, plan=memory_column(sweep.cfg.launcher)))
        return 0
    old_term = _sigterm_as_interrupt()
    try:
        if not args.report_only:
            launch(sweep, planned, cluster=args.cluster, retry=args.retry, wait=not args.no_wait)
            if args.no_wait:
                print(f"submitted; run `python -m harness.sweep {args.sweep} --dry-run` to follow")
                return 0
    except C.ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"interrupted: run `python -m harness.sweep {args.sweep}` again to resume", file=sys.stderr)
        return 130
    except Exception as e:
        if args.debug:
            traceback.print_exc()
        print(f"error: {type(e).__name__}: {(str(e).strip().splitlines() or [''])[0]}"
              f"{'' if args.debug else ' (--debug prints the traceback)'}", file=sys.stderr)
        return 1
    finally:
        if old_term is not None:
            signal.signal(signal.SIGTERM, old_term)
    print(status_table(planned, show_errors=False))
    rescore_failed = rescore(sweep, planned)
    build_report(sweep)
    states = [run_state(pr.dir) for pr in planned]
    if "interrupted" in states:  # e.g. Ctrl-C while jobs were being started, when the sweep ignores it
        wait_local_exit(planned)
        print(f"interrupted: run `python -m harness.sweep {args.sweep}` again to resume", file=sys.stderr)
        return 130
    return 0 if all(s == "done" for s in states) and not rescore_failed else 1


def _sigterm_as_interrupt() -> Any:
    """SIGTERM stops the sweep the way Ctrl-C does (its local jobs stopped first); the old handler."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        return None

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    return signal.signal(signal.SIGTERM, interrupt)


if __name__ == "__main__":
    sys.exit(main())
