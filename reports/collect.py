"""Collect a sweep's finished runs into one long-form pandas table.

One row per run x result x task x metric: columns `run_id, benchmark, subset, task, metric, value`
(task 'all' holds the benchmark's reported numbers), then the evaluation setting the result was
scored under (SETTING_COLUMNS: `eval.sampler`, `eval.steps`, `eval.guidance`, `eval.seed`,
`eval.benchmark_config`, a hash of the benchmark's generation config), then the run's config as
flattened dotted keys (`method.name`, `data.fraction`, `model.critic.size`, `seed`, `name`, ...).

The setting columns come from each result's `meta` (what was used: harness.evaluate records it), so
one run re-scored under several settings has one result per setting; a result that does not record
it (written before it was recorded) takes the run config's eval.* values. Tables and figures group
the results by run and setting (`runs_table`): a run scored two ways counts as two, never averaged.
"""
from __future__ import annotations

import difflib
import json
import math
import numbers
import warnings
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd
import yaml

from harness.config import flatten
from reports.spec import SETTING_KEYS, ReportError

RESULT_COLUMNS = ["run_id", "benchmark", "subset", "task", "metric", "value"]
SETTING_COLUMNS = list(SETTING_KEYS)
COUNT_COLUMNS = ["run_id", "benchmark", "subset", "task", "n", "scored", "failed", "missing"]


class ReportWarning(UserWarning):
    pass


def warn(msg: str) -> None:
    """A ReportWarning: something in the results or the spec worth a look; the report is still written."""
    warnings.warn(msg, ReportWarning, stacklevel=3)


def run_dirs(runs_dir: str | Path) -> list[Path]:
    """The run folders of a sweep: its sub-folders holding a config.yaml."""
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        raise FileNotFoundError(f"{runs_dir}: no such runs folder")
    return sorted(p for p in runs_dir.iterdir() if p.is_dir() and (p / "config.yaml").exists())


def _read_runs(runs_dir: str | Path) -> Iterator[tuple[str, dict[str, Any], list[dict[str, Any]]]]:
    """(run_id, flat config, result dicts) of every run with a readable result.json and config.yaml."""
    for run in run_dirs(runs_dir):
        result_path = run / "result.json"
        if not result_path.exists():
            continue
        try:
            config = yaml.safe_load((run / "config.yaml").read_text()) or {}
            result = json.loads(result_path.read_text())
            results = result["results"]
            if not isinstance(config, dict) or not isinstance(results, list):
                raise ValueError("unexpected structure")
        except (OSError, ValueError, KeyError, TypeError, yaml.YAMLError) as e:
            warn(f"{run}: skipped, unreadable config.yaml or result.json ({type(e).__name__}: {e})")
            continue
        yield run.name, {k: _cell(v) for k, v in flatten(config).items()}, results


def _cell(v: Any) -> Any:
    """Config values as table cells: lists and mappings (e.g. train.betas) become JSON text."""
    if isinstance(v, (list, tuple, dict)):
        return json.dumps(v, sort_keys=True)
    return v


def _number(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        return None
    return float(v)


def result_setting(meta: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    """The evaluation setting of one result: from its meta, else from the run's flat config."""
    sampling = meta.get("sampling") if isinstance(meta.get("sampling"), dict) else {}
    return {
        "eval.sampler": sampling.get("sampler", config.get("eval.sampler")),
        "eval.steps": sampling.get("steps", config.get("eval.steps")),
        "eval.guidance": sampling.get("guidance", config.get("eval.guidance")),
        "eval.seed": meta.get("eval_seed", config.get("eval.seed")),
        "eval.benchmark_config": meta.get("benchmark_config"),
    }


KEY_NAMES = {"eval.sampler": "sampler", "eval.steps": "steps", "eval.guidance": "guidance",
              "eval.seed": "eval seed", "eval.benchmark_config": "benchmark config"}


def describe_setting(setting: dict[str, str]) -> str:
    """'euler sampler, 28 steps, guidance 4.5, eval seed 0' (unknown values and the config hash left out)."""
    parts = []
    for key, fmt in (("eval.sampler", "{} sampler"), ("eval.steps", "{} steps"), ("eval.guidance", "guidance {}"),
                     ("eval.seed", "eval seed {}")):
        v = setting.get(key, "null")
        if v != "null":
            parts.append(fmt.format(v))
    return ", ".join(parts)


def collect(runs_dir: str | Path) -> pd.DataFrame:
    """The long-form results table of every finished run under `runs_dir` (see module doc)."""
    records: list[dict[str, Any]] = []
    config_keys: dict[str, None] = {}
    for run_id, config, results in _read_runs(runs_dir):
        config_keys.update(dict.fromkeys(config))
        seen: set[tuple[str, ...]] = set()
        for res in results:
            bench, subset = str(res.get("benchmark", "")), str(res.get("subset", "all"))
            setting = result_setting(res.get("meta") or {}, config)
            key = (bench, subset, *(canon(v) for v in setting.values()))
            if key in seen:
                warn(f"run {run_id}: {bench}/{subset} appears twice in result.json under one evaluation setting; "
                     "both are kept")
            seen.add(key)
            tasks = {"all": res.get("metrics") or {}}
            for task, metrics in (res.get("per_task") or {}).items():
                if task == "all":
                    warn(f"run {run_id}: {bench}/{subset} has a task named 'all'; its per-task entry is skipped")
                    continue
                tasks[str(task)] = metrics or {}
            for task, metrics in tasks.items():
                for metric, value in metrics.items():
                    x = _number(value)
                    if x is None:
                        continue
                    records.append({"run_id": run_id, "benchmark": bench, "subset": subset, "task": task,
                                    "metric": str(metric), "value": x, **config, **setting})
    fixed = RESULT_COLUMNS + SETTING_COLUMNS
    return pd.DataFrame.from_records(records, columns=fixed + [k for k in config_keys if k not in fixed])


def collect_counts(runs_dir: str | Path) -> pd.DataFrame:
    """Per run x benchmark x subset x task: how many samples there were, were scored, failed, were missing."""
    rows = []
    for run_id, _, results in _read_runs(runs_dir):
        for res in results:
            for task, c in (res.get("counts") or {}).items():
                rows.append({"run_id": run_id, "benchmark": res.get("benchmark", ""), "subset": res.get("subset", "all"),
                             "task": str(task), **{k: int(c.get(k, 0) or 0) for k in COUNT_COLUMNS[4:]}})
    return pd.DataFrame.from_records(rows, columns=COUNT_COLUMNS)


# ---------------------------------------------------------------------------------------------
# selecting runs by config values


def config_columns(df: pd.DataFrame) -> list[str]:
    """The columns runs are selected by: the evaluation setting and the run's config."""
    return [c for c in df.columns if c not in RESULT_COLUMNS and c != "unit"]


def unit_ids(df: pd.DataFrame) -> pd.Series:
    """'run_id|setting' for every row of the results: one id per run and evaluation setting."""
    ids = df.run_id.astype(str)
    for c in SETTING_COLUMNS:
        if c in df.columns:
            ids = ids + "|" + df[c].map(canon)
    return ids


def runs_table(df: pd.DataFrame) -> pd.DataFrame:
    """One row per run and evaluation setting (a run re-scored under another setting gives two),
    indexed by their unit id (`unit_ids`): run_id, the setting and config columns."""
    units = df.assign(unit=unit_ids(df)) if "unit" not in df.columns else df
    return units.drop_duplicates("unit")[["unit", "run_id", *config_columns(df)]].set_index("unit", drop=False)


def canon(v: Any) -> str:
    """The text a config value is matched by: numbers by value (1 == 1.0 == '1'), None as 'null'."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "null"
    if isinstance(v, (bool, np.bool_)):
        return "true" if v else "false"
    if isinstance(v, str):
        try:
            x = float(v)
        except ValueError:
            return v
        return canon(x) if math.isfinite(x) else v
    if isinstance(v, numbers.Real):
        x = float(v)
        return str(int(x)) if x.is_integer() and abs(x) < 2**53 else repr(x)
    return str(v)


def sort_key(text: str) -> tuple[int, float, str]:
    """Numbers first, by value; then text."""
    try:
        return (0, float(text), text)
    except ValueError:
        return (1, 0.0, text)


def require_column(df: pd.DataFrame, column: str, where: str) -> None:
    if column in df.columns:
        return
    cols = config_columns(df) if column not in RESULT_COLUMNS else list(df.columns)
    close = difflib.get_close_matches(column, cols, n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise ReportError(f"{where}: {column!r} is not a column of the results{hint} (config columns: {', '.join(cols)})")


def select_runs(runs: pd.DataFrame, where: dict[str, Any], context: str) -> pd.DataFrame:
    """The runs whose config matches `where`: {column: value or list of allowed values}."""
    mask = pd.Series(True, index=runs.index)
    for key, allowed in where.items():
        require_column(runs, key, f"{context}: where")
        values = allowed if isinstance(allowed, (list, tuple)) else [allowed]
        mask &= runs[key].map(canon).isin({canon(v) for v in values})
    return runs[mask]
