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
from reports.latex import compile_pdf, escape, pdflatex, render_markdown, render_table, table_data
from reports.spec import Plot, ReportError, load_spec, spec_from_dict


def setting_meta(sampler: str = "few_step", steps: int = 4, guidance: float = 1.0, eval_seed: int = 0) -> dict:
    """The evaluation setting as harness.evaluate records it in a result's meta."""
    return {"sampling": {"sampler": sampler, "steps": steps, "guidance": guidance}, "eval_seed": eval_seed,
            "benchmark_config": "c0ffee"}


def write_run(root: Path, run_id: str, *, method: str, seed: int = 0, fraction: float = 1.0, critic: str = "large",
              metrics: dict | None = None, per_task: dict | None = None, counts: dict | None = None,
              extra: list | None = None, steps: int = 4, sampler: str = "few_step", guidance: float = 1.0,
              name: str = "") -> Path:
    run = root / run_id
    run.mkdir(parents=True)
    # the config's eval section says 'the method's own sampler' (as in real runs): the setting used is in the result
    config = {"method": {"name": method, "lambda_vlm": 0.01}, "model": {"critic": {"name": "toy_llava", "size": critic}},
              "data": {"fraction": fraction, "edit_types": []}, "train": {"betas": [0.0, 0.9]},
              "eval": {"sampler": "method", "steps": 0, "guidance": 0.0, "seed": 0}, "seed": seed, "name": name}
    (run / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    if metrics is None:
        (run / "status").write_text(json.dumps({"state": "running"}))
        return run
    (run / "status").write_text(json.dumps({"state": "done"}))
    results = [{"benchmark": "shapes_edit", "subset": "all", "metrics": metrics, "per_task": per_task or {},
                "counts": counts or {}, "meta": {"judge": "exact", **setting_meta(sampler, steps, guidance)}}] + (extra or [])
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
    assert list(df.columns[:11]) == ["run_id", "benchmark", "subset", "task", "metric", "value", "eval.sampler",
                                     "eval.steps", "eval.guidance", "eval.seed", "eval.benchmark_config"]
    for col in ["method.name", "method.lambda_vlm", "data.fraction", "model.critic.size", "seed", "name"]:
        assert col in df.columns
    # the setting actually used (the result's meta), not the config's 'method' / 0
    assert set(df["eval.sampler"]) == {"few_step"} and set(df["eval.steps"]) == {4} and set(df["eval.guidance"]) == {1.0}
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
    assert (r"\caption{Training objective ablation (x10) on shapes\_edit: 100\% \& more. Evaluation setting: "
            r"few\_step sampler, 4 steps, guidance 1, eval seed 0. Mean $\pm$ standard deviation over the seeds of "
            r"each row (column n). Bold: best, underlined: second best, by the printed value (single runs: no test "
            r"of separation).}") in tex
    assert r"\label{tab:loss_ablation}" in tex
    assert r"\begin{tabular}{llcccccc}" in tex  # rows differ in n (2 seeds, 1 seed): a column n
    assert r" &  & \multicolumn{4}{c}{Shapes-Edit} & \multicolumn{2}{c}{Per type} \\" in tex
    assert r"\cmidrule(lr){3-6} \cmidrule(lr){7-8}" in tex
    assert (r"Method & n & SC Score $\uparrow$ & PQ $\uparrow$ & Overall $\uparrow$ & LPIPS $\downarrow$ & "
            r"Color $\uparrow$ & Removal $\uparrow$ \\") in tex
    # Ours = mean +- std (ddof 1) of two seeds, e.g. SC 6.1, 6.3: 6.20 +- 0.14. Single-run rows: plain ranking.
    # PQ: 7.60 vs 7.60 tie -> both bold, 3.50 (next distinct) underlined.
    # LPIPS is lower-is-better: 1.50 bold, 2.10 underlined. Color: 7.10 (Ours) ties 7.10 (DMD).
    assert body_rows(tex) == [
        r"Ours & 2 & \textbf{6.20} $\pm$ 0.14 & \textbf{7.60} $\pm$ 0.14 & \textbf{6.15} $\pm$ 0.07 & "
        r"\underline{2.10} $\pm$ 0.14 & \textbf{7.10} $\pm$ 0.14 & \textbf{6.10} $\pm$ 0.14 \\",
        r"w/ only DMD & 1 & \underline{4.90} & \textbf{7.60} & \underline{4.90} & \textbf{1.50} & \textbf{7.10} & 1.00 \\",
        r"w/ only VLM \& 100\% \#1 & 1 & 2.00 & \underline{3.50} & 1.90 & 5.00 & \underline{3.00} & \underline{4.00} \\",
        r"sft & -- & -- & -- & -- & -- & -- & -- \\",
    ]


def test_table_std_precision_and_unscaled(ablation: Path) -> None:
    spec = spec_from_dict({"precision": 3, "tables": [{
        "name": "t", "show_std": True, "row_order": ["np_edit", "vlm_only"], "rank": "none",
        "columns": [{"benchmark": "shapes_edit", "metrics": ["O"]}]}]})
    rows = body_rows(render_table(spec.tables[0], spec, collect(ablation)))
    std = np.std([0.61, 0.62], ddof=1)
    assert rows == [rf"np\_edit & 2 & 0.615 $\pm$ {std:.3f} \\", r"vlm\_only & 1 & 0.190 \\"]
    assert r"\multicolumn" not in render_table(spec.tables[0], spec, collect(ablation))  # no groups -> no header row
    # show_std: false -> means only, and the caption says so
    spec.tables[0].show_std = False
    tex = render_table(spec.tables[0], spec, collect(ablation))
    assert body_rows(tex) == [r"np\_edit & 2 & 0.615 \\", r"vlm\_only & 1 & 0.190 \\"]
    assert "Mean over the seeds of each row (column n)." in tex and r"$\pm$" not in tex


def test_row_groups_info_columns_and_rank_scopes(tmp_path: Path) -> None:
    root = tmp_path / "scale"
    o = {(0.01, "large"): 0.46, (0.5, "large"): 0.55, (1.0, "large"): 0.61, (1.0, "small"): 0.45}
    for i, ((frac, critic), v) in enumerate(o.items()):
        write_run(root, f"np{i}", method="np_edit", fraction=frac, critic=critic, metrics={"O": v})
    write_run(root, "sft", method="sft", metrics={"O": 0.36}, steps=28, sampler="euler")
    write_run(root, "sftnp", method="sft_np_edit", metrics={"O": 0.70})
    table = {
        "name": "scale", "scale": 10, "info": {"eval.steps": "#Step", "eval.sampler": "Sampler"},
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
    assert r"Method & \#Step & Sampler & O $\uparrow$ \\" in tex
    # the sampler and steps differ between rows, shown as columns; the rest of the setting is in the caption
    assert ("Evaluation setting: guidance 1, eval seed 0; differing between rows: sampler (column Sampler), "
            r"steps (column \#Step). One run (seed) per row.") in tex
    # the 100%/large run is in both of the first two groups; the third group (7.00, the highest) is not ranked
    assert body_rows(tex) == [
        r"1 \% Dataset & 4 & few\_step & 4.60 \\",
        r"50 \% Dataset & 4 & few\_step & \underline{5.50} \\",
        r"100 \% Dataset & 4 & few\_step & \textbf{6.10} \\",
        r"\midrule",
        r"LLaVA-S & 4 & few\_step & 4.50 \\",
        r"LLaVA-L & 4 & few\_step & \textbf{6.10} \\",
        r"\midrule",
        r"SFT & 28 & euler & 3.60 \\",
        r"SFT + Ours & 4 & few\_step & 7.00 \\",
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
    # one row: nothing to compare, no marks; O over 0.61, 0.62, 0.49, 0.19: mean 0.4775, std sqrt(0.120675 / 3) = 0.2006
    assert body_rows(tex) == [r"large & 0.48 $\pm$ 0.20 & -- \\"]


def test_collect_takes_the_setting_from_each_result(tmp_path: Path) -> None:
    root = tmp_path / "sweep"
    rescored = {"benchmark": "shapes_edit", "subset": "all", "metrics": {"O": 0.30},
                "meta": setting_meta("euler", 28, 4.5, eval_seed=3)}
    write_run(root, "a", method="sft", metrics={"O": 0.36}, steps=28, sampler="euler", extra=[rescored])
    old = write_run(root, "old", method="sft", metrics={"O": 0.50})
    result = json.loads((old / "result.json").read_text())
    result["results"][0]["meta"] = {"judge": "exact"}  # written before the setting was recorded
    (old / "result.json").write_text(json.dumps(result))
    config = yaml.safe_load((old / "config.yaml").read_text())
    config["eval"] = {"sampler": "euler", "steps": 28, "guidance": 4.5, "seed": 2}
    (old / "config.yaml").write_text(yaml.safe_dump(config))
    df = collect(root)
    o = df[df.metric == "O"].set_index(["run_id", "value"])
    cols = ["eval.sampler", "eval.steps", "eval.guidance", "eval.seed"]
    assert o.loc[("a", 0.36), cols].tolist() == ["euler", 28, 1.0, 0]
    assert o.loc[("a", 0.30), cols].tolist() == ["euler", 28, 4.5, 3]
    assert o.loc[("old", 0.50), cols].tolist() == ["euler", 28, 4.5, 2]  # the config's, for lack of a record
    # one run and benchmark under two settings is no duplicate; the same setting twice is
    rescored["meta"] = setting_meta("euler", 28, 1.0)
    write_run(root, "b", method="sft", metrics={"O": 0.36}, steps=28, sampler="euler", extra=[rescored])
    with pytest.warns(ReportWarning, match=r"run b: shapes_edit/all appears twice in result.json under one evaluation"):
        collect(root)


MIXED = {"name": "baselines", "rows": "name", "row_order": ["sft", "sft_rl", "ours"],
         "row_labels": {"sft": "SFT", "sft_rl": "SFT + RL", "ours": "Ours"},
         "columns": [{"benchmark": "shapes_edit", "metrics": ["O"]}]}


@pytest.fixture
def mixed(tmp_path: Path) -> Path:
    """The baselines as the toy sweep scored them: SFT with Euler 28 steps at CFG 4.5, SFT + RL at CFG 1,
    NP-Edit with its 4-step sampler."""
    root = tmp_path / "sweep"
    write_run(root, "sft", method="sft", name="sft", metrics={"O": 0.36}, sampler="euler", steps=28, guidance=4.5)
    write_run(root, "rl", method="flow_grpo", name="sft_rl", metrics={"O": 0.40}, sampler="euler", steps=28)
    write_run(root, "ours", method="np_edit", name="ours", metrics={"O": 0.61})
    return root


def test_a_table_mixing_evaluation_settings_is_refused(mixed: Path, capsys) -> None:
    spec = spec_from_dict({"tables": [MIXED]})
    with pytest.raises(ReportError) as e:
        render_table(spec.tables[0], spec, collect(mixed))
    assert str(e.value).startswith(
        "report table 'baselines': rows were scored under different evaluation settings on shapes_edit: "
        "eval.sampler = euler (SFT, SFT + RL), few_step (Ours); eval.steps = 28 (SFT, SFT + RL), 4 (Ours); "
        "eval.guidance = 4.5 (SFT), 1 (SFT + RL, Ours). ")
    assert "`info: {eval.sampler: ...}` (a column) or `setting_varies: [eval.sampler]` (a note)" in str(e.value)
    # declaring the steps alone is not enough: the sampler and guidance still differ
    spec = spec_from_dict({"tables": [{**MIXED, "info": {"eval.steps": "#Step"}}]})
    with pytest.raises(ReportError, match=r"on shapes_edit: eval.sampler = .*; eval.guidance = [^;]*\. Score") as e:
        render_table(spec.tables[0], spec, collect(mixed))
    assert "eval.steps =" not in str(e.value)
    # the report command refuses it with the same message, writing no table
    sweep = {"report": {"tables": [MIXED]}}
    (mixed / "sweep.yaml").write_text(yaml.safe_dump(sweep))
    assert main([str(mixed)]) == 1
    assert "error: report table 'baselines': rows were scored under different" in capsys.readouterr().err
    assert not (mixed / "report" / "baselines.tex").exists()


def test_the_same_table_renders_with_the_setting_declared(mixed: Path) -> None:
    # as columns (the paper's Table 1 #Step)
    spec = spec_from_dict({"tables": [{**MIXED, "info": {"eval.sampler": "Sampler", "eval.steps": "#Step",
                                                         "eval.guidance": "CFG"}}]})
    tex = render_table(spec.tables[0], spec, collect(mixed))
    assert body_rows(tex) == [r"SFT & euler & 28 & 4.5 & 0.36 \\", r"SFT + RL & euler & 28 & 1 & \underline{0.40} \\",
                              r"Ours & few\_step & 4 & 1 & \textbf{0.61} \\"]
    assert ("Evaluation setting: eval seed 0; differing between rows: sampler (column Sampler), steps (column "
            r"\#Step), guidance (column CFG).") in tex
    # as notes under the table: one marker per distinct setting
    spec = spec_from_dict({"tables": [{**MIXED, "info": {"eval.steps": "#Step"},
                                       "setting_varies": ["eval.sampler", "eval.guidance"]}]})
    data = table_data(spec.tables[0], spec, collect(mixed))
    assert [r.note for r in data.rows] == ["a", "b", "c"]
    assert data.notes == [("a", "euler sampler, guidance 4.5"), ("b", "euler sampler, guidance 1"),
                          ("c", "few_step sampler, guidance 1")]
    tex = render_table(spec.tables[0], spec, collect(mixed))
    assert body_rows(tex)[0] == r"SFT\textsuperscript{a} & 28 & 0.36 \\"
    assert (r"{\footnotesize \textsuperscript{a}euler sampler, guidance 4.5 \quad \textsuperscript{b}euler sampler, "
            r"guidance 1 \quad \textsuperscript{c}few\_step sampler, guidance 1}") in tex
    assert ("Evaluation setting: eval seed 0; differing between rows: sampler (notes), steps (column \\#Step), "
            "guidance (notes).") in tex
    md = render_markdown(spec.tables[0], spec, collect(mixed))
    assert "| SFT<sup>a</sup> | 28 | 0.36 |" in md
    assert md.rstrip().endswith("<sup>a</sup> euler sampler, guidance 4.5. <sup>b</sup> euler sampler, guidance 1. "
                                "<sup>c</sup> few\\_step sampler, guidance 1.")


def test_a_run_scored_under_two_settings_is_one_row_per_setting(mixed: Path) -> None:
    """SFT re-scored at CFG 1 (harness.evaluate --run ... eval.guidance=1): both results are in its
    result.json; a table takes one of them, or both as rows, but never their mean."""
    result = json.loads((mixed / "sft" / "result.json").read_text())
    result["results"].append({"benchmark": "shapes_edit", "subset": "all", "metrics": {"O": 0.30},
                              "meta": setting_meta("euler", 28, 1.0)})
    (mixed / "sft" / "result.json").write_text(json.dumps(result))
    df = collect(mixed)
    table = {**MIXED, "row_order": ["sft", "sft_rl"]}
    spec = spec_from_dict({"tables": [table]})
    with pytest.raises(ReportError, match=r"row 'SFT' averages results scored under different evaluation settings on "
                                          r"shapes_edit: eval.guidance = 1 \(run sft\), 4.5 \(run sft\); keep one"):
        render_table(spec.tables[0], spec, df)
    spec = spec_from_dict({"tables": [{**table, "where": {"eval.guidance": 1}}]})
    tex = render_table(spec.tables[0], spec, df)
    assert body_rows(tex) == [r"SFT & \underline{0.30} \\", r"SFT + RL & \textbf{0.40} \\"]
    assert "Evaluation setting: euler sampler, 28 steps, guidance 1, eval seed 0." in tex
    spec = spec_from_dict({"tables": [{**MIXED, "rows": "eval.guidance", "where": {"name": "sft"}, "row_order": [],
                                       "row_labels": {}}]})
    tex = render_table(spec.tables[0], spec, df)
    assert body_rows(tex) == [r"1 & \underline{0.30} \\", r"4.5 & \textbf{0.36} \\"]
    assert "Evaluation setting: euler sampler, 28 steps, eval seed 0; differing between rows: guidance (the rows)." in tex


def test_rows_on_other_benchmark_configs_are_refused_unless_unrecorded(tmp_path: Path) -> None:
    root = tmp_path / "s"
    write_run(root, "a", method="np_edit", metrics={"O": 0.5})
    b = write_run(root, "b", method="dmd_only", metrics={"O": 0.4})
    result = json.loads((b / "result.json").read_text())
    result["results"][0]["meta"]["benchmark_config"] = "beef00"  # e.g. scored on 50 samples per type, not 20
    (b / "result.json").write_text(json.dumps(result))
    spec = spec_from_dict({"tables": [{"name": "t", "columns": [{"benchmark": "shapes_edit", "metrics": ["O"]}]}]})
    with pytest.raises(ReportError, match=r"eval.benchmark_config = beef00 \(dmd_only\), c0ffee \(np_edit\)\. Score them "
                                          r"under one \(python -m harness.evaluate --run RUN --benchmark shapes_edit "
                                          r"key=value \.\.\.\)"):
        render_table(spec.tables[0], spec, collect(root))
    del result["results"][0]["meta"]["benchmark_config"]  # written before it was recorded: matches any
    (b / "result.json").write_text(json.dumps(result))
    assert body_rows(render_table(spec.tables[0], spec, collect(root))) == [
        r"dmd\_only & \underline{0.40} \\", r"np\_edit & \textbf{0.50} \\"]


def seeds_of(root: Path, rows: dict[str, list[float]], metric: str = "O") -> Path:
    """One run per seed and row (method), with the given values of `metric` (and LPIPS the same)."""
    for method, values in rows.items():
        for seed, v in enumerate(values):
            write_run(root, f"{method}{seed}", method=method, seed=seed, metrics={metric: v, "LPIPS": v})
    return root


def test_aggregation_equals_a_hand_computation(tmp_path: Path) -> None:
    root = seeds_of(tmp_path / "s", {"np_edit": [1.0, 1.5, 2.3]})
    spec = spec_from_dict({"tables": [{"name": "t", "columns": [{"benchmark": "shapes_edit", "metrics": ["O"]}]}]})
    [row] = table_data(spec.tables[0], spec, collect(root)).rows
    # mean (1.0 + 1.5 + 2.3) / 3 = 1.6; deviations -0.6, -0.1, 0.7; squares 0.36 + 0.01 + 0.49 = 0.86; / (3 - 1)
    assert row.mean == [pytest.approx(1.6)] and row.n == [3] and row.std == [pytest.approx(0.43 ** 0.5)]
    tex = render_table(spec.tables[0], spec, collect(root))
    assert body_rows(tex) == [r"np\_edit & 1.60 $\pm$ 0.66 \\"]
    assert r"Mean $\pm$ standard deviation over 3 seeds." in tex and "column n" not in tex
    md = render_markdown(spec.tables[0], spec, collect(root))
    assert "| np\\_edit | 1.60 ± 0.66 |" in md and "Mean ± standard deviation over 3 seeds." in md


SEP_TABLE = {"name": "t", "row_order": ["a", "b", "c"],
             "columns": [{"benchmark": "shapes_edit", "metrics": ["O", "LPIPS"]}]}


def marks_of(root: Path, **table) -> dict[tuple[int, int], str]:
    spec = spec_from_dict({"tables": [{**SEP_TABLE, **table}]})
    return table_data(spec.tables[0], spec, collect(root)).marks


def test_marks_only_where_separated_by_the_combined_standard_error(tmp_path: Path) -> None:
    """Rows a, b, c of three seeds each; O higher is better, LPIPS (the same numbers) lower is better.
    se^2 = var / 3. b = [1.2, 1.3, 1.4]: mean 1.3, var 0.01, se^2 0.00333; c = [0.1, 0.2, 0.3]: mean 0.2, se^2 0.00333."""
    b, c = [1.2, 1.3, 1.4], [0.1, 0.2, 0.3]
    # a noisy: [1.0, 1.5, 2.3], mean 1.6, var 0.43, se^2 0.14333. a - b = 0.3 < sqrt(0.14333 + 0.00333) = 0.383:
    # a is not separated, so nothing is bold and nothing underlined; plain ranking would mark a and b.
    noisy = seeds_of(tmp_path / "noisy", {"a": [1.0, 1.5, 2.3], "b": b, "c": c})
    # LPIPS (lower is better): c beats b by 1.1 > 0.082 and a by 1.4 > 0.383: bold; b - a is not separated
    assert marks_of(noisy) == {(2, 1): "best"}
    assert marks_of(noisy, separation="rank") == {(0, 0): "best", (1, 0): "second", (2, 1): "best", (1, 1): "second"}
    # a tight: [1.55, 1.6, 1.65], mean 1.6, var 0.0025, se^2 0.000833. a - b = 0.3 > sqrt(0.004167) = 0.065: bold;
    # b - c = 1.1 > sqrt(0.00667) = 0.082: underlined. LPIPS: c bold (1.1 > 0.082), b underlined (0.3 > 0.065).
    tight = seeds_of(tmp_path / "tight", {"a": [1.55, 1.6, 1.65], "b": b, "c": c})
    assert marks_of(tight) == {(0, 0): "best", (1, 0): "second", (2, 1): "best", (1, 1): "second"}
    # c close to b: [1.0, 1.2, 1.4], mean 1.2, var 0.04, se^2 0.01333. a - c = 0.4 > sqrt(0.01417) = 0.119 and
    # a - b > 0.065: a bold; b - c = 0.1 < sqrt(0.01667) = 0.129: b not underlined (ranking would underline it)
    close = seeds_of(tmp_path / "close", {"a": [1.55, 1.6, 1.65], "b": b, "c": [1.0, 1.2, 1.4]})
    assert marks_of(close)[(0, 0)] == "best" and (1, 0) not in marks_of(close)
    assert marks_of(close, separation="rank")[(1, 0)] == "second"
    spec = spec_from_dict({"tables": [SEP_TABLE]})
    tex = render_table(spec.tables[0], spec, collect(tight))
    assert (r"Bold: best, underlined: second best; a row is marked only where its mean beats every row ranked below "
            r"it by more than their combined standard error $\sqrt{\mathrm{se}_1^2+\mathrm{se}_2^2}$ "
            r"($\mathrm{se}=\mathrm{std}/\sqrt{n}$), the second only where the best is marked.") in tex
    assert "by more than their combined standard error √(se₁² + se₂²) (se = std/√n)" in render_markdown(
        spec.tables[0], spec, collect(tight))
    # one seed per row: no standard error, plain ranking, and the caption says so
    single = marks_of(noisy, where={"seed": 0})  # a 1.0, b 1.2, c 0.1
    assert single == {(1, 0): "best", (0, 0): "second", (2, 1): "best", (0, 1): "second"}
    spec = spec_from_dict({"tables": [{**SEP_TABLE, "where": {"seed": 0}}]})
    tex = render_table(spec.tables[0], spec, collect(noisy))
    assert ("One run (seed) per row. Bold: best, underlined: second best, by the printed value (single runs: no "
            "test of separation).") in tex
    assert r"$\pm$" not in tex.split(r"\midrule")[1]


def test_figures_have_error_bars_of_one_std_over_seeds(ablation: Path) -> None:
    df = collect(ablation)
    plot = Plot(name="per_type", kind="bar", benchmark="shapes_edit", metric="O", x="task", scale=10)
    fig = draw_plot(plot, df)
    ax = fig.axes[0]
    # np_edit, color: seeds 7.0 and 7.2 -> mean 7.1, std (ddof 1) 0.1414: the bar's error line spans 7.1 -+ 0.1414
    spans = [sorted(line.get_ydata()) for line in ax.lines
             if len(line.get_ydata()) == 2 and np.isfinite(line.get_ydata()).all()]
    assert any(lo == pytest.approx(7.1 - 0.02 ** 0.5) and hi == pytest.approx(7.1 + 0.02 ** 0.5) for lo, hi in spans)
    assert len(spans) == 2  # only np_edit has several seeds: its two tasks; single runs get no bar
    assert fig.get_supxlabel() == "mean ± sd over 1-2 seeds; eval: few_step sampler, 4 steps, guidance 1, eval seed 0"
    # points scored under different settings are refused unless declared
    result = json.loads((ablation / "dmd" / "result.json").read_text())
    result["results"][0]["meta"]["sampling"]["steps"] = 8
    (ablation / "dmd" / "result.json").write_text(json.dumps(result))
    with pytest.raises(ReportError, match=r"report plot 'per_type': points were scored under different evaluation "
                                          r"settings: eval.steps = 4 \(np_edit, vlm_only\), 8 \(dmd_only\)"):
        draw_plot(plot, collect(ablation))
    fig = draw_plot(Plot(**{**plot.__dict__, "setting_varies": ["eval.steps"]}), collect(ablation))
    assert fig.get_supxlabel() == "mean ± sd over 1-2 seeds; eval: few_step sampler, guidance 1, eval seed 0"


def test_escape() -> None:
    assert escape(r"a_b & 10% $x$ #1 {y} ~ ^ \ <>|") == (
        r"a\_b \& 10\% \$x\$ \#1 \{y\} \textasciitilde{} \textasciicircum{} \textbackslash{} "
        r"\textless{}\textgreater{}\textbar{}")


@pytest.mark.skipif(pdflatex() is None, reason="pdflatex is not installed")
def test_built_tables_compile_with_pdflatex(ablation: Path, tmp_path: Path) -> None:
    sweep = {"report": {"tables": [{**TABLE, "info": {"eval.steps": "#Step"}},
                                   {**TABLE, "name": "std", "show_std": True, "info": {"name": "Name_x", "eval.steps": "#"}},
                                   {**TABLE, "name": "notes", "separation": "se", "setting_varies": ["eval.steps"],
                                    "row_order": ["np_edit", "dmd_only", "vlm_only"]}]}}
    (ablation / "dmd" / "result.json").write_text((ablation / "dmd" / "result.json").read_text().replace(
        '"steps": 4', '"steps": 8'))  # the only-DMD row scored with 8 steps: a note under the 'notes' table
    (ablation / "sweep.yaml").write_text(yaml.safe_dump(sweep, sort_keys=False))
    with pytest.warns(ReportWarning, match="1 failed, 1 missing"):
        written = build_report(ablation)
    wrapper = ablation / "report" / "tables.tex"
    assert wrapper in written
    assert r"\input{loss_ablation}" in wrapper.read_text() and r"\input{std}" in wrapper.read_text()
    assert r"w/ only DMD\textsuperscript{b}" in (ablation / "report" / "notes.tex").read_text()
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
    path.write_text(yaml.safe_dump({"report": {"tables": [{"name": "t", "setting_varies": ["eval.stepz"],
                                                           "columns": [{"benchmark": "x", "metrics": ["O"]}]}]}}))
    with pytest.raises(ConfigError, match=r"setting_varies: 'eval.stepz' is not an evaluation-setting key; allowed: "
                                          r"eval.sampler, eval.steps"):
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
    assert names == ["counts.csv", "loss_ablation.md", "loss_ablation.tex", "per_type.pdf", "per_type.png",
                     "results.csv", "results.parquet", "tables.tex"]
    for name in names:
        assert f"wrote {out / name}" in printed
    md = (out / "loss_ablation.md").read_text()
    assert "| Method | n | Shapes-Edit: SC Score ↑ |" in md
    assert "| Ours | 2 | **6.20** ± 0.14 | **7.60** ± 0.14 | **6.15** ± 0.07 | <ins>2.10</ins> ± 0.14 |" in md
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


def test_a_sweeps_tuning_record_is_named_in_every_caption(tmp_path: Path) -> None:
    """The `tuning:` record that `harness.tune --emit` writes into a sweep file reaches the report."""
    from reports.build import build_report

    root = seeds_of(tmp_path / "s", {"np_edit": [1.0, 1.5, 2.3]})
    table = {"name": "t", "columns": [{"benchmark": "shapes_edit", "metrics": ["O"]}]}
    (root / "sweep.yaml").write_text(yaml.safe_dump({
        "name": "s", "report": {"tables": [table]},
        "tuning": {"file": "sweeps/toy/tune_x.yaml", "trials_per_variant": 8, "objective": "shapes_edit/val O (maximize)"}}))
    build_report(root)
    sentence = "Every row's hyperparameters tuned with 8 trials each on shapes_edit/val O (maximize) (sweeps/toy/tune_x.yaml)."
    assert sentence.replace("_", r"\_") in (root / "report" / "t.tex").read_text()
    assert sentence.replace("_", r"\_") in (root / "report" / "t.md").read_text()
    (root / "sweep.yaml").write_text(yaml.safe_dump({
        "name": "s", "report": {"tables": [table]},
        "tuning": {"trials_per_variant": 8, "note": "The untrained row is a reference, not tuned."}}))
    build_report(root)
    assert "tuned with 8 trials each. The untrained row is a reference, not tuned." in (root / "report" / "t.md").read_text()
    (root / "sweep.yaml").write_text(yaml.safe_dump({"name": "s", "report": {"tables": [table]}}))
    build_report(root)
    assert "tuned" not in (root / "report" / "t.tex").read_text()
