"""Seaborn figures (PDF + PNG) for a report spec's plots.

A point (x, hue) with several runs (seeds) is their mean with an error bar of one standard deviation;
a note under the axes says so and gives the evaluation setting of the figure. As in tables, points
scored under different evaluation settings are refused (ReportError) unless the keys that differ
are `x`, `hue` or listed in the plot's `setting_varies`; one point never averages two settings.

Every method has one colour in every figure of every report: the methods the project ships have
fixed colours (`METHOD_COLORS`); any other name gets a colour derived from its text, so it too is the
same everywhere. Figures are drawn on bare matplotlib `Figure`s (no pyplot, no GUI backend).
"""
from __future__ import annotations

import colorsys
import hashlib
from pathlib import Path

import pandas as pd
import seaborn as sns
from matplotlib.colors import to_hex
from matplotlib.figure import Figure

from harness.runstore import atomic_path
from reports.collect import (SETTING_COLUMNS, canon, describe_setting, require_column, runs_table, select_runs,
                             sort_key, unit_ids, warn)
from reports.spec import Plot, ReportError

KNOWN_METHODS = [
    "np_edit", "dmd_only", "vlm_only", "np_edit_no_identity", "np_edit_ce",
    "np_edit_lpips", "sft", "flow_grpo", "sft_flow_grpo", "sft_np_edit",
]
METHOD_COLORS: dict[str, str] = dict(zip(KNOWN_METHODS, sns.color_palette("colorblind", len(KNOWN_METHODS)).as_hex()))


def method_color(name: str) -> str:
    """The colour of a method (or any hue value) in every figure: fixed for known names, else from its text."""
    if name in METHOD_COLORS:
        return METHOD_COLORS[name]
    h = int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "big")
    hue = (h % 3600) / 3600
    lightness = 0.38 + 0.14 * ((h >> 12) % 3) / 2
    return to_hex(colorsys.hls_to_rgb(hue, lightness, 0.7))


def plot_frame(plot: Plot, df: pd.DataFrame) -> pd.DataFrame:
    """The points of a plot: columns x (canonical value), hue (canonical value), value (scaled), run_id,
    and the evaluation setting (canonical values) of each."""
    where = f"report plot {plot.name!r}"
    df = df.assign(unit=unit_ids(df))
    runs = select_runs(runs_table(df), plot.where, where)
    require_column(runs, plot.hue, f"{where}: hue")
    sel = df[(df.benchmark == plot.benchmark) & (df.subset == plot.subset) & (df.metric == plot.metric)
             & df.unit.isin(runs.index)]
    if plot.x == "task":
        sel = sel[sel.task != "all"] if not plot.x_order else sel
        x = sel.task
    else:
        require_column(runs, plot.x, f"{where}: x")
        sel = sel[sel.task == plot.task]
        x = sel[plot.x].map(canon)
    frame = pd.DataFrame({"x": x.astype(str), "hue": sel[plot.hue].map(canon).astype(str),
                          "value": sel.value * plot.scale, "run_id": sel.run_id,
                          **{k: sel[k].map(canon) for k in SETTING_COLUMNS if k in sel.columns}})
    if plot.x_order:
        frame = frame[frame.x.isin([canon(v) for v in plot.x_order])]
    if plot.hue_order:
        frame = frame[frame.hue.isin([canon(v) for v in plot.hue_order])]
    if frame.empty:
        have = sorted(df.loc[df.benchmark == plot.benchmark, "metric"].unique())
        warn(f"{where}: nothing to plot for {plot.benchmark}/{plot.subset}/{plot.metric} "
             f"(metrics of {plot.benchmark}: {', '.join(have) or 'none'})")
    _check_settings(plot, frame, where)
    return frame.reset_index(drop=True)


def _check_settings(plot: Plot, frame: pd.DataFrame, where: str) -> None:
    """A point never averages two evaluation settings; points differ only in declared keys."""
    keys = [k for k in SETTING_COLUMNS if k in frame.columns]
    for (x, hue), point in frame.groupby(["x", "hue"]):
        differ = [k for k in keys if point[k].nunique() > 1]
        if differ:
            k = differ[0]
            raise ReportError(f"{where}: point x={x}, {plot.hue}={hue} averages results scored under different "
                              f"evaluation settings ({k} = {', '.join(sorted(point[k].unique()))}); keep one with "
                              f"`where: {{{k}: ...}}`")
    declared = {plot.x, plot.hue, *plot.setting_varies}
    for k in keys:
        if k not in declared and frame[k].nunique() > 1:
            detail = ", ".join(f"{v} ({', '.join(sorted(set(frame.hue[frame[k] == v])))})" for v in sorted(frame[k].unique()))
            raise ReportError(f"{where}: points were scored under different evaluation settings: {k} = {detail}; "
                              f"keep one with `where: {{{k}: ...}}`, or declare it: `setting_varies: [{k}]`, "
                              f"`hue: {k}` or `x: {k}`")


def figure_note(plot: Plot, frame: pd.DataFrame) -> str:
    """'mean ± sd over 3 seeds; eval: few_step sampler, 4 steps, guidance 1, eval seed 0' (what is the same
    for every point)."""
    if frame.empty:
        return ""
    parts = []
    ns = sorted(set(frame.groupby(["x", "hue"]).size()))
    if ns[-1] > 1:
        parts.append(f"mean ± sd over {ns[0] if len(ns) == 1 else f'{ns[0]}-{ns[-1]}'} seeds")
    shared = {k: frame[k].iloc[0] for k in SETTING_COLUMNS if k in frame.columns and frame[k].nunique() == 1}
    setting = describe_setting(shared)
    if setting:
        parts.append(f"eval: {setting}")
    return "; ".join(parts)


def draw_plot(plot: Plot, df: pd.DataFrame) -> Figure:
    """The figure of one plot spec (bar: one group of bars per x; line: one line per hue value)."""
    frame = plot_frame(plot, df)
    x_order = [canon(v) for v in plot.x_order] or sorted(frame.x.unique(), key=sort_key)
    hue_order = [canon(v) for v in plot.hue_order] or sorted(frame.hue.unique(), key=sort_key)
    x_labels = {canon(k): v for k, v in plot.x_labels.items()}
    hue_labels = {canon(k): v for k, v in plot.hue_labels.items()}
    if plot.palette:
        colors = dict(zip(hue_order, sns.color_palette(plot.palette, len(hue_order)).as_hex()))
    else:
        colors = {h: method_color(h) for h in hue_order}
    frame = frame.assign(hue_label=frame.hue.map(lambda h: hue_labels.get(h, h)))
    palette = {hue_labels.get(h, h): colors[h] for h in hue_order}
    label_order = [hue_labels.get(h, h) for h in hue_order]
    several = bool(len(frame)) and frame.groupby(["x", "hue"]).size().max() > 1
    errorbar = "sd" if several else None

    fig = Figure(figsize=tuple(plot.figsize), layout="constrained")
    ax = fig.add_subplot()
    if frame.empty:
        ax.text(0.5, 0.5, "no results", ha="center", va="center", transform=ax.transAxes)
    elif plot.kind == "bar":
        sns.barplot(frame, x="x", y="value", hue="hue_label", order=x_order, hue_order=label_order,
                    palette=palette, errorbar=errorbar, saturation=1.0, err_kws={"linewidth": 1}, ax=ax)
        ax.set_xticks(range(len(x_order)), [x_labels.get(x, x) for x in x_order])
        if len(x_order) > 6:  # rotated labels anchored at their end, so long ones do not overlap
            for label in ax.get_xticklabels():
                label.set(rotation=35, ha="right", rotation_mode="anchor")
    else:
        numeric = all(sort_key(x)[0] == 0 for x in x_order)
        if numeric:
            frame = frame.assign(xpos=frame.x.astype(float))
        else:
            pos = {x: i for i, x in enumerate(x_order)}
            frame = frame.assign(xpos=frame.x.map(pos).astype(float))
        sns.lineplot(frame, x="xpos", y="value", hue="hue_label", hue_order=label_order, palette=palette,
                     errorbar=errorbar, marker="o", ax=ax)
        ticks = [float(x) for x in x_order] if numeric else list(range(len(x_order)))
        if plot.logx:
            ax.set_xscale("log")
        ax.set_xticks(ticks, [x_labels.get(x, x) for x in x_order])
        ax.minorticks_off()
    note = figure_note(plot, frame)
    if note:
        fig.supxlabel(note, fontsize="x-small", color="0.35")
    ax.set_xlabel(plot.xlabel if plot.xlabel else ("" if plot.x == "task" else plot.x))
    ax.set_ylabel(plot.ylabel or plot.metric)
    if plot.title:
        ax.set_title(plot.title)
    if ax.get_legend() is not None:
        sns.move_legend(ax, "upper left", bbox_to_anchor=(1.0, 1.0), title=None, frameon=False)
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    sns.despine(ax=ax)
    return fig


def write_plot(plot: Plot, df: pd.DataFrame, out_dir: str | Path, dpi: int = 200) -> list[Path]:
    """Draw one plot and write <name>.pdf and <name>.png atomically; returns the paths."""
    fig = draw_plot(plot, df)
    paths = []
    for fmt in ("pdf", "png"):
        path = Path(out_dir) / f"{plot.name}.{fmt}"
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=fmt, dpi=dpi, metadata={"CreationDate": None} if fmt == "pdf" else None)
        paths.append(path)
    return paths


__all__ = ["KNOWN_METHODS", "METHOD_COLORS", "draw_plot", "figure_note", "method_color", "plot_frame", "write_plot"]
