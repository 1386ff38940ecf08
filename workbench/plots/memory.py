"""Memory figure of one run: what each implementation/backend holds and what one step adds.

`state_bytes` is the optimizer state kept between steps (exact), `step_peak_bytes` the peak of one
step above the params and grads it was given (temporaries). Both are drawn against the params'
own size, the yardstick a reader already has: foreach's temporary is typically one params' worth.
Rows of different world_size are different bars (a rank of two holds other state than a lone
process), never averaged; a bar drawn from an unstable or flagged row is hatched and faded.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from ._common import (
    DTYPE_BYTES,
    UNSTABLE_ALPHA,
    UNSTABLE_EDGE,
    UNSTABLE_HATCH,
    SkipFigure,
    add_variant,
    figure_legend,
    format_bytes,
    panel_grid,
    panel_title,
    sort_key,
    styled,
    unstable_handle,
    with_stability,
)

METRICS = (
    ("state_bytes", "optimizer state", "#4c72b0"),
    ("step_peak_bytes", "step peak", "#dd8452"),
)
PANEL_AXES = ("optimizer", "size", "dtype", "device")


def _unit(max_bytes: float) -> tuple[float, str]:
    for scale, unit in ((1e9, "GB"), (1e6, "MB"), (1e3, "kB")):
        if max_bytes >= scale:
            return scale, unit
    return 1.0, "B"


@styled
def memory_overhead(df: pd.DataFrame) -> Figure:
    """State bytes and step peak per implementation/backend, one panel per optimizer/size/dtype/
    device; the dashed line is the params' size."""
    present = [m for m, _, _ in METRICS if m in df.columns]
    if not present or "status" not in df.columns:
        raise SkipFigure("memory overhead: the run has no state_bytes or step_peak_bytes column")
    measured = df[present].apply(pd.to_numeric, errors="coerce").notna().any(axis=1)
    rows = df[(df["status"] == "ok") & measured]
    if rows.empty:
        raise SkipFigure("memory overhead: no ok row has state_bytes or step_peak_bytes")
    rows = add_variant(with_stability(rows), ["world_size"], always=("implementation", "backend"))
    panel_cols = [c for c in PANEL_AXES if c in rows.columns]
    groups = list(rows.groupby(panel_cols, sort=False)) if panel_cols else [((), rows)]
    if {"optimizer", "numel"} <= set(rows.columns):  # small sizes first, as in the other figures
        groups.sort(key=lambda kv: (str(kv[1]["optimizer"].iloc[0]), kv[1]["numel"].iloc[0]))
    n_bars = max(g["variant"].nunique() for _, g in groups)
    fig, axes = panel_grid(len(groups), panel_w=4.8, panel_h=0.5 * n_bars + 1.3, extra_h=0.3)
    height = 0.38
    for ax, (keys, panel) in zip(axes, groups):
        per_variant = panel.groupby("variant", sort=False).agg(
            {
                **{m: "median" for m in present},
                "implementation": "first",
                "backend": "first",
                "unstable": "any",
            }
        )
        order = sorted(per_variant.index, key=lambda v: sort_key(per_variant.loc[v]))[::-1]
        per_variant = per_variant.loc[order]
        params = _param_bytes(panel)
        peak = np.nanmax([per_variant[present].to_numpy(dtype=float).max(), params or 0.0])
        scale, unit = _unit(peak)
        y = np.arange(len(order))
        for k, (metric, label, color) in enumerate(m for m in METRICS if m[0] in present):
            values = per_variant[metric].to_numpy(dtype=float)
            offset = (k - (len(present) - 1) / 2) * height
            bars = ax.barh(y + offset, values / scale, height, label=label, color=color)
            for bar, shaky in zip(bars, per_variant["unstable"]):
                if shaky:
                    bar.set(hatch=UNSTABLE_HATCH, alpha=UNSTABLE_ALPHA, edgecolor=UNSTABLE_EDGE)
            for yi, v in zip(y + offset, values):
                text = format_bytes(v) if np.isfinite(v) else "n/a"
                ax.text(v / scale if np.isfinite(v) else 0, yi, f" {text}", va="center", fontsize=7)
        if params:
            ax.axvline(params / scale, color="black", ls="--", lw=1, label="params")
        ax.set_yticks(y, labels=order)
        ax.set_xlim(0, peak / scale * 1.35)  # room for the value labels right of the bars
        ax.set_xlabel(unit)
        ax.grid(axis="y", visible=False)
        ax.set_title(panel_title(keys, panel_cols), loc="left")
    figure_legend(fig, axes, extra=[unstable_handle()] if rows["unstable"].any() else [])
    title = "Memory: state kept between steps, and one step's peak above params + grads"
    fig.suptitle(title, x=0.01, ha="left")
    return fig


def _param_bytes(panel: pd.DataFrame) -> float | None:
    if "numel" not in panel or "dtype" not in panel:
        return None
    itemsize = DTYPE_BYTES.get(str(panel["dtype"].iloc[0]))
    return float(panel["numel"].iloc[0]) * itemsize if itemsize else None
