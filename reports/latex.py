"""Booktabs LaTeX tables from the long-form results, laid out as a report spec's `Table` says.

Best value of each column in bold, second underlined (dense ranking on the printed numbers: every
tied row gets the mark, and 'second' is the next distinct value); missing values print '--'.
"""
from __future__ import annotations

import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from reports.collect import canon, require_column, runs_table, select_runs, sort_key, warn
from reports.spec import Columns, ReportSpec, Table

_SPECIAL = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
    "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
    "<": r"\textless{}", ">": r"\textgreater{}", "|": r"\textbar{}",
}


def escape(text: str) -> str:
    """Plain text -> LaTeX source that prints it."""
    return "".join(_SPECIAL.get(ch, ch) for ch in str(text))


@dataclass
class Column:
    block: int  # index into Table.columns
    benchmark: str
    subset: str
    task: str
    metric: str
    label: str
    higher: bool | None
    scale: float


@dataclass
class Row:
    label: str
    group: int
    rank: bool
    info: list[str]
    mean: list[float] = field(default_factory=list)  # per column, scaled; nan = missing
    std: list[float] = field(default_factory=list)
    n: list[int] = field(default_factory=list)  # runs behind each mean


@dataclass
class TableData:
    columns: list[Column]
    rows: list[Row]
    marks: dict[tuple[int, int], str]  # (row, column) -> 'best' | 'second'
    precision: int


def _columns(table: Table, spec: ReportSpec) -> list[Column]:
    cols = []
    for b, block in enumerate(table.columns):
        scale = table.scale if block.scale is None else block.scale
        for task in block.tasks:
            for metric in block.metrics:
                cols.append(Column(b, block.benchmark, block.subset, task, metric,
                                   _column_label(block, task, metric), spec.higher(metric), scale))
    return cols


def _column_label(block: Columns, task: str, metric: str) -> str:
    if f"{task}/{metric}" in block.labels:
        return block.labels[f"{task}/{metric}"]
    parts = []
    if len(block.tasks) > 1:
        parts.append(block.labels.get(task, task))
    if len(block.metrics) > 1 or len(block.tasks) == 1:
        parts.append(block.labels.get(metric, metric))
    return " ".join(parts)


def _display(x: float, precision: int) -> str:
    return f"{x:.{precision}f}"


def table_data(table: Table, spec: ReportSpec, df: pd.DataFrame) -> TableData:
    """The numbers of a table (means over each row's runs, scaled) and where the marks go."""
    where = f"report table {table.name!r}"
    precision = spec.precision if table.precision is None else table.precision
    columns = _columns(table, spec)
    runs = runs_table(df)
    for key in table.info:
        require_column(runs, key, f"{where}: info")

    # value of every (run, column); runs without it are simply absent
    index = ["benchmark", "subset", "task", "metric"]
    wanted = pd.DataFrame([[c.benchmark, c.subset, c.task, c.metric] for c in columns], columns=index)
    hits = df.merge(wanted.drop_duplicates(), on=index)
    values = hits.groupby(["run_id", *index])["value"].mean()
    for c in columns:
        if not ((hits.benchmark == c.benchmark) & (hits.subset == c.subset) & (hits.task == c.task)
                & (hits.metric == c.metric)).any():
            have = sorted(df.loc[df.benchmark == c.benchmark, "metric"].unique())
            known = (f"metrics of {c.benchmark}: {', '.join(have)}" if have
                     else f"benchmarks: {', '.join(sorted(df.benchmark.unique()))}")
            warn(f"{where}: no results for {c.benchmark}/{c.subset}/{c.task}/{c.metric} ({known})")
    rows: list[Row] = []
    for g, group in enumerate(table.groups()):
        require_column(runs, group.rows, f"{where}: rows")
        chosen = select_runs(runs, group.where, where)
        keys = chosen[group.rows].map(canon)
        order = [canon(v) for v in group.row_order] or sorted(set(keys), key=sort_key)
        labels = {canon(k): v for k, v in group.row_labels.items()}
        for key in order:
            ids = list(chosen.index[keys == key])
            _check_mixed(chosen.loc[ids], group.rows, key, where)
            info = [", ".join(sorted({canon(v) for v in chosen.loc[ids, c]}, key=sort_key)) for c in table.info]
            row = Row(labels.get(key, key), g, group.rank, info)
            for c in columns:
                v = np.array([values.get((r, c.benchmark, c.subset, c.task, c.metric), np.nan) for r in ids], float)
                v = v[~np.isnan(v)] * c.scale
                if 0 < len(v) < len(ids):
                    warn(f"{where}: row {row.label!r}: only {len(v)} of {len(ids)} runs have {c.benchmark}/{c.task}/{c.metric}")
                row.mean.append(float(v.mean()) if len(v) else np.nan)
                row.std.append(float(v.std(ddof=1)) if len(v) > 1 else np.nan)
                row.n.append(len(v))
            rows.append(row)
    return TableData(columns, rows, _marks(table, columns, rows, precision), precision)


def _check_mixed(runs: pd.DataFrame, rows_key: str, key: str, where: str) -> None:
    """Warn when the runs averaged into one row differ in more than their seeds."""
    if len(runs) < 2:
        return
    differ = [c for c in runs.columns if c not in ("run_id", rows_key, "name") and c.rsplit(".", 1)[-1] != "seed"
              and runs[c].map(canon).nunique() > 1]
    if differ:
        warn(f"{where}: row {key!r} averages {len(runs)} runs that differ in {', '.join(differ)}; "
              "narrow it with `where` or pick another `rows` column")


def _marks(table: Table, columns: list[Column], rows: list[Row], precision: int) -> dict[tuple[int, int], str]:
    marks: dict[tuple[int, int], str] = {}
    if table.rank == "none":
        return marks
    scopes = [[i for i, r in enumerate(rows) if r.rank]]
    if table.rank == "group":
        scopes = [[i for i in scopes[0] if rows[i].group == g] for g in sorted({r.group for r in rows})]
    for j, col in enumerate(columns):
        if col.higher is None:
            continue
        for scope in scopes:
            shown = {i: float(_display(rows[i].mean[j], precision)) for i in scope if not np.isnan(rows[i].mean[j])}
            if len(shown) < 2:
                continue
            distinct = sorted(set(shown.values()), reverse=col.higher)
            for i, x in shown.items():
                if x == distinct[0]:
                    marks[(i, j)] = "best"
                elif len(distinct) > 1 and x == distinct[1]:
                    marks[(i, j)] = "second"
    return marks


def _cell(row: Row, j: int, mark: str | None, precision: int, show_std: bool) -> str:
    mean = row.mean[j]
    if np.isnan(mean):
        return "--"
    text = _display(mean, precision)
    if mark == "best":
        text = rf"\textbf{{{text}}}"
    elif mark == "second":
        text = rf"\underline{{{text}}}"
    if show_std and row.n[j] > 1:
        text += rf"{{\scriptsize$\pm${_display(row.std[j], precision)}}}"
    return text


def render_table(table: Table, spec: ReportSpec, df: pd.DataFrame) -> str:
    """A `table` environment (booktabs) that compiles inside any document loading booktabs."""
    data = table_data(table, spec, df)
    tx = (lambda s: s) if table.raw_latex else escape
    n_lead = 1 + len(table.info)
    lines = [r"\begin{table}[t]", r"\centering"]
    if table.caption:
        lines.append(rf"\caption{{{tx(table.caption)}}}")
    lines.append(rf"\label{{{table.label or 'tab:' + table.name}}}")
    lines.append(rf"\begin{{tabular}}{{{'l' * n_lead}{'c' * len(data.columns)}}}")
    lines.append(r"\toprule")

    # group header: adjacent blocks with the same group text share one \multicolumn
    spans: list[tuple[str, int, int]] = []  # (group, first col, last col), 1-based tabular columns
    for j, col in enumerate(data.columns):
        group = table.columns[col.block].group
        pos = n_lead + j + 1
        if spans and spans[-1][0] == group and spans[-1][2] == pos - 1:
            spans[-1] = (group, spans[-1][1], pos)
        else:
            spans.append((group, pos, pos))
    if any(g for g, _, _ in spans):
        cells = [""] * n_lead
        for group, a, b in spans:
            width = b - a + 1
            cells.append(rf"\multicolumn{{{width}}}{{c}}{{{tx(group)}}}" if group and width > 1 else tx(group))
        lines.append(" & ".join(cells) + r" \\")
        lines.append(" ".join(rf"\cmidrule(lr){{{a}-{b}}}" for g, a, b in spans if g))

    header = [tx(table.row_header), *(tx(h) for h in table.info.values())]
    for col in data.columns:
        arrow = {True: r" $\uparrow$", False: r" $\downarrow$", None: ""}[col.higher]
        header.append(tx(col.label) + arrow)
    lines.append(" & ".join(header) + r" \\")
    lines.append(r"\midrule")

    for i, row in enumerate(data.rows):
        if i > 0 and row.group != data.rows[i - 1].group:
            lines.append(r"\midrule")
        cells = [tx(row.label), *(tx(v) for v in row.info)]
        cells += [_cell(row, j, data.marks.get((i, j)), data.precision, table.show_std) for j in range(len(data.columns))]
        lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def wrap_document(inputs: list[str]) -> str:
    """A minimal document that \\input's the given table files (names relative to it) for compiling."""
    body = "\n".join(rf"\input{{{name}}}" for name in inputs)
    return "\n".join([
        r"\documentclass{article}",
        r"\usepackage[T1]{fontenc}",
        r"\usepackage{booktabs}",
        r"\usepackage[margin=2cm,landscape]{geometry}",
        r"\begin{document}",
        body,
        r"\end{document}",
        "",
    ])


def pdflatex() -> str | None:
    return shutil.which("pdflatex")


def compile_pdf(tex: str | Path, out_dir: str | Path | None = None, timeout: float = 120) -> Path:
    """Compile a .tex file with pdflatex (stops at the first error); returns the PDF path."""
    exe = pdflatex()
    if exe is None:
        raise RuntimeError("pdflatex is not installed (e.g. apt-get install texlive-latex-extra)")
    tex = Path(tex).resolve()
    out_dir = Path(out_dir or tex.parent).resolve()
    with tempfile.TemporaryDirectory() as build:
        proc = subprocess.run(
            [exe, "-interaction=nonstopmode", "-halt-on-error", f"-output-directory={build}", tex.name],
            cwd=tex.parent, capture_output=True, text=True, timeout=timeout,
        )
        pdf = Path(build) / (tex.stem + ".pdf")
        if proc.returncode != 0 or not pdf.exists():
            tail = "\n".join(proc.stdout.splitlines()[-25:])
            raise RuntimeError(f"pdflatex failed on {tex}:\n{tail}")
        out_dir.mkdir(parents=True, exist_ok=True)
        target = out_dir / pdf.name
        shutil.move(str(pdf), target)
    return target
