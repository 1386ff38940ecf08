"""What every figure shares: the style, panel grids, line labels and colours, and saving.

Figures are built on `matplotlib.figure.Figure` directly, never through pyplot: no global state,
no display needed, and saving picks the Agg (PNG) or SVG canvas by file type. So the package can
be used from a CI job, a thread, or a notebook without touching the notebook's own backend.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, ParamSpec

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.artist import Artist
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from workbench.results.summary import unstable

P = ParamSpec("P")

STYLE: dict[str, Any] = {
    "font.size": 9,
    "axes.titlesize": 9,
    "axes.labelsize": 9,
    "legend.fontsize": 8,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "grid.linewidth": 0.5,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "figure.dpi": 100,
    "savefig.dpi": 130,
    # A fixed salt makes SVG element ids, hence the files, the same from one rendering to the next.
    "svg.hashsalt": "workbench",
}

# Backends in the order a reader reasons about them: reference first, then the faster designs.
BACKEND_ORDER = ("forloop", "foreach", "fused", "compiled", "default")
IMPLEMENTATION_ORDER = ("workbench", "torch")
FLAG_PREFIX = "flag_"
DTYPE_BYTES = {"float64": 8, "float32": 4, "bfloat16": 2, "float16": 2}
MIN_WIDTH = 7.0  # inches

# How a figure marks a point, bar or cell drawn from a row that carries a stability flag (or is
# recorded as not stable): hatched and faded, so the number is still readable but not trusted.
UNSTABLE_LABEL = "unstable / flagged"
UNSTABLE_HATCH = "///"
UNSTABLE_ALPHA = 0.45
UNSTABLE_EDGE = "#c0392b"


class SkipFigure(Exception):
    """A figure the run has no data for; the message says why (logged, listed in the report)."""


def styled(fn: Callable[P, Figure]) -> Callable[P, Figure]:
    """Build the figure under the package style, whatever the caller's rcParams are."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> Figure:
        with matplotlib.rc_context(STYLE):
            return fn(*args, **kwargs)

    return wrapper


def ok_rows(df: pd.DataFrame, needed: Sequence[str], what: str) -> pd.DataFrame:
    """The rows with status ok and a finite value in every `needed` column, or SkipFigure."""
    missing = [c for c in needed if c not in df.columns]
    if missing:
        raise SkipFigure(f"{what}: the run lacks column(s) {', '.join(missing)}")
    rows = df[df["status"] == "ok"] if "status" in df.columns else df
    for c in needed:
        values = pd.to_numeric(rows[c], errors="coerce")
        rows = rows[np.isfinite(values.astype(float))]
    if rows.empty:
        raise SkipFigure(f"{what}: no ok row has {', '.join(needed)}")
    return rows


def with_stability(df: pd.DataFrame) -> pd.DataFrame:
    """A copy with `world_size` (1 where the run has none: older runs ran one process) and
    `unstable` (see workbench.results.summary.unstable; False where the run records nothing).

    world_size is an axis like dtype, never pooled: a 2-rank step does other work than a 1-rank
    one, so a median over both would describe neither.
    """
    out = df.copy()
    ranks = pd.to_numeric(out["world_size"], errors="coerce") if "world_size" in out else None
    out["world_size"] = 1 if ranks is None else ranks.fillna(1).astype(int)
    out["unstable"] = unstable(out)
    return out


def unstable_handle() -> Patch:
    """The legend entry for the marks of unstable/flagged rows."""
    return Patch(
        facecolor="white", edgecolor=UNSTABLE_EDGE, hatch=UNSTABLE_HATCH, label=UNSTABLE_LABEL
    )


def as_floats(value: object) -> np.ndarray:
    """A list column's cell as a 1-D float array; None, NaN and empty cells give an empty array.

    Parquet gives lists back as numpy object arrays; inf becomes NaN so a diverged run shows as a
    gap, not as a line to the edge of the axes.
    """
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return np.empty(0)
    arr = np.array(value, dtype=float).reshape(-1)  # a copy: parquet arrays are read-only
    arr[~np.isfinite(arr)] = np.nan
    return arr


def flag_columns(df: pd.DataFrame) -> list[str]:
    return [c for c in df.columns if c.startswith(FLAG_PREFIX)]


def varying(df: pd.DataFrame, columns: Iterable[str]) -> list[str]:
    """The columns among `columns` that take more than one value in `df` (NaN counts as one)."""
    return [c for c in columns if c in df.columns and df[c].astype(str).nunique() > 1]


def _rank(value: str, order: Sequence[str]) -> tuple[int, str]:
    return (order.index(value) if value in order else len(order), value)


def sort_key(row: pd.Series | dict[str, Any]) -> tuple:
    """Workbench before torch before peers; forloop, foreach, fused, compiled, default."""
    return (
        _rank(str(row.get("implementation", "")), IMPLEMENTATION_ORDER),
        _rank(str(row.get("backend", "")), BACKEND_ORDER),
    )


# Axes whose bare values would not say what they are (a "2" in a label): named like flags.
NAMED_AXES = ("world_size",)


def add_variant(df: pd.DataFrame, axes: Sequence[str], always: Sequence[str] = ()) -> pd.DataFrame:
    """Add a `variant` column naming each line: the `always` columns, then those of `axes` and the
    flags that vary in `df` (lines differing only in a flag must differ in their label too),
    joined with '/'. Axis values name themselves (foreach, bfloat16); flags and NAMED_AXES get
    their name (world_size=2)."""
    extra = [c for c in varying(df, [*axes, *flag_columns(df)]) if c not in always]
    out = df.copy()

    def name(row: pd.Series) -> str:
        parts = [str(row[c]) for c in always if c in row]
        for c in extra:
            named = c.startswith(FLAG_PREFIX) or c in NAMED_AXES
            parts.append(f"{c.removeprefix(FLAG_PREFIX)}={row[c]}" if named else str(row[c]))
        return "/".join(parts)

    out["variant"] = out.apply(name, axis=1) if not out.empty else pd.Series(dtype=str)
    return out


def variant_order(df: pd.DataFrame) -> list[str]:
    firsts = df.drop_duplicates("variant")
    return [r["variant"] for _, r in sorted(firsts.iterrows(), key=lambda ir: sort_key(ir[1]))]


IMPLEMENTATION_LOOKS = {"workbench": ("-", "o"), "torch": ("--", "s")}  # peers: (":", "^")
DASHES = ("-", "--", ":", "-.")


def line_styles(df: pd.DataFrame, color_by: str | None = None) -> dict[str, dict[str, Any]]:
    """Colour, line style and marker per variant, fixed for the whole figure so that a line keeps
    its look from panel to panel.

    By default colour tells the variants apart and line style and marker say the implementation
    (ours solid and round, torch dashed and square, peers dotted). With `color_by` (say
    "optimizer") the colour follows that column and the line style tells apart the variants that
    share a colour.
    """
    order = variant_order(df)
    firsts = df.drop_duplicates("variant").set_index("variant")
    impl_of = firsts["implementation"] if "implementation" in firsts else pd.Series(dtype=str)
    if color_by in firsts:
        keys = firsts[color_by].astype(str)
        groups = list(dict.fromkeys(keys[v] for v in order))
    else:
        keys = pd.Series({v: v for v in order})
        groups = order
    palette = matplotlib.colormaps["tab10" if len(groups) <= 10 else "tab20"].colors
    styles: dict[str, dict[str, Any]] = {}
    seen: dict[str, int] = {}
    for variant in order:
        group = keys[variant]
        color = palette[groups.index(group) % len(palette)]
        if color_by in firsts:
            k = seen[group] = seen.get(group, -1) + 1
            ls, marker = DASHES[k % len(DASHES)], "o"
        else:
            ls, marker = IMPLEMENTATION_LOOKS.get(str(impl_of.get(variant, "")), (":", "^"))
        styles[variant] = {"color": color, "linestyle": ls, "marker": marker}
    return styles


def panel_grid(
    n: int, *, ncols: int = 3, panel_w: float = 4.2, panel_h: float = 3.2, extra_h: float = 0.0
) -> tuple[Figure, list[Any]]:
    """A constrained-layout figure with `n` panels in rows of at most `ncols`."""
    ncols = max(1, min(n, ncols))
    nrows = math.ceil(n / ncols)
    # At least MIN_WIDTH: a lone panel still needs room for the title and the legend under it.
    width = max(panel_w * ncols, MIN_WIDTH)
    fig = Figure(figsize=(width, panel_h * nrows + extra_h), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel().tolist()
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes[:n]


def panel_title(keys: object, names: Sequence[str]) -> str:
    values = keys if isinstance(keys, tuple) else (keys,)
    return " · ".join(str(v) for v in values) if names else ""


def figure_legend(fig: Figure, axes: Sequence[Any], extra: Sequence[Artist] = ()) -> None:
    """One legend for all panels, under them: the lines are the same in each panel, and a legend
    inside a panel hides data. `extra`: entries no panel draws itself (proxy artists). The
    unstable/flagged entry comes last, after the lines it qualifies."""
    handles, labels = {}, []
    found = [zip(*ax.get_legend_handles_labels()) for ax in axes]
    found.append((h, h.get_label()) for h in extra)
    for pairs in found:
        for h, label in pairs:
            if label not in handles:
                handles[label] = h
                labels.append(label)
    if UNSTABLE_LABEL in labels:
        labels.remove(UNSTABLE_LABEL)
        labels.append(UNSTABLE_LABEL)
    if labels:
        longest = max(len(label) for label in labels)
        # as many columns as the figure's width holds at ~0.065 in per character plus the handle
        ncols = max(1, int(fig.get_figwidth() / (0.065 * longest + 0.6)))
        fig.legend(
            [handles[label] for label in labels],
            labels,
            loc="outside lower center",
            ncols=min(ncols, len(labels)),
            frameon=False,
        )


def format_bytes(n: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n:.0f} B"


def save(fig: Figure, directory: Path, name: str, formats: Sequence[str]) -> list[Path]:
    """Write `fig` as `<directory>/<name>.<fmt>` for each format; returns the paths."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    with matplotlib.rc_context(STYLE):
        for fmt in formats:
            path = directory / f"{name}.{fmt}"
            # No creation date in the files: re-plotting an unchanged run gives the same bytes.
            metadata = {"Date": None} if fmt == "svg" else {"Software": None}
            fig.savefig(path, format=fmt, metadata=metadata)
            paths.append(path)
    return paths
