"""Build a sweep's report: results table, LaTeX tables and figures.

    python -m reports.build RUNS_DIR [--spec FILE] [--out DIR] [--pdf]

The spec is the `report:` key of RUNS_DIR/sweep.yaml, or of FILE. Writes into DIR (default
RUNS_DIR/report/): results.csv and results.parquet (the long-form table of reports.collect, with the
evaluation setting of every result in its eval.* columns), counts.csv (samples scored / failed /
missing per task), <table>.tex and <table>.md (GitHub markdown) per table, tables.tex (a document
that inputs them all, for compiling), <plot>.pdf and <plot>.png per plot.

A table whose rows were scored under different evaluation settings, without the spec saying how
they differ, is refused (error naming the rows and keys; see reports.spec).
"""
from __future__ import annotations

import argparse
import sys
import warnings
from collections import Counter
from pathlib import Path

import pandas as pd

from harness.config import ConfigError
from harness.runstore import RunDir, atomic_path, atomic_write_text
from reports.collect import ReportWarning, collect, collect_counts, run_dirs, warn
from reports.figures import write_plot
from reports.latex import compile_pdf, render_markdown, render_table, table_data, wrap_document
from reports.spec import ReportError, ReportSpec, load_spec, spec_from_dict


class NoResultsError(RuntimeError):
    """No run of the sweep has finished yet."""


def run_states(runs_dir: str | Path) -> Counter:
    return Counter(RunDir(p).read_status().get("state", "todo") for p in run_dirs(runs_dir))


def _parquet_safe(df: pd.DataFrame) -> pd.DataFrame:
    """Config columns holding values of several types (a key that is a number in one run, text in
    another) are written as text: parquet columns have one type."""
    out = df.copy()
    for c in out.columns:
        if out[c].dtype == object and len({type(v) for v in out[c].dropna()}) > 1:
            out[c] = out[c].map(lambda v: v if v is None or v != v else str(v))
    return out


def write_results(df: pd.DataFrame, out: Path) -> list[Path]:
    csv, parquet = out / "results.csv", out / "results.parquet"
    with atomic_path(csv) as tmp:
        df.to_csv(tmp, index=False)
    with atomic_path(parquet) as tmp:
        _parquet_safe(df).to_parquet(tmp, index=False)
    return [csv, parquet]


def build_report(
    runs_dir: str | Path,
    spec: ReportSpec | dict | str | Path | None = None,
    out: str | Path | None = None,
    *,
    pdf: bool = False,
) -> list[Path]:
    """Write the report of the finished runs under `runs_dir`; returns the files written.

    `spec`: a ReportSpec, the mapping under a `report:` key, a YAML file with a `report:` key, or None
    for RUNS_DIR/sweep.yaml's (without one, only the results table is written).
    Raises NoResultsError when no run is done, ConfigError/ReportError for a bad spec.
    """
    runs_dir = Path(runs_dir)
    out = Path(out) if out is not None else runs_dir / "report"
    if spec is None:
        spec = load_spec(runs_dir / "sweep.yaml", required=False) or ReportSpec()
    elif isinstance(spec, dict):
        spec = spec_from_dict(spec, source="section 'report'")
    elif not isinstance(spec, ReportSpec):
        spec = load_spec(spec)

    df = collect(runs_dir)
    if df.empty:
        states = run_states(runs_dir)
        summary = ", ".join(f"{n} {s}" for s, n in sorted(states.items())) or "no run folders"
        raise NoResultsError(f"{runs_dir}: no finished run with results yet ({summary}); nothing to report")

    out.mkdir(parents=True, exist_ok=True)
    written = write_results(df, out)
    counts = collect_counts(runs_dir)
    path = out / "counts.csv"
    with atomic_path(path) as tmp:
        counts.to_csv(tmp, index=False)
    written.append(path)
    bad = counts[(counts.failed > 0) | (counts.missing > 0)]
    if len(bad):
        worst = bad.groupby(["run_id", "benchmark", "subset"])[["failed", "missing"]].sum().reset_index()
        lines = "; ".join(f"{r.run_id} {r.benchmark}/{r.subset}: {r.failed} failed, {r.missing} missing"
                          for r in worst.itertuples())
        warn(f"some samples were not scored ({lines}); see {path}")

    tables = []
    for table in spec.tables:
        data = table_data(table, spec, df)
        for path, text in ((out / f"{table.name}.tex", render_table(table, spec, df, data)),
                           (out / f"{table.name}.md", render_markdown(table, spec, df, data))):
            atomic_write_text(path, text)
            written.append(path)
        tables.append(table.name)
    if tables:
        path = out / "tables.tex"
        atomic_write_text(path, wrap_document(tables))
        written.append(path)
        if pdf:
            written.append(compile_pdf(path))
    for plot in spec.plots:
        written += write_plot(plot, df, out)
    return written


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    where = "" if issubclass(category, ReportWarning) else f" ({category.__name__}, {filename}:{lineno})"
    print(f"warning: {message}{where}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m reports.build", description=__doc__.split("\n\n")[0])
    ap.add_argument("runs_dir", type=Path, help="the sweep's runs folder (holds <run_id>/ and sweep.yaml)")
    ap.add_argument("--spec", type=Path, help="YAML file whose `report:` key is the spec (default: RUNS_DIR/sweep.yaml)")
    ap.add_argument("--out", type=Path, help="output folder (default: RUNS_DIR/report)")
    ap.add_argument("--pdf", action="store_true", help="also compile tables.tex with pdflatex")
    args = ap.parse_args(argv)
    with warnings.catch_warnings():
        warnings.simplefilter("always", ReportWarning)
        warnings.showwarning = _show_warning
        try:
            paths = build_report(args.runs_dir, args.spec, args.out, pdf=args.pdf)
        except (NoResultsError, ConfigError, ReportError, FileNotFoundError, RuntimeError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
    states = run_states(args.runs_dir)
    print(f"{args.runs_dir}: " + ", ".join(f"{n} {s}" for s, n in sorted(states.items())))
    for p in paths:
        print(f"wrote {p}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
