"""Booktabs LaTeX and GitHub-markdown tables from the long-form results, laid out as a report spec's `Table` says.

The runs of a row (its seeds) are averaged: per column the mean, the standard deviation (ddof 1) and
n; a cell reads `mean ± std` where its row has several runs (`show_std`). The caption states the
table's evaluation setting, over how many seeds the rows are averaged (a column `n` where rows differ
in it) and the rule of the marks. Rows scored under different evaluation settings are refused
(ReportError naming the rows and keys) unless the table declares the keys that differ: the `rows`
column, an `info` column, or `setting_varies` (a note under the table, a marker on each row).

Marks (`separation`): 'se' (default) makes the best row of a column bold only where its mean beats
every other row's by more than their combined standard error sqrt(se_a^2 + se_b^2), se = std/sqrt(n),
and underlines the second only where the best is bold and the second beats every row below it the same
way (equal printed means never do). Where a row of the column (in its rank scope) has a single run,
there is no standard error: that column falls back to 'rank', dense ranking on the printed numbers
(every tied row gets the mark, and 'second' is the next distinct value). Missing values print '--'.
"""
from __future__ import annotations

import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from reports.collect import (KEY_NAMES, SETTING_COLUMNS, canon, describe_setting, require_column, runs_table,
                             select_runs, sort_key, unit_ids, warn)
from reports.spec import Columns, ReportError, ReportSpec, Table, tuning_sentence

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
    units: list[list[str]] = field(default_factory=list)  # per column: the (run, setting) units behind the mean
    note: str = ""  # marker of the note giving this row's evaluation setting ('a', 'b', ...), if any


@dataclass
class TableData:
    columns: list[Column]
    rows: list[Row]
    marks: dict[tuple[int, int], str]  # (row, column) -> 'best' | 'second'
    precision: int
    setting: str = ""  # plain-text sentence: the evaluation setting of the table
    notes: list[tuple[str, str]] = field(default_factory=list)  # (marker, plain-text setting) under the table
    rules: set[str] = field(default_factory=set)  # mark rules applied: 'se', 'rank', 'fallback' (rank for single runs)
    show_std: bool = True
    show_n: bool = False  # rows differ in n: a column n
    tuning: str = ""  # plain-text sentence: the tuning budget of the rows (the sweep's tuning record)


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
    """The numbers of a table (mean, std and n over each row's runs, scaled), the checks of its
    evaluation setting, and where the marks go."""
    where = f"report table {table.name!r}"
    precision = spec.precision if table.precision is None else table.precision
    columns = _columns(table, spec)
    df = df.assign(unit=unit_ids(df))

    # value of every (run x setting, column); units without it are simply absent
    index = ["benchmark", "subset", "task", "metric"]
    wanted = pd.DataFrame([[c.benchmark, c.subset, c.task, c.metric] for c in columns], columns=index)
    hits = df.merge(wanted.drop_duplicates(), on=index)
    values = hits.groupby(["unit", *index])["value"].mean()
    runs = runs_table(hits)  # the units with a value in some column of this table
    for key in table.info:
        require_column(runs, key, f"{where}: info")
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
                v = np.array([values.get((u, c.benchmark, c.subset, c.task, c.metric), np.nan) for u in ids], float)
                have = ~np.isnan(v)
                v = v[have] * c.scale
                if 0 < len(v) < len(ids):
                    warn(f"{where}: row {row.label!r}: only {len(v)} of {len(ids)} runs have {c.benchmark}/{c.task}/{c.metric}")
                row.mean.append(float(v.mean()) if len(v) else np.nan)
                row.std.append(float(v.std(ddof=1)) if len(v) > 1 else np.nan)
                row.n.append(len(v))
                row.units.append([u for u, h in zip(ids, have) if h])
            rows.append(row)
    setting, notes = _settings(table, columns, rows, runs, where)
    marks, rules = _marks(table, columns, rows, precision)
    ns = {n for r in rows for n in r.n if n > 0}
    return TableData(columns, rows, marks, precision, setting, notes, rules, show_std=table.show_std is not False,
                     show_n=len(ns) > 1, tuning=tuning_sentence(spec.tuning))


def _check_mixed(runs: pd.DataFrame, rows_key: str, key: str, where: str) -> None:
    """Warn when the runs averaged into one row differ in more than their seeds (their evaluation
    settings are checked by _settings; '@run' references differ per seed by construction)."""
    if len(runs) < 2:
        return
    skip = {"unit", "run_id", rows_key, "name", *SETTING_COLUMNS}
    differ = [c for c in runs.columns if c not in skip and c.rsplit(".", 1)[-1] != "seed"
              and runs[c].map(canon).nunique() > 1
              and not (c == "train.init_from" and runs[c].map(lambda v: str(v).startswith("@")).all())]
    if differ:
        warn(f"{where}: row {key!r} averages {len(runs)} runs that differ in {', '.join(differ)}; "
              "narrow it with `where` or pick another `rows` column")


# ---------------------------------------------------------------------------------------------
# the evaluation setting


def _listing(values: dict[str, list[str]]) -> str:
    """'4.5 (SFT), 1 (SFT + RL, Ours)' from {value: [labels]}."""
    return ", ".join(f"{v} ({', '.join(labels)})" for v, labels in values.items())


def _differs(key: str, settings: Any) -> bool:
    """Whether the settings differ in `key`; a benchmark config not recorded (results written before it was)
    matches any."""
    values = {s[key] for s in settings}
    return len(values - {"null"} if key == "eval.benchmark_config" else values) > 1


def _settings(table: Table, columns: list[Column], rows: list[Row], runs: pd.DataFrame,
              where: str) -> tuple[str, list[tuple[str, str]]]:
    """Refuse rows compared under different evaluation settings, unless the table declares the keys that
    differ; return the caption's setting sentence and the notes (marker, setting) of `setting_varies`
    keys, setting each row's `note` marker."""
    keys = [k for k in SETTING_COLUMNS if k in runs.columns]
    rows_keys = {g.rows for g in table.groups()}
    declared = set(table.info) | set(table.setting_varies) | rows_keys
    per_bench: dict[str, dict[int, dict[str, str]]] = {}
    for bench in dict.fromkeys(c.benchmark for c in columns):
        js = [j for j, c in enumerate(columns) if c.benchmark == bench]
        settings: dict[int, dict[str, str]] = {}
        for i, row in enumerate(rows):
            units = sorted({u for j in js for u in row.units[j]})
            if not units:
                continue
            of = {u: {k: canon(runs.at[u, k]) for k in keys} for u in units}
            differ = [k for k in keys if _differs(k, of.values())]
            if differ:
                detail = "; ".join(f"{k} = " + _listing({v: sorted({f"run {runs.at[u, 'run_id']}" for u in units
                                                                     if of[u][k] == v})
                                                         for v in dict.fromkeys(of[u][k] for u in units)})
                                   for k in differ)
                raise ReportError(f"{where}: row {row.label!r} averages results scored under different evaluation "
                                  f"settings on {bench}: {detail}; keep one with `where: {{{differ[0]}: ...}}` or make "
                                  f"them rows (`rows: {differ[0]}`)")
            settings[i] = of[units[0]]
        per_bench[bench] = settings
        undeclared = [k for k in keys if k not in declared and _differs(k, settings.values())]
        if undeclared:
            detail = "; ".join(f"{k} = " + _listing({v: [rows[i].label for i, s in settings.items() if s[k] == v]
                                                     for v in dict.fromkeys(s[k] for s in settings.values())})
                               for k in undeclared)
            k = undeclared[0]
            how = "key=value ..." if k == "eval.benchmark_config" else f"{k}=..."
            raise ReportError(
                f"{where}: rows were scored under different evaluation settings on {bench}: {detail}. Score them "
                f"under one (python -m harness.evaluate --run RUN --benchmark {bench} {how}) and keep it with "
                f"`where: {{{k}: ...}}`, or say how they differ: `info: {{{k}: ...}}` (a column) or "
                f"`setting_varies: [{k}]` (a note)")

    # the caption's sentence: per benchmark, the keys all rows share, and how the others are shown
    def how(k: str) -> str:
        if k in table.info:
            return f"{KEY_NAMES[k]} (column {table.info[k]})"
        return f"{KEY_NAMES[k]} ({'the rows' if k in rows_keys else 'notes'})"

    clauses: dict[str, str] = {}
    noted: dict[str, list[str]] = {}
    for bench, settings in per_bench.items():
        if not settings:
            continue
        varying = [k for k in keys if _differs(k, settings.values())]
        shared = {k: next(iter(settings.values()))[k] for k in keys if k not in varying}
        text = describe_setting(shared)
        shown = [how(k) for k in varying if k != "eval.benchmark_config" or k in table.info]
        if shown:
            text += ("; " if text else "") + "differing between rows: " + ", ".join(shown)
        clauses[bench] = text
        noted[bench] = [k for k in varying if k not in table.info and k not in rows_keys]
    texts = set(clauses.values())
    if not texts or texts == {""}:
        sentence = ""
    elif len(texts) == 1:
        sentence = f"Evaluation setting: {texts.pop()}."
    else:
        sentence = "Evaluation setting: " + "; ".join(f"on {b}: {t}" for b, t in clauses.items() if t) + "."

    # notes: one marker per distinct combination of the noted keys' values
    notes: list[tuple[str, str]] = []
    by_text: dict[str, str] = {}
    many = sum(bool(v) for v in noted.values()) > 1
    for i, row in enumerate(rows):
        parts = []
        for bench, ks in noted.items():
            s = per_bench[bench].get(i)
            if ks and s is not None:
                part = ", ".join(f"{KEY_NAMES[k]} {s[k]}" if k != "eval.sampler" else f"{s[k]} sampler" for k in ks)
                parts.append(f"{bench}: {part}" if many else part)
        if not parts:
            continue
        text = "; ".join(parts)
        if text not in by_text:
            by_text[text] = "abcdefghijklmnopqrstuvwxyz"[len(by_text) % 26]
            notes.append((by_text[text], text))
        row.note = by_text[text]
    return sentence, notes


# ---------------------------------------------------------------------------------------------
# marks


def _marks(table: Table, columns: list[Column], rows: list[Row], precision: int) -> tuple[dict[tuple[int, int], str], set[str]]:
    marks: dict[tuple[int, int], str] = {}
    rules: set[str] = set()
    if table.rank == "none":
        return marks, rules
    scopes = [[i for i, r in enumerate(rows) if r.rank]]
    if table.rank == "group":
        scopes = [[i for i in scopes[0] if rows[i].group == g] for g in sorted({r.group for r in rows})]
    for j, col in enumerate(columns):
        if col.higher is None:
            continue
        for scope in scopes:
            present = [i for i in scope if not np.isnan(rows[i].mean[j])]
            if len(present) < 2:
                continue
            if table.separation == "se" and all(rows[i].n[j] >= 2 for i in present):
                rules.add("se")
                marks.update(_separated(rows, present, j, col.higher, precision))
            else:
                rules.add("rank" if table.separation == "rank" else "fallback")
                marks.update(_ranked(rows, present, j, col.higher, precision))
    return marks, rules


def _ranked(rows: list[Row], present: list[int], j: int, higher: bool, precision: int) -> dict[tuple[int, int], str]:
    """Dense ranking on the printed numbers: ties share a mark; 'second' is the next distinct value."""
    shown = {i: float(_display(rows[i].mean[j], precision)) for i in present}
    distinct = sorted(set(shown.values()), reverse=higher)
    out = {}
    for i, x in shown.items():
        if x == distinct[0]:
            out[(i, j)] = "best"
        elif len(distinct) > 1 and x == distinct[1]:
            out[(i, j)] = "second"
    return out


def separated(a: tuple[float, float, int], b: tuple[float, float, int], higher: bool) -> bool:
    """Whether mean a beats mean b (each (mean, std, n), n >= 2) by more than their combined standard
    error sqrt(std_a^2/n_a + std_b^2/n_b)."""
    (ma, sa, na), (mb, sb, nb) = a, b
    return (ma - mb if higher else mb - ma) > float(np.sqrt(sa**2 / na + sb**2 / nb))


def _separated(rows: list[Row], present: list[int], j: int, higher: bool, precision: int) -> dict[tuple[int, int], str]:
    order = sorted(present, key=lambda i: rows[i].mean[j], reverse=higher)

    def beats(a: int, b: int) -> bool:
        if _display(rows[a].mean[j], precision) == _display(rows[b].mean[j], precision):
            return False
        return separated((rows[a].mean[j], rows[a].std[j], rows[a].n[j]),
                         (rows[b].mean[j], rows[b].std[j], rows[b].n[j]), higher)

    out = {}
    if all(beats(order[0], o) for o in order[1:]):
        out[(order[0], j)] = "best"
        if all(beats(order[1], o) for o in order[2:]):
            out[(order[1], j)] = "second"
    return out


# ---------------------------------------------------------------------------------------------
# rendering


_RULE = {
    "se": ("Bold: best, underlined: second best; a row is marked only where its mean beats every row ranked "
           "below it by more than their combined standard error {sqrt} ({se}), the second only where the best "
           "is marked."),
    "rank": "Bold: best, underlined: second best, by the printed value.",
    "fallback": "Bold: best, underlined: second best, by the printed value (single runs: no test of separation).",
    "mixed": "Columns with a single-run row: marked by the printed value.",
}
_RULE_MATH = {
    "latex": {"sqrt": r"$\sqrt{\mathrm{se}_1^2+\mathrm{se}_2^2}$", "se": r"$\mathrm{se}=\mathrm{std}/\sqrt{n}$"},
    "markdown": {"sqrt": "√(se₁² + se₂²)", "se": "se = std/√n"},
}


def _rule_text(rules: set[str], fmt: str) -> str:
    if "se" in rules:
        text = _RULE["se"].format(**_RULE_MATH[fmt])
        return text + (" " + _RULE["mixed"] if "fallback" in rules else "")
    if "rank" in rules:
        return _RULE["rank"]
    return _RULE["fallback"] if "fallback" in rules else ""


def _seeds_text(data: TableData, pm: str) -> str:
    ns = {n for r in data.rows for n in r.n if n > 0}
    if not ns:
        return ""
    if max(ns) == 1:
        return "One run (seed) per row." if len(data.rows) > 1 else ""
    what = f"Mean {pm} standard deviation" if data.show_std else "Mean"
    return f"{what} over {ns.pop()} seeds." if len(ns) == 1 else f"{what} over the seeds of each row (column n)."


def _auto_caption(data: TableData, fmt: str) -> list[str]:
    """The generated sentences of the caption: evaluation setting, seeds, rule of the marks (plain text;
    LaTeX-escaped for fmt 'latex')."""
    tx = escape if fmt == "latex" else _md_escape
    pm = r"$\pm$" if fmt == "latex" else "±"
    return [t for t in (tx(data.setting), _seeds_text(data, pm), tx(data.tuning), _rule_text(data.rules, fmt)) if t]


def _cell(row: Row, j: int, mark: str | None, precision: int, show_std: bool, fmt: str = "latex") -> str:
    mean = row.mean[j]
    if np.isnan(mean):
        return "--"
    text = _display(mean, precision)
    if mark == "best":
        text = rf"\textbf{{{text}}}" if fmt == "latex" else f"**{text}**"
    elif mark == "second":
        text = rf"\underline{{{text}}}" if fmt == "latex" else f"<ins>{text}</ins>"
    if show_std and row.n[j] > 1:
        text += (r" $\pm$ " if fmt == "latex" else " ± ") + _display(row.std[j], precision)
    return text


def _n_cell(row: Row) -> str:
    ns = sorted({n for n in row.n if n > 0})
    return "--" if not ns else str(ns[0]) if len(ns) == 1 else f"{ns[0]}-{ns[-1]}"


def render_table(table: Table, spec: ReportSpec, df: pd.DataFrame, data: TableData | None = None) -> str:
    """A `table` environment (booktabs) that compiles inside any document loading booktabs."""
    data = data or table_data(table, spec, df)
    tx = (lambda s: s) if table.raw_latex else escape
    n_lead = 1 + len(table.info) + data.show_n
    lines = [r"\begin{table}[t]", r"\centering"]
    caption = " ".join(([tx(table.caption)] if table.caption else []) + _auto_caption(data, "latex"))
    if caption:
        lines.append(rf"\caption{{{caption}}}")
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

    header = [tx(table.row_header), *(tx(h) for h in table.info.values()), *(["n"] if data.show_n else [])]
    for col in data.columns:
        arrow = {True: r" $\uparrow$", False: r" $\downarrow$", None: ""}[col.higher]
        header.append(tx(col.label) + arrow)
    lines.append(" & ".join(header) + r" \\")
    lines.append(r"\midrule")

    for i, row in enumerate(data.rows):
        if i > 0 and row.group != data.rows[i - 1].group:
            lines.append(r"\midrule")
        label = tx(row.label) + (rf"\textsuperscript{{{row.note}}}" if row.note else "")
        cells = [label, *(tx(v) for v in row.info), *([_n_cell(row)] if data.show_n else [])]
        cells += [_cell(row, j, data.marks.get((i, j)), data.precision, data.show_std) for j in range(len(data.columns))]
        lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    if data.notes:
        notes = r" \quad ".join(rf"\textsuperscript{{{m}}}{escape(t)}" for m, t in data.notes)
        lines += [r"\par\smallskip", rf"{{\footnotesize {notes}}}"]
    lines.append(r"\end{table}")
    return "\n".join(lines) + "\n"


_MD_SPECIAL = set("\\`*_[]<>|#")


def _md_escape(text: str) -> str:
    return "".join("\\" + ch if ch in _MD_SPECIAL else ch for ch in str(text))


def render_markdown(table: Table, spec: ReportSpec, df: pd.DataFrame, data: TableData | None = None) -> str:
    """The table in GitHub markdown (for READMEs): caption, table, notes; bold = best, <ins> = second."""
    data = data or table_data(table, spec, df)
    tx = (lambda s: s) if table.raw_latex else _md_escape
    lines = []
    caption = " ".join(([f"**{tx(table.caption)}**"] if table.caption else []) + _auto_caption(data, "markdown"))
    if caption:
        lines += [caption, ""]
    header = [tx(table.row_header), *(tx(h) for h in table.info.values()), *(["n"] if data.show_n else [])]
    for col in data.columns:
        group = table.columns[col.block].group
        arrow = {True: " ↑", False: " ↓", None: ""}[col.higher]
        header.append((f"{tx(group)}: " if group else "") + tx(col.label) + arrow)
    n_lead = 1 + len(table.info) + data.show_n
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join([" --- "] * n_lead + [" ---: "] * len(data.columns)) + "|")
    for i, row in enumerate(data.rows):
        label = tx(row.label) + (f"<sup>{row.note}</sup>" if row.note else "")
        cells = [label, *(tx(v) for v in row.info), *([_n_cell(row)] if data.show_n else [])]
        cells += [_cell(row, j, data.marks.get((i, j)), data.precision, data.show_std, "markdown")
                  for j in range(len(data.columns))]
        lines.append("| " + " | ".join(cells) + " |")
    if data.notes:
        lines += ["", " ".join(f"<sup>{m}</sup> {_md_escape(t)}." for m, t in data.notes)]
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
