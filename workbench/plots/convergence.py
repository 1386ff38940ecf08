"""Convergence figures: loss curves per test problem, and 2-D trajectories over the loss surface.

They read the convergence runner's row columns: `problem`, `loss_curve` (loss per step),
`loss_time_s` (wall-clock seconds at each of those points) and `trajectory` ([x, y] per step, 2-D
problems only). Runs without them (latency sweeps) skip these figures with the reason.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
from matplotlib import colors
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from ._common import (
    SkipFigure,
    add_variant,
    as_floats,
    figure_legend,
    line_styles,
    panel_grid,
    sort_key,
    styled,
)

LINE_AXES = ("optimizer", "implementation", "backend", "dtype", "device")


def _line_key(lines: pd.DataFrame) -> tuple:
    first = lines.iloc[0]
    return (str(first.get("optimizer", "")), *sort_key(first))


def _convergence_rows(df: pd.DataFrame, needed: tuple[str, ...], what: str) -> pd.DataFrame:
    missing = [c for c in ("problem", *needed) if c not in df.columns]
    if missing:
        raise SkipFigure(
            f"{what}: the run lacks column(s) {', '.join(missing)} (not a convergence run)"
        )
    # Every row with a curve: a diverged case keeps its curve up to the blow-up, which is the
    # point of drawing it; failed and skipped rows have none.
    rows = df[df["problem"].notna()]
    for c in needed:
        rows = rows[rows[c].map(lambda v: as_floats(v).size > 0)]
    if rows.empty:
        raise SkipFigure(f"{what}: no row has a non-empty {', '.join(needed)}")
    # Lines are named by what varies among them; the optimizer always, since it is what a
    # convergence comparison is about.
    always = [c for c in ("optimizer",) if c in rows.columns]
    rest = [c for c in LINE_AXES if c not in always]
    return add_variant(rows, rest, always=always)


@styled
def convergence_curves(df: pd.DataFrame, x: str = "step") -> Figure:
    """Loss vs step (`x="step"`) or vs wall-clock seconds (`x="time"`), one panel per problem,
    one line per variant (repeats as thin lines of the same look)."""
    if x not in ("step", "time"):
        raise ValueError(f"x must be 'step' or 'time', got {x!r}")
    what = f"convergence vs {x}"
    needed = ("loss_curve",) if x == "step" else ("loss_curve", "loss_time_s")
    rows = _convergence_rows(df, needed, what)
    styles = line_styles(rows, color_by="optimizer")
    problems = sorted(rows["problem"].astype(str).unique())
    fig, axes = panel_grid(len(problems), panel_h=3.0, extra_h=0.4)
    for ax, problem in zip(axes, problems):
        _draw_losses(ax, rows[rows["problem"].astype(str) == problem], styles, x)
        ax.set_title(problem, loc="left")
        ax.set_xlabel("step" if x == "step" else "wall-clock (s)")
        ax.set_ylabel("loss")
    figure_legend(fig, axes)
    title = "Loss vs step" if x == "step" else "Loss vs wall-clock time"
    fig.suptitle(title, x=0.01, ha="left")
    return fig


def _draw_losses(ax: Axes, panel: pd.DataFrame, styles: dict[str, dict], x: str) -> None:
    """One problem's curves; a diverged curve ends in an x, and the view stops a decade above
    the worst starting loss so that a blow-up to 1e30 does not flatten every other curve."""
    all_positive, starts, blowups = True, [], []
    for variant, lines in sorted(panel.groupby("variant"), key=lambda kv: _line_key(kv[1])):
        style = {**styles[variant], "marker": None}
        for i, (_, row) in enumerate(lines.iterrows()):
            loss = as_floats(row["loss_curve"])
            xs = np.arange(loss.size) if x == "step" else as_floats(row["loss_time_s"])
            n = min(loss.size, xs.size)  # a curve cut short by a failure: draw what there is
            loss, xs = loss[:n], xs[:n]
            finite = np.isfinite(loss) & np.isfinite(xs)
            if not finite.any():
                continue
            all_positive &= bool((loss[finite] > 0).all())
            starts.append(loss[finite][0])
            first = i == 0  # repeats after the first: thinner, fainter, unlabelled
            ax.plot(
                xs,
                loss,
                lw=1.3 if first else 0.6,
                alpha=1 if first else 0.5,
                label=variant if first else None,
                **style,
            )
            if row.get("status") == "diverged":
                last = np.flatnonzero(finite)[-1]
                blowups.append((xs[last], loss[last], style["color"]))
    targets = pd.to_numeric(panel.get("target_loss", pd.Series()), errors="coerce").dropna()
    if len(targets) and (targets.iloc[0] > 0 or not all_positive):
        ax.axhline(targets.iloc[0], color="black", ls=":", lw=1, label="target loss")
    if all_positive:
        ax.set_yscale("log")
    if starts and blowups:
        worst = max(starts)
        top = worst * 10 if all_positive else worst + abs(worst)
        ax.set_ylim(top=min(ax.get_ylim()[1], top))
    for bx, by, color in blowups:
        y = min(by, ax.get_ylim()[1])
        ax.plot(bx, y, "x", color=color, ms=7, mew=2, label="diverged", clip_on=False)


@dataclass(frozen=True)
class Surface:
    """A 2-D test function as numpy, the window it is usually drawn in, and its minimum."""

    f: Callable[[np.ndarray, np.ndarray], np.ndarray]
    window: tuple[float, float, float, float]  # x0, x1, y0, y1
    minimum: tuple[float, float]


# The same functions as workbench.problems.functions (which are torch), in numpy for the contour.
SURFACES: dict[str, Surface] = {
    "rosenbrock-2d": Surface(
        f=lambda x, y: 100 * (y - x**2) ** 2 + (1 - x) ** 2,
        window=(-2.0, 2.0, -1.0, 3.0),
        minimum=(1.0, 1.0),
    ),
    "rastrigin-2d": Surface(
        f=lambda x, y: 20 + x**2 - 10 * np.cos(2 * np.pi * x) + y**2 - 10 * np.cos(2 * np.pi * y),
        window=(-4.0, 4.0, -4.0, 4.0),
        minimum=(0.0, 0.0),
    ),
}


def _path(value: object) -> np.ndarray:
    """A trajectory cell as an (n, 2) float array; empty when absent or malformed."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return np.empty((0, 2))
    try:
        pts = np.array([np.asarray(p, dtype=float).reshape(-1)[:2] for p in value], dtype=float)
    except (TypeError, ValueError):
        return np.empty((0, 2))
    return pts if pts.ndim == 2 and pts.shape[1] == 2 else np.empty((0, 2))


def _window(surface: Surface, paths: list[np.ndarray]) -> tuple[float, float, float, float]:
    """The usual window, grown to hold the paths, but not without bound: a diverged path would
    shrink the valley to a dot."""
    x0, x1, y0, y1 = surface.window
    pts = np.concatenate([p for p in paths if p.size] or [np.empty((0, 2))])
    pts = pts[np.isfinite(pts).all(axis=1)]
    if pts.size:
        w, h = x1 - x0, y1 - y0
        x0, x1 = max(min(x0, pts[:, 0].min()), x0 - w), min(max(x1, pts[:, 0].max()), x1 + w)
        y0, y1 = max(min(y0, pts[:, 1].min()), y0 - h), min(max(y1, pts[:, 1].max()), y1 + h)
    pad_x, pad_y = 0.05 * (x1 - x0), 0.05 * (y1 - y0)
    return x0 - pad_x, x1 + pad_x, y0 - pad_y, y1 + pad_y


@styled
def trajectories(df: pd.DataFrame, problem: str = "rosenbrock-2d") -> Figure:
    """Each optimizer's path on a 2-D problem over the function's contour; one panel per
    optimizer, one line per implementation/backend (which should lie on top of each other)."""
    if problem not in SURFACES:
        raise ValueError(f"no surface for {problem!r}; known: {', '.join(SURFACES)}")
    what = f"trajectories on {problem}"
    missing = [c for c in ("problem", "trajectory") if c not in df.columns]
    if missing:
        raise SkipFigure(f"{what}: the run lacks column(s) {', '.join(missing)}")
    rows = df[df["problem"].astype(str) == problem]
    rows = rows.assign(path=rows["trajectory"].map(_path))
    rows = rows[rows["path"].map(lambda p: bool(np.isfinite(p).all(axis=1).any()))]
    if rows.empty:
        raise SkipFigure(f"{what}: no row has a trajectory")
    rows = add_variant(rows, ["dtype", "device"], always=("implementation", "backend"))
    styles = line_styles(rows)
    surface = SURFACES[problem]
    # The view holds the paths that converged or stalled; a diverged one leaves it at the edge.
    kept = rows[rows["status"] != "diverged"] if "status" in rows else rows
    x0, x1, y0, y1 = _window(surface, list(kept["path"]))
    gx, gy = np.meshgrid(np.linspace(x0, x1, 200), np.linspace(y0, y1, 200))
    z = surface.f(gx, gy)
    optimizers = sorted(rows["optimizer"].astype(str).unique()) if "optimizer" in rows else [""]
    fig, axes = panel_grid(len(optimizers), panel_w=3.8, panel_h=3.4, extra_h=0.4)
    for ax, name in zip(axes, optimizers):
        levels = np.logspace(-1, np.log10(max(z.max(), 1.0)), 20)
        # Rasterized: as vectors the contour alone makes a multi-MB SVG; the paths stay vectors.
        ax.contourf(
            gx,
            gy,
            z + 0.1,
            levels=levels,
            norm=colors.LogNorm(),
            cmap="Greys",
            alpha=0.4,
            rasterized=True,
        )
        ax.contour(
            gx,
            gy,
            z + 0.1,
            levels=levels,
            colors="grey",
            linewidths=0.3,
            alpha=0.6,
            rasterized=True,
        )
        panel = rows[rows["optimizer"].astype(str) == name] if name else rows
        variants = sorted(panel.groupby("variant"), key=lambda kv: _line_key(kv[1]))
        # Implementations of one optimizer should trace the same path: each later line is
        # thinner, so that coinciding paths show as one line inside another, not as one.
        widths = np.linspace(4.0, 1.0, len(variants)) if len(variants) > 1 else [1.5]
        for (variant, lines), lw in zip(variants, widths):
            style = {**styles[variant], "marker": None, "linestyle": "-"}
            for i, path in enumerate(lines["path"]):
                ax.plot(path[:, 0], path[:, 1], lw=lw, label=variant if i == 0 else None, **style)
                end = path[np.isfinite(path).all(axis=1)][-1]  # a diverged path ends in inf
                ax.plot(*end, "o", color=style["color"], ms=3 + lw)
        start = panel["path"].iloc[0][0]
        ax.plot(*start, "s", color="black", ms=5, label="start")
        ax.plot(*surface.minimum, "*", color="gold", mec="black", ms=11, label="minimum")
        ax.set_xlim(x0, x1)
        ax.set_ylim(y0, y1)
        diverged = "status" in panel and (panel["status"] == "diverged").all()
        ax.set_title(f"{name} (diverged)" if diverged else name, loc="left")
        ax.grid(False)
    figure_legend(fig, axes)
    fig.suptitle(f"Trajectories on {problem}", x=0.01, ha="left")
    return fig
