"""The report spec: which tables and figures a sweep's results turn into.

It lives under the `report:` key of a sweep YAML (or any YAML passed with `--spec`). Every text is
plain text and is escaped for LaTeX, unless a table sets `raw_latex: true`. Each table is written as
LaTeX (<name>.tex) and GitHub markdown (<name>.md). Example:

    report:
      precision: 2                      # decimals in tables
      higher_is_better: {MyScore: true} # merged onto DEFAULT_HIGHER_IS_BETTER
      tables:
        - name: loss_ablation           # -> loss_ablation.tex
          caption: "Training objective ablation on shapes-edit."
          rows: method.name             # config column whose values are the rows (runs sharing a value: mean)
          row_order: [np_edit, dmd_only, vlm_only, np_edit_no_identity, np_edit_ce]
          row_labels: {np_edit: Ours, dmd_only: w/ only DMD}
          columns:
            - group: Shapes-Edit        # \\multicolumn header over this block (omit for none)
              benchmark: shapes_edit
              metrics: [SC, PQ, O]
              labels: {SC: SC Score, PQ: PQ Score, O: Overall}
          # show_std: true              # default: 'mean ± std' wherever a row has several runs (seeds); false: means
          # separation: se              # bold/underline only where separated by the combined standard error; 'rank': by value
          # info: {eval.steps: '#Step'} # the evaluation setting may differ between rows: shown as a column ...
          # setting_varies: [eval.sampler]   # ... or in a note under the table
      plots:
        - name: per_type
          kind: bar
          benchmark: shapes_edit
          metric: O
          x: task
          hue: method.name

Config columns are the run config's dotted keys (`method.name`, `data.fraction`, `model.critic.size`,
`seed`, `name`, ...) and the evaluation setting each result was scored under (`eval.sampler`,
`eval.steps`, `eval.guidance`, `eval.seed`, `eval.benchmark_config`; see reports.collect). Values in
`row_order`, `row_labels`, `where`, `x_order`, ... match config values by their text, numbers by value
(`1` matches `1.0`).

One evaluation setting per table: rows scored under different settings are refused (ReportError
naming the rows and keys) unless the table says how they differ: a setting key that is the `rows`
column, an `info` column (the paper's Table 1 `#Step`), or listed in `setting_varies` (a note under
the table, a marker on each row). `where: {eval.guidance: 1}` picks one setting of runs scored under
several. The setting is stated in the caption. The runs of one row (seeds) are averaged: mean, std
(ddof 1) and n; the caption says over how many seeds (a column `n` when rows differ) and which rule
set the bold / underlined marks (`separation`).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from harness.config import ConfigError, from_dict, read_yaml

SETTING_KEYS = ("eval.sampler", "eval.steps", "eval.guidance", "eval.seed", "eval.benchmark_config")  # reports.collect


class ReportError(ValueError):
    """The spec asks for something the collected results cannot give (an unknown column, ...)."""


DEFAULT_HIGHER_IS_BETTER: dict[str, bool] = {
    # VIEScore and the ImgEdit judge
    "SC": True, "PQ": True, "O": True, "Overall": True, "Avg": True,
    # reconstruction / similarity
    "PSNR": True, "SSIM": True, "LPIPS": False, "L1": False, "L2": False, "MSE": False,
    # customization (DreamBooth)
    "CLIP-I": True, "CLIP-T": True, "CLIPScore": True, "DINO": True, "MDINO": True,
    "TIFA": True, "Geometric": True,
    "FID": False,
}

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def _check_name(kind: str, name: str) -> None:
    if not name:
        raise ValueError(f"every {kind} needs a 'name' (it names the output files)")
    if not _NAME.match(name):
        raise ValueError(f"{kind} name {name!r}: use letters, digits, '_', '-' and '.' (it names files)")


def _check_setting_keys(where: str, keys: list[str]) -> None:
    bad = [k for k in keys if k not in SETTING_KEYS]
    if bad:
        raise ValueError(f"{where}: setting_varies: {', '.join(map(repr, bad))} is not an evaluation-setting key; "
                         f"allowed: {', '.join(SETTING_KEYS)}")


@dataclass
class Columns:
    """A block of metric columns: one column per task x metric of one benchmark subset."""

    benchmark: str = ""
    metrics: list[str] = field(default_factory=list)
    subset: str = "all"
    # 'all' = the benchmark's reported numbers; a task name, or a list of them (one column each, like
    # the per-edit-type columns of the paper's Table 5).
    task: str | list[str] = "all"
    # Header over the block (\multicolumn + \cmidrule); adjacent blocks with the same group share it.
    group: str = ""
    # Column headers, keyed by metric, by task, or 'task/metric'. The header names the task only
    # when the block has several tasks and the metric only when it has several metrics or one task.
    labels: dict[str, str] = field(default_factory=dict)
    scale: float | None = None  # overrides the table's scale for this block

    @property
    def tasks(self) -> list[str]:
        return [self.task] if isinstance(self.task, str) else list(self.task)

    def validate(self) -> None:
        if not self.benchmark:
            raise ValueError("'benchmark' is required (e.g. shapes_edit)")
        if not self.metrics:
            raise ValueError("'metrics' is required (e.g. [SC, PQ, O])")
        if not self.tasks:
            raise ValueError("'task' must name at least one task ('all' for the reported numbers)")


@dataclass
class RowGroup:
    """A block of rows, separated from the next by \\midrule (the paper's Table 4: data scale | VLM | RL).

    `rows` and `row_labels` default to the table's; `where` is combined with the table's."""

    rows: str = ""
    where: dict[str, Any] = field(default_factory=dict)
    row_order: list[Any] = field(default_factory=list)
    row_labels: dict[Any, str] = field(default_factory=dict)
    rank: bool = True  # False: these rows get no bold/underline and do not compete for them


@dataclass
class Table:
    """One booktabs table. Rows are the values of a config column (several runs per value, e.g. seeds,
    are averaged); columns are blocks of benchmark metrics."""

    name: str = ""
    caption: str = ""
    label: str = ""  # \\label; default tab:<name>
    rows: str = "method.name"
    row_header: str = "Method"
    # Only these runs: {config column: value or list of allowed values}.
    where: dict[str, Any] = field(default_factory=dict)
    # Rows in this order, exactly these (a value without runs shows '--'); empty = every value, sorted.
    row_order: list[Any] = field(default_factory=list)
    row_labels: dict[Any, str] = field(default_factory=dict)
    row_groups: list[RowGroup] = field(default_factory=list)
    # Text columns after the row label, from config columns: {config column: header}, e.g. {eval.steps: '#Step'}.
    info: dict[str, str] = field(default_factory=dict)
    columns: list[Columns] = field(default_factory=list)
    scale: float = 1.0  # multiply every value (the paper's tables are x10)
    precision: int | None = None  # default: the report's
    # 'mean ± std' over the runs of a row (seeds) where it has several; null (default) and true: so; false: the mean only.
    show_std: bool | None = None
    # Where best (bold) and second (underlined) are chosen: among all rows, within each row group, or nowhere.
    rank: Literal["table", "group", "none"] = "table"
    # How: 'se' = only where separated: the row's mean beats every row below it by more than their combined
    # standard error sqrt(se1^2 + se2^2), se = std / sqrt(n) (a column whose rows do not all have 2+ runs
    # falls back to 'rank'); 'rank' = by the printed value alone (ties share a mark).
    separation: Literal["se", "rank"] = "se"
    # Evaluation-setting keys allowed to differ between rows (besides `rows` and `info` keys): each row's
    # values are given in a note under the table, e.g. [eval.sampler, eval.steps].
    setting_varies: list[str] = field(default_factory=list)
    raw_latex: bool = False  # captions and labels are LaTeX, written unescaped

    def validate(self) -> None:
        _check_name("table", self.name)
        _check_setting_keys(f"table {self.name!r}", self.setting_varies)
        if not self.columns:
            raise ValueError(f"table {self.name!r}: 'columns' is required")
        if self.row_groups and self.row_order:
            raise ValueError(f"table {self.name!r}: with row_groups, give each group its own row_order")
        if self.precision is not None and not 0 <= self.precision <= 10:
            raise ValueError(f"table {self.name!r}: precision must be in 0..10, got {self.precision}")

    def groups(self) -> list[RowGroup]:
        """The row groups with the table's defaults filled in."""
        if not self.row_groups:
            return [RowGroup(self.rows, dict(self.where), list(self.row_order), dict(self.row_labels))]
        return [
            RowGroup(
                rows=g.rows or self.rows,
                where={**self.where, **g.where},
                row_order=list(g.row_order),
                row_labels={**self.row_labels, **g.row_labels},
                rank=g.rank,
            )
            for g in self.row_groups
        ]


@dataclass
class Plot:
    """One seaborn figure (PDF + PNG): `metric` of one benchmark against `x`, one colour per `hue` value."""

    name: str = ""
    kind: Literal["bar", "line"] = "bar"
    benchmark: str = ""
    metric: str = ""
    subset: str = "all"
    # x = 'task': one position per task of the benchmark (the paper's Figure 5); x = a config column
    # (e.g. data.fraction): the value of `task` ('all' = the reported numbers) against it.
    x: str = "task"
    task: str = "all"
    x_order: list[Any] = field(default_factory=list)  # empty: every value, sorted ('all' left out for x=task)
    x_labels: dict[Any, str] = field(default_factory=dict)
    hue: str = "method.name"
    hue_order: list[Any] = field(default_factory=list)
    hue_labels: dict[Any, str] = field(default_factory=dict)
    where: dict[str, Any] = field(default_factory=dict)
    scale: float = 1.0
    # '' = the fixed per-method colours (reports.figures.method_color), the same in every figure;
    # else a seaborn palette name applied in hue order (e.g. 'viridis' for an ordinal hue).
    palette: str = ""
    logx: bool = False
    title: str = ""
    xlabel: str = ""
    ylabel: str = ""  # default: the metric
    figsize: list[float] = field(default_factory=lambda: [6.4, 3.2])
    # Evaluation-setting keys allowed to differ between the plot's points (besides x and hue); see Table.
    setting_varies: list[str] = field(default_factory=list)

    def validate(self) -> None:
        _check_name("plot", self.name)
        _check_setting_keys(f"plot {self.name!r}", self.setting_varies)
        if not self.benchmark or not self.metric:
            raise ValueError(f"plot {self.name!r}: 'benchmark' and 'metric' are required")
        if len(self.figsize) != 2 or min(self.figsize) <= 0:
            raise ValueError(f"plot {self.name!r}: figsize must be [width, height] in inches")
        if self.logx and self.x == "task":
            raise ValueError(f"plot {self.name!r}: logx needs a numeric x, not 'task'")


@dataclass
class ReportSpec:
    precision: int = 2
    higher_is_better: dict[str, bool] = field(default_factory=dict)  # merged onto DEFAULT_HIGHER_IS_BETTER
    tables: list[Table] = field(default_factory=list)
    plots: list[Plot] = field(default_factory=list)
    # The sweep's `tuning:` record (written by `harness.tune --emit`): every table's caption names the budget.
    tuning: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        if not 0 <= self.precision <= 10:
            raise ValueError(f"precision must be in 0..10, got {self.precision}")
        for kind, items in (("table", self.tables), ("plot", self.plots)):
            names = [t.name for t in items]
            dup = sorted({n for n in names if names.count(n) > 1})
            if dup:
                raise ValueError(f"{kind} names must be unique; repeated: {', '.join(dup)}")

    def higher(self, metric: str) -> bool | None:
        """True if higher is better, False if lower is, None if unknown (no arrow, no marks)."""
        return {**DEFAULT_HIGHER_IS_BETTER, **self.higher_is_better}.get(metric)


def tuning_sentence(tuning: dict[str, Any]) -> str:
    """The caption's sentence for a sweep's `tuning:` record (plain text)."""
    if not tuning:
        return ""
    trials = tuning.get("trials_per_variant")
    budget = f"with {trials} trials each" if trials else "each"
    where = f" on {tuning['objective']}" if tuning.get("objective") else ""
    src = f" ({tuning['file']})" if tuning.get("file") else ""
    note = f" {tuning['note'].strip()}" if tuning.get("note") else ""  # e.g. which rows are references, not tuned
    return f"Every row's hyperparameters tuned {budget}{where}{src}.{note}"


def spec_from_dict(data: Any, source: str = "<report>") -> ReportSpec:
    """Build a ReportSpec from the value of a `report:` key; errors name the source and the key."""
    return from_dict(ReportSpec, data if data is not None else {}, source=source)


def load_spec(path: str | Path, *, required: bool = True) -> ReportSpec | None:
    """The `report:` section of a YAML file. Without one: an error, or None when not `required`."""
    path = Path(path)
    if not path.exists() and not required:
        return None
    data = read_yaml(path)
    if "report" not in data:
        if required:
            raise ConfigError(f"{path}: no 'report' key; top-level keys: {', '.join(map(str, data)) or '(none)'}")
        return None
    report = data["report"] or {}
    if data.get("tuning") and isinstance(report, dict) and "tuning" not in report:
        report = {**report, "tuning": data["tuning"]}  # a sweep file's tuning record
    return spec_from_dict(report, source=f"{path}, section 'report'")
