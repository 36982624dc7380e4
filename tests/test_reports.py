"""reports: collecting run results, the report spec, LaTeX tables and figures."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from matplotlib.colors import to_hex, to_rgb
from PIL import Image

from harness.config import ConfigError
from reports.build import NoResultsError, build_report, main
from reports.collect import ReportWarning, collect, collect_counts
from reports.figures import METHOD_COLORS, draw_plot, method_color, write_plot
from reports.latex import compile_pdf, escape, pdflatex, render_table, table_data
from reports.spec import Plot, ReportError, load_spec, spec_from_dict


def write_run(root: Path, run_id: str, *, method: str, seed: int = 0, fraction: float = 1.0, critic: str = "large",
              metrics: dict | None = None, per_task: dict | None = None, counts: dict | None = None,
              extra: list | None = None, steps: int = 4) -> Path:
    run = root / run_id
    run.mkdir(parents=True)
    config = {"method": {"name": method, "lambda_vlm": 0.01}, "model": {"critic": {"name": "toy_llava", "size": critic}},
              "data": {"fraction": fraction, "edit_types": []}, "train": {"betas": [0.0, 0.9]},
              "eval": {"steps": steps}, "seed": seed, "name": ""}
    (run / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    if metrics is None:
        (run / "status").write_text(json.dumps({"state": "running"}))
        return run
    (run / "status").write_text(json.dumps({"state": "done"}))
    results = [{"benchmark": "shapes_edit", "subset": "all", "metrics": metrics, "per_task": per_task or {},
                "counts": counts or {}, "meta": {"judge": "exact"}}] + (extra or [])
    (run / "result.json").write_text(json.dumps({"run_id": run_id, "finished": "2025-01-01T00:00:00", "results": results}))
    return run


@pytest.fixture
def ablation(tmp_path: Path) -> Path:
    """Four methods on shapes-edit; np_edit with two seeds. Numbers chosen so that, x10 and at 2 decimals:
    PQ ties (7.60) between Ours and DMD, LPIPS (lower is better) is best for DMD."""
    root = tmp_path / "sweep"
    write_run(root, "np0", method="np_edit", seed=0, metrics={"SC": 0.61, "PQ": 0.77, "O": 0.61, "LPIPS": 0.20},
              per_task={"color": {"O": 0.70}, "remove": {"O": 0.60}},
              counts={"color": {"n": 4, "scored": 4, "failed": 0, "missing": 0},
                      "remove": {"n": 4, "scored": 2, "failed": 1, "missing": 1}})
    write_run(root, "np1", method="np_edit", seed=1, metrics={"SC": 0.63, "PQ": 0.75, "O": 0.62, "LPIPS": 0.22},
              per_task={"color": {"O": 0.72}, "remove": {"O": 0.62}})
    write_run(root, "dmd", method="dmd_only", metrics={"SC": 0.49, "PQ": 0.76, "O": 0.49, "LPIPS": 0.15},
              per_task={"color": {"O": 0.71}, "remove": {"O": 0.10}})
    write_run(root, "vlm", method="vlm_only", metrics={"SC": 0.20, "PQ": 0.35, "O": 0.19, "LPIPS": 0.50},
              per_task={"color": {"O": 0.30}, "remove": {"O": 0.40}})
    write_run(root, "todo", method="np_edit_ce")  # not finished: no result.json
    return root


TABLE = {
    "name": "loss_ablation",
    "caption": "Training objective ablation (x10) on shapes_edit: 100% & more.",
    "scale": 10,
    "row_order": ["np_edit", "dmd_only", "vlm_only", "sft"],
    "row_labels": {"np_edit": "Ours", "dmd_only": "w/ only DMD", "vlm_only": "w/ only VLM & 100% #1"},
    "columns": [
        {"group": "Shapes-Edit", "benchmark": "shapes_edit", "metrics": ["SC", "PQ", "O", "LPIPS"],
         "labels": {"SC": "SC Score", "O": "Overall"}},
        {"group": "Per type", "benchmark": "shapes_edit", "task": ["color", "remove"], "metrics": ["O"],
         "labels": {"color": "Color", "remove": "Removal"}},
    ],
}


def body_rows(tex: str) -> list[str]:
    body = tex.split("\\midrule\n", 1)[1].split("\\bottomrule")[0]
    return [line for line in body.strip().splitlines()]


# ---------------------------------------------------------------------------------------------
# collect


def test_collect_rows_values_and_config_columns(ablation: Path) -> None:
    df = collect(ablation)
    # 4 finished runs x (4 overall metrics + 2 tasks x 1 metric); the running one is left out
    assert len(df) == 4 * 6
    assert sorted(df.run_id.unique()) == ["dmd", "np0", "np1", "vlm"]
    assert list(df.columns[:6]) == ["run_id", "benchmark", "subset", "task", "metric", "value"]
    for col in ["method.name", "method.lambda_vlm", "data.fraction", "model.critic.size", "eval.steps", "seed", "name"]:
        assert col in df.columns
    row = df[(df.run_id == "np1") & (df.task == "all") & (df.metric == "LPIPS")]
    assert row.value.tolist() == [0.22] and row["method.name"].tolist() == ["np_edit"] and row.seed.tolist() == [1]
    per_task = df[(df.run_id == "dmd") & (df.task != "all")].set_index("task").value
    assert per_task.to_dict() == {"color": 0.71, "remove": 0.10}
    assert df["train.betas"].iloc[0] == "[0.0, 0.9]"  # lists become JSON text (hashable, parquet-safe)

    counts = collect_counts(ablation)
    rem = counts[(counts.run_id == "np0") & (counts.task == "remove")].iloc[0]
    assert (rem.n, rem.scored, rem.failed, rem.missing) == (4, 2, 1, 1)


def test_collect_skips_and_warns_about_unreadable_results(ablation: Path) -> None:
    (ablation / "vlm" / "result.json").write_text("{not json")
    with pytest.warns(ReportWarning, match=r"vlm.*skipped"):
        df = collect(ablation)
    assert "vlm" not in set(df.run_id)
    assert len(df) == 3 * 6


# ---------------------------------------------------------------------------------------------
# LaTeX


def test_table_marks_precision_order_labels_and_groups(ablation: Path) -> None:
    spec = spec_from_dict({"tables": [TABLE]})
    tex = render_table(spec.tables[0], spec, collect(ablation))
    assert r"\caption{Training objective ablation (x10) on shapes\_edit: 100\% \& more.}" in tex
    assert r"\label{tab:loss_ablation}" in tex
    assert r"\begin{tabular}{lcccccc}" in tex
    assert r" & \multicolumn{4}{c}{Shapes-Edit} & \multicolumn{2}{c}{Per type} \\" in tex
    assert r"\cmidrule(lr){2-5} \cmidrule(lr){6-7}" in tex
    assert (r"Method & SC Score $\uparrow$ & PQ $\uparrow$ & Overall $\uparrow$ & LPIPS $\downarrow$ & "
            r"Color $\uparrow$ & Removal $\uparrow$ \\") in tex
    # Ours = mean of two seeds. PQ: 7.60 vs 7.60 tie -> both bold, 3.50 (next distinct) underlined.
    # LPIPS is lower-is-better: 1.50 bold, 2.10 underlined. Color: 7.10 (Ours) ties 7.10 (DMD).
    assert body_rows(tex) == [
        r"Ours & \textbf{6.20} & \textbf{7.60} & \textbf{6.15} & \underline{2.10} & \textbf{7.10} & \textbf{6.10} \\",
        r"w/ only DMD & \underline{4.90} & \textbf{7.60} & \underline{4.90} & \textbf{1.50} & \textbf{7.10} & 1.00 \\",
        r"w/ only VLM \& 100\% \#1 & 2.00 & \underline{3.50} & 1.90 & 5.00 & \underline{3.00} & \underline{4.00} \\",
        r"sft & -- & -- & -- & -- & -- & -- \\",
    ]


def test_table_std_precision_and_unscaled(ablation: Path) -> None:
    spec = spec_from_dict({"precision": 3, "tables": [{
        "name": "t", "show_std": True, "row_order": ["np_edit", "vlm_only"], "rank": "none",
        "columns": [{"benchmark": "shapes_edit", "metrics": ["O"]}]}]})
    rows = body_rows(render_table(spec.tables[0], spec, collect(ablation)))
    std = np.std([0.61, 0.62], ddof=1)
    assert rows == [rf"np\_edit & 0.615{{\scriptsize$\pm${std:.3f}}} \\", r"vlm\_only & 0.190 \\"]
    assert r"\multicolumn" not in render_table(spec.tables[0], spec, collect(ablation))  # no groups -> no header row


def test_row_groups_info_columns_and_rank_scopes(tmp_path: Path) -> None:
    root = tmp_path / "scale"
    o = {(0.01, "large"): 0.46, (0.5, "large"): 0.55, (1.0, "large"): 0.61, (1.0, "small"): 0.45}
    for i, ((frac, critic), v) in enumerate(o.items()):
        write_run(root, f"np{i}", method="np_edit", fraction=frac, critic=critic, metrics={"O": v})
    write_run(root, "sft", method="sft", metrics={"O": 0.36}, steps=28)
    write_run(root, "sftnp", method="sft_np_edit", metrics={"O": 0.70})
    table = {
        "name": "scale", "scale": 10, "info": {"eval.steps": "#Step"},
        "columns": [{"benchmark": "shapes_edit", "metrics": ["O"]}],
        "row_groups": [
            {"rows": "data.fraction", "where": {"method.name": "np_edit", "model.critic.size": "large"},
             "row_order": [0.01, 0.5, 1], "row_labels": {0.01: "1 % Dataset", 0.5: "50 % Dataset", 1: "100 % Dataset"}},
            {"rows": "model.critic.size", "where": {"method.name": "np_edit", "data.fraction": 1},
             "row_order": ["small", "large"], "row_labels": {"small": "LLaVA-S", "large": "LLaVA-L"}},
            {"where": {"method.name": ["sft", "sft_np_edit"]}, "row_order": ["sft", "sft_np_edit"],
             "row_labels": {"sft": "SFT", "sft_np_edit": "SFT + Ours"}, "rank": False},
        ],
    }
    spec = spec_from_dict({"tables": [table]})
    tex = render_table(spec.tables[0], spec, collect(root))
    assert r"Method & \#Step & O $\uparrow$ \\" in tex
    # the 100%/large run is in both of the first two groups; the third group (7.00, the highest) is not ranked
    assert body_rows(tex) == [
        r"1 \% Dataset & 4 & 4.60 \\",
        r"50 \% Dataset & 4 & \underline{5.50} \\",
        r"100 \% Dataset & 4 & \textbf{6.10} \\",
        r"\midrule",
        r"LLaVA-S & 4 & 4.50 \\",
        r"LLaVA-L & 4 & \textbf{6.10} \\",
        r"\midrule",
        r"SFT & 28 & 3.60 \\",
        r"SFT + Ours & 4 & 7.00 \\",
    ]
    # 6.10 appears twice (the same run) -> a tie for best; 5.50 is second
    data = table_data(spec.tables[0], spec, collect(root))
    assert data.marks == {(2, 0): "best", (4, 0): "best", (1, 0): "second"}

    grouped = spec_from_dict({"tables": [{**table, "rank": "group"}]})
    data = table_data(grouped.tables[0], grouped, collect(root))
    assert data.marks == {(2, 0): "best", (1, 0): "second", (4, 0): "best", (3, 0): "second"}


def test_table_errors_and_warnings(ablation: Path) -> None:
    df = collect(ablation)
    spec = spec_from_dict({"tables": [{"name": "t", "rows": "method.nmae", "columns": [{"benchmark": "shapes_edit", "metrics": ["O"]}]}]})
    with pytest.raises(ReportError, match=r"report table 't': rows: 'method.nmae'.*did you mean method.name"):
        render_table(spec.tables[0], spec, df)
    spec = spec_from_dict({"tables": [{"name": "t", "where": {"data.frac": 1}, "columns": [{"benchmark": "shapes_edit", "metrics": ["O"]}]}]})
    with pytest.raises(ReportError, match=r"where: 'data.frac'"):
        render_table(spec.tables[0], spec, df)
    # rows that average runs differing in more than the seed, and columns without results, are flagged
    spec = spec_from_dict({"tables": [{"name": "t", "rows": "model.critic.size",
                                       "columns": [{"benchmark": "shapes_edit", "metrics": ["O", "CLIP-T"]}]}]})
    with pytest.warns(ReportWarning) as record:
        tex = render_table(spec.tables[0], spec, df)
    messages = " | ".join(str(w.message) for w in record)
    assert "row 'large' averages 4 runs that differ in" in messages and "method.name" in messages
    assert "no results for shapes_edit/all/all/CLIP-T (metrics of shapes_edit: LPIPS, O, PQ, SC)" in messages
    assert body_rows(tex) == [r"large & 0.48 & -- \\"]  # one row: nothing to compare, no marks


def test_escape() -> None:
    assert escape(r"a_b & 10% $x$ #1 {y} ~ ^ \ <>|") == (
        r"a\_b \& 10\% \$x\$ \#1 \{y\} \textasciitilde{} \textasciicircum{} \textbackslash{} "
        r"\textless{}\textgreater{}\textbar{}")


@pytest.mark.skipif(pdflatex() is None, reason="pdflatex is not installed")
def test_built_tables_compile_with_pdflatex(ablation: Path, tmp_path: Path) -> None:
    sweep = {"report": {"tables": [TABLE, {**TABLE, "name": "std", "show_std": True, "info": {"name": "Name_x"}}]}}
    (ablation / "sweep.yaml").write_text(yaml.safe_dump(sweep, sort_keys=False))
    with pytest.warns(ReportWarning, match="1 failed, 1 missing"):
        written = build_report(ablation)
    wrapper = ablation / "report" / "tables.tex"
    assert wrapper in written
    assert r"\input{loss_ablation}" in wrapper.read_text() and r"\input{std}" in wrapper.read_text()
    pdf = compile_pdf(wrapper, tmp_path)
    assert pdf.read_bytes()[:5] == b"%PDF-"


# ---------------------------------------------------------------------------------------------
# figures


def _colors_of(fig) -> dict[str, str]:
    legend = fig.axes[0].get_legend()
    out = {}
    for text, handle in zip(legend.get_texts(), legend.legend_handles):
        color = handle.get_facecolor() if hasattr(handle, "get_height") else handle.get_color()
        out[text.get_text()] = to_hex(color)
    return out


def _png_has_color(path: Path, hex_color: str) -> bool:
    rgb = np.array(Image.open(path).convert("RGB"))
    target = np.round(np.array(to_rgb(hex_color)) * 255).astype(int)
    return bool((np.abs(rgb.astype(int) - target).sum(-1) == 0).any())


def test_figures_written_with_one_colour_per_method(ablation: Path, tmp_path: Path) -> None:
    df = collect(ablation)
    bar = Plot(name="per_type", kind="bar", benchmark="shapes_edit", metric="O", x="task", scale=10,
               hue_labels={"np_edit": "Ours"}, x_labels={"remove": "Removal"})
    line = Plot(name="by_fraction", kind="line", benchmark="shapes_edit", metric="SC", x="data.fraction",
                hue_order=["vlm_only", "np_edit", "dmd_only"])
    for plot in (bar, line):
        paths = write_plot(plot, df, tmp_path)
        assert [p.name for p in paths] == [f"{plot.name}.pdf", f"{plot.name}.png"]
        assert paths[0].read_bytes()[:5] == b"%PDF-"
        Image.open(paths[1]).verify()

    expected = {"Ours": METHOD_COLORS["np_edit"], "dmd_only": METHOD_COLORS["dmd_only"], "vlm_only": METHOD_COLORS["vlm_only"]}
    assert _colors_of(draw_plot(bar, df)) == expected
    assert _colors_of(draw_plot(line, df)) == {("np_edit" if k == "Ours" else k): v for k, v in expected.items()}
    assert len(set(expected.values())) == 3
    # every method's colour is really drawn, in both files
    for name in ("per_type", "by_fraction"):
        for color in expected.values():
            assert _png_has_color(tmp_path / f"{name}.png", color), (name, color)
    # bars: per task, one bar per method with the method's colour and the mean over seeds as height
    ax = draw_plot(bar, df).axes[0]
    bars = {(round(p.get_x() + p.get_width() / 2), to_hex(p.get_facecolor())): p.get_height()
            for p in ax.patches if p.get_height() > 0}
    assert ax.get_xticklabels()[1].get_text() == "Removal"
    assert bars[(0, METHOD_COLORS["np_edit"])] == pytest.approx(7.1)
    assert bars[(1, METHOD_COLORS["dmd_only"])] == pytest.approx(1.0)


def test_method_colours_are_fixed_and_fallbacks_deterministic() -> None:
    assert len(set(METHOD_COLORS.values())) == len(METHOD_COLORS) == 10
    assert method_color("np_edit") == METHOD_COLORS["np_edit"]
    assert method_color("my_method") == method_color("my_method")
    assert method_color("my_method") != method_color("my_method_2")
    assert re.fullmatch(r"#[0-9a-f]{6}", method_color("my_method"))


# ---------------------------------------------------------------------------------------------
# spec


def test_spec_errors_name_file_and_key(tmp_path: Path) -> None:
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({"report": {"tables": [{"name": "t", "colums": []}]}}))
    with pytest.raises(ConfigError) as e:
        load_spec(path)
    msg = str(e.value)
    assert str(path) in msg and "'tables[0].colums'" in msg and "allowed keys here:" in msg and "columns" in msg

    path.write_text(yaml.safe_dump({"report": {"plots": [{"name": "p", "kind": "pie", "benchmark": "b", "metric": "O"}]}}))
    with pytest.raises(ConfigError, match=r"'plots\[0\].kind': 'pie' is not allowed; allowed: 'bar', 'line'"):
        load_spec(path)
    path.write_text(yaml.safe_dump({"report": {"tables": [{"name": "t", "columns": [{"metrics": ["O"]}]}]}}))
    with pytest.raises(ConfigError, match="'benchmark' is required"):
        load_spec(path)
    path.write_text(yaml.safe_dump({"report": {"tables": [{"name": "a b", "columns": [{"benchmark": "x", "metrics": ["O"]}]}]}}))
    with pytest.raises(ConfigError, match="table name 'a b'"):
        load_spec(path)
    path.write_text(yaml.safe_dump({"grid": {}}))
    with pytest.raises(ConfigError, match="no 'report' key"):
        load_spec(path)
    assert load_spec(path, required=False) is None


def test_spec_defaults_and_directions() -> None:
    spec = spec_from_dict({"higher_is_better": {"LPIPS": True, "Mine": False}})
    assert spec.higher("SC") is True and spec.higher("LPIPS") is True and spec.higher("Mine") is False
    assert spec.higher("unknown") is None and spec_from_dict(None).precision == 2


# ---------------------------------------------------------------------------------------------
# build


def test_build_cli_writes_everything(ablation: Path, tmp_path: Path, capsys) -> None:
    spec_file = tmp_path / "other.yaml"
    spec_file.write_text(yaml.safe_dump({"report": {"tables": [TABLE], "plots": [
        {"name": "per_type", "benchmark": "shapes_edit", "metric": "O"}]}}))
    out = tmp_path / "out"
    assert main([str(ablation), "--spec", str(spec_file), "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "warning: some samples were not scored (np0 shapes_edit/all: 1 failed, 1 missing)" in captured.err
    printed = captured.out
    assert "4 done, 1 running" in printed
    names = sorted(p.name for p in out.iterdir())
    assert names == ["counts.csv", "loss_ablation.tex", "per_type.pdf", "per_type.png", "results.csv",
                     "results.parquet", "tables.tex"]
    for name in names:
        assert f"wrote {out / name}" in printed
    csv = pd.read_csv(out / "results.csv")
    parquet = pd.read_parquet(out / "results.parquet")
    assert len(csv) == len(parquet) == 24
    assert sorted(parquet.value) == pytest.approx(sorted(collect(ablation).value))


def test_build_without_finished_runs(tmp_path: Path, capsys) -> None:
    root = tmp_path / "sweep"
    write_run(root, "a", method="np_edit")
    write_run(root, "b", method="sft")
    with pytest.raises(NoResultsError, match=r"no finished run with results yet \(2 running\)"):
        build_report(root)
    assert main([str(root)]) == 1
    assert "no finished run" in capsys.readouterr().err


def test_build_report_takes_the_sweeps_report_mapping(ablation: Path, tmp_path: Path) -> None:
    """harness.sweep passes the raw `report:` mapping of the sweep file."""
    with pytest.warns(ReportWarning):
        paths = build_report(ablation, spec={"tables": [TABLE]}, out=tmp_path / "r")
    assert tmp_path / "r" / "loss_ablation.tex" in paths
    with pytest.raises(ConfigError, match=r"section 'report': key 'tables\[0\].rowz': unknown key"):
        build_report(ablation, spec={"tables": [{**TABLE, "rowz": "seed"}]}, out=tmp_path / "r")
