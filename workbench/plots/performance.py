"""Speed figures of one run: step latency vs size, speedup over torch.optim, bandwidth roofline.

Each function takes a run's records (`workbench.results.load`) and returns a Figure, or raises
SkipFigure when the run has nothing for it. Failed rows are left out of the lines; the heatmap
names their status in their cell instead, so a missing bar is never mistaken for a slow one.
Rows of different world_size are different lines (heatmap rows), never pooled; a point or cell
drawn from an unstable or flagged row is ringed (hatched), with a legend entry saying so.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd
from matplotlib import colors
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.ticker import EngFormatter, Formatter, FuncFormatter, NullFormatter

from workbench.results.summary import with_ratios

from ._common import (
    UNSTABLE_ALPHA,
    UNSTABLE_EDGE,
    UNSTABLE_HATCH,
    UNSTABLE_LABEL,
    SkipFigure,
    add_variant,
    as_floats,
    figure_legend,
    flag_columns,
    line_styles,
    ok_rows,
    panel_grid,
    panel_title,
    sort_key,
    styled,
    unstable_handle,
    varying,
    with_stability,
)

PANEL_AXES = ("optimizer", "dtype", "device")
LINE_AXES = ("implementation", "backend")
SERIES_AXES = ("world_size",)  # in a line's label where they vary, so that lines never pool them


def _panels(rows: pd.DataFrame, axes: tuple[str, ...] = PANEL_AXES) -> list[str]:
    return [c for c in axes if c in rows.columns]


def _per_size(group: pd.DataFrame, value: str) -> pd.DataFrame:
    """One point per size: the median over repeats, and the quartiles of the pooled raw samples
    where the run kept them (the spread a reader should see before believing a gap); `unstable`
    where any of the point's rows is."""
    points = []
    for size, g in group.groupby("size", sort=False):
        samples = np.concatenate([as_floats(s) for s in g.get("samples_s", [])] or [np.empty(0)])
        samples = samples[np.isfinite(samples)]
        point = {"size": size, "numel": g["numel"].iloc[0], "y": g[value].median()}
        point["unstable"] = bool(g["unstable"].any()) if "unstable" in g else False
        if value == "median_s" and samples.size:
            point["lo"], point["hi"] = np.percentile(samples, [25, 75])
        points.append(point)
    return pd.DataFrame(points).sort_values("numel")


def _size_axis(ax: Axes, rows: pd.DataFrame) -> None:
    """Size names along the top: a reader thinks in profiles (gpt2-small), not in numel."""
    names = rows.groupby("numel")["size"].agg(lambda s: " / ".join(sorted(set(map(str, s)))))
    top = ax.secondary_xaxis("top")
    top.set_xticks(list(names.index), labels=list(names.values), rotation=30, ha="left")
    top.tick_params(labelsize=7, length=0)
    top.minorticks_off()
    top.grid(False)


def _lines_vs_size(
    rows: pd.DataFrame,
    value: str,
    ylabel: str,
    *,
    log_y: bool,
    y_formatter: Formatter | None = None,
    reference: tuple[float, str] | None = None,
) -> Figure:
    rows = add_variant(with_stability(rows), SERIES_AXES, always=LINE_AXES)
    styles = line_styles(rows)
    panel_cols = _panels(rows)
    groups = list(rows.groupby(panel_cols, sort=True)) if panel_cols else [((), rows)]
    fig, axes = panel_grid(len(groups), extra_h=0.4)
    for ax, (keys, panel) in zip(axes, groups):
        for variant, line in sorted(
            panel.groupby("variant"), key=lambda kv: sort_key(kv[1].iloc[0])
        ):
            pts = _per_size(line, value)
            style = styles[variant]
            yerr = None
            if "lo" in pts:
                yerr = np.vstack([pts["y"] - pts["lo"], pts["hi"] - pts["y"]]).clip(min=0)
            ax.errorbar(
                pts["numel"], pts["y"], yerr=yerr, label=variant, capsize=2, ms=4, lw=1.2, **style
            )
            _mark_unstable(ax, pts[pts["unstable"]])
        ax.set_xscale("log")
        if log_y:
            ax.set_yscale("log")
            _whole_decades(ax)
        ax.xaxis.set_minor_formatter(NullFormatter())
        if y_formatter is not None:
            ax.yaxis.set_major_formatter(y_formatter)
        if reference is not None:
            ax.axhline(reference[0], color="black", lw=1, ls="-.", label=reference[1], zorder=1)
            ax.set_ylim(0, max(1.1 * reference[0], ax.get_ylim()[1]))
        ax.xaxis.set_major_formatter(EngFormatter(sep=""))
        ax.set_xlabel("elements stepped (numel)")
        ax.set_ylabel(ylabel)
        ax.set_title(panel_title(keys, panel_cols), loc="left")
        _size_axis(ax, panel)
        if panel["numel"].nunique() == 1:  # one size: widen so the point is not on the frame
            x = float(panel["numel"].iloc[0])
            ax.set_xlim(x / 3, x * 3)
    figure_legend(fig, axes)
    return fig


def _mark_unstable(ax: Axes, pts: pd.DataFrame) -> None:
    """A faded, hatched ring around each point drawn from an unstable/flagged row."""
    if pts.empty:
        return
    ax.scatter(
        pts["numel"],
        pts["y"],
        s=110,
        facecolors="none",
        edgecolors=UNSTABLE_EDGE,
        hatch=UNSTABLE_HATCH,
        alpha=UNSTABLE_ALPHA + 0.3,  # the ring itself must stay visible on a light line
        linewidths=1.2,
        label=UNSTABLE_LABEL,
        zorder=3,
    )


def _whole_decades(ax: Axes) -> None:
    """Widen a log y-axis to whole decades, so that it carries labelled powers of ten and no
    minor-tick labels in scientific notation (which matplotlib adds when a decade is not shown
    whole and which read badly beside engineering units)."""
    lo, hi = ax.get_ylim()
    if lo > 0 and hi > lo:
        ax.set_ylim(10 ** np.floor(np.log10(lo)), 10 ** np.ceil(np.log10(hi)))
    ax.yaxis.set_minor_formatter(NullFormatter())


@styled
def latency_vs_size(df: pd.DataFrame) -> Figure:
    """Median step time vs numel, log-log; one line per implementation/backend (bars: IQR of the
    raw samples), one panel per optimizer/dtype/device."""
    rows = ok_rows(df, ["median_s", "numel"], "latency vs size")
    fig = _lines_vs_size(
        rows, "median_s", "median step time", log_y=True, y_formatter=EngFormatter(unit="s", sep="")
    )
    fig.suptitle("Step latency vs size (median; bars: IQR of raw samples)", x=0.01, ha="left")
    return fig


@styled
def bandwidth_fraction(
    df: pd.DataFrame, stream_bandwidth: Mapping[str, float | None] | None = None
) -> Figure:
    """Achieved bandwidth (minimal bytes / median time) as a fraction of the streaming probe
    measured in the same run; 1.0 is the copy roofline."""
    rows = ok_rows(df, ["bw_fraction", "numel"], "bandwidth fraction")
    fig = _lines_vs_size(
        rows,
        "bw_fraction",
        "achieved / stream probe",
        log_y=False,
        reference=(1.0, "stream probe"),
    )
    probes = ", ".join(
        f"{dev} {bw / 1e9:.0f} GB/s" for dev, bw in (stream_bandwidth or {}).items() if bw
    )
    title = "Fraction of the bandwidth roofline"
    fig.suptitle(f"{title} (probe: {probes})" if probes else title, x=0.01, ha="left")
    return fig


def _heat_labels(rows: pd.DataFrame) -> pd.DataFrame:
    """Row label (what problem) and column label (which implementation) of each case."""
    out = rows.copy()
    flags = varying(out, flag_columns(out))
    ranks = varying(out, SERIES_AXES)

    def problem(r: pd.Series) -> str:
        parts = [str(r.get("optimizer", "")), str(r.get("size", ""))]
        parts += [f"{c}={r[c]}" for c in ranks]
        parts += [f"{c.removeprefix('flag_')}={r[c]}" for c in flags]
        return " · ".join(parts)

    out["heat_row"] = out.apply(problem, axis=1)
    out["heat_col"] = out["implementation"].astype(str) + "/" + out["backend"].astype(str)
    return out


@styled
def speedup_heatmap(df: pd.DataFrame) -> Figure:
    """vs_torch_best per problem (optimizer, size, world_size and flags where they vary) x
    implementation/backend; one panel per dtype/device. Green is faster than torch.optim's best,
    red slower; a failed case shows its status, an unstable/flagged one is hatched."""
    if not {"implementation", "backend", "status"} <= set(df.columns):
        raise SkipFigure("speedup heatmap: the run has no implementation/backend/status columns")
    rows = with_ratios(with_stability(df))
    # Only latency cases: convergence cases (a `problem`) time no step, ok or diverged.
    if "problem" in rows:
        rows = rows[rows["problem"].isna()]
    if "median_s" in rows:
        rows = rows[rows["median_s"].notna() | (rows["status"] != "ok")]
    ratio = pd.to_numeric(rows["vs_torch_best"], errors="coerce")
    if not np.isfinite(ratio).any():
        raise SkipFigure("speedup heatmap: no ok torch.optim row to compare against")
    rows = _heat_labels(rows.assign(vs_torch_best=ratio))
    panel_cols = [c for c in ("dtype", "device") if c in rows.columns]
    groups = list(rows.groupby(panel_cols, sort=True)) if panel_cols else [((), rows)]
    groups = [(k, g) for k, g in groups if np.isfinite(g["vs_torch_best"]).any()]

    col_order = sorted(
        rows.drop_duplicates("heat_col").to_dict("records"), key=sort_key
    )  # same columns in every panel
    columns = [r["heat_col"] for r in col_order]
    finite = rows["vs_torch_best"][np.isfinite(rows["vs_torch_best"])]
    span = max(1.0, float(np.abs(np.log2(finite)).max()))  # symmetric around 1x, at least 0.5-2x
    norm = colors.Normalize(-span, span)
    cmap = colors.LinearSegmentedColormap.from_list("speed", ["#c0392b", "#f7f7f7", "#1e8449"])

    n_rows = max(g["heat_row"].nunique() for _, g in groups)
    fig, axes = panel_grid(
        len(groups), ncols=1, panel_w=0.95 * len(columns) + 3.2, panel_h=0.42 * n_rows + 1.5
    )
    for ax, (keys, panel) in zip(axes, groups):
        order = panel.sort_values([c for c in ("optimizer", "numel", "heat_row") if c in panel])
        row_labels = list(dict.fromkeys(order["heat_row"]))
        values = panel[panel["status"] == "ok"].pivot_table(
            index="heat_row", columns="heat_col", values="vs_torch_best", aggfunc="median"
        )
        values = values.reindex(index=row_labels, columns=columns)
        statuses = panel.groupby(["heat_row", "heat_col"])["status"].agg(
            lambda s: "ok" if (s == "ok").any() else str(s.iloc[0])
        )
        ok_panel = panel[panel["status"] == "ok"]
        shaky = set(ok_panel[ok_panel["unstable"]].groupby(["heat_row", "heat_col"]).groups)
        image = ax.imshow(
            np.log2(values.to_numpy(dtype=float)), cmap=cmap, norm=norm, aspect="auto"
        )
        ax.set_facecolor("#e0e0e0")  # cells with no value: not run, or failed
        for i, r in enumerate(row_labels):
            for j, c in enumerate(columns):
                v = values.iloc[i, j]
                if np.isfinite(v):
                    text, tone = f"{v:.2f}×", "white" if abs(np.log2(v)) > 0.7 * span else "black"
                else:
                    text, tone = statuses.get((r, c), "–"), "#555555"
                ax.text(j, i, text, ha="center", va="center", fontsize=8, color=tone)
                if (r, c) in shaky and np.isfinite(v):
                    ax.add_patch(_hatched_cell(i, j))
        ax.set_xticks(range(len(columns)), labels=columns, rotation=30, ha="right")
        ax.set_yticks(range(len(row_labels)), labels=row_labels)
        ax.grid(False)
        ax.set_title(panel_title(keys, panel_cols), loc="left")
        bar = fig.colorbar(image, ax=ax, shrink=0.9, pad=0.01)
        bar.ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{2**v:.2g}×"))
        bar.set_label("speedup (log scale)")
    if rows.loc[rows["status"] == "ok", "unstable"].any():
        figure_legend(fig, axes, extra=[unstable_handle()])
    fig.suptitle("Speedup over torch.optim's fastest, same problem, same run", x=0.01, ha="left")
    return fig


def _hatched_cell(i: int, j: int) -> Rectangle:
    return Rectangle(
        (j - 0.5, i - 0.5),
        1,
        1,
        fill=False,
        hatch=UNSTABLE_HATCH,
        edgecolor=UNSTABLE_EDGE,
        alpha=UNSTABLE_ALPHA,
        lw=0,
    )
