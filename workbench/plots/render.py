"""Every figure of a run, written under `<run>/figures/` as PNG and SVG.

The table FIGURES is the one place that says which figures a run gets; `workbench plot` and the
report both go through `render_run`, so they always agree on the set and on why one is missing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib.figure import Figure

from workbench.results.store import MANIFEST, RECORDS, load, load_manifest

from ._common import SkipFigure, save
from .convergence import convergence_curves, trajectories
from .memory import memory_overhead
from .performance import bandwidth_fraction, latency_vs_size, speedup_heatmap

log = logging.getLogger(__name__)

FIGURES_DIR = "figures"
FORMATS = ("png", "svg")


@dataclass(frozen=True)
class FigureSpec:
    name: str  # file stem under figures/
    title: str
    caption: str  # how to read it, for the report
    build: Callable[[pd.DataFrame, dict[str, Any]], Figure]


FIGURES: tuple[FigureSpec, ...] = (
    FigureSpec(
        "latency_vs_size",
        "Latency vs size",
        "Median step time against elements stepped, log-log; bars are the IQR of the raw samples. "
        "Lower is better. A ringed point is drawn from an unstable or flagged row.",
        lambda df, m: latency_vs_size(df),
    ),
    FigureSpec(
        "speedup_heatmap",
        "Speedup over torch.optim",
        "torch.optim's fastest median for the same problem divided by this median, measured side "
        "by side in this run. Above 1x is faster than torch.optim; grey cells did not run ok, "
        "hatched ones come from an unstable or flagged row.",
        lambda df, m: speedup_heatmap(df),
    ),
    FigureSpec(
        "memory_overhead",
        "Memory overhead",
        "Optimizer state (kept between steps) and one step's peak above params and grads, per "
        "implementation/backend; the dashed line is the params' own size. Hatched, faded bars "
        "come from an unstable or flagged row.",
        lambda df, m: memory_overhead(df),
    ),
    FigureSpec(
        "bandwidth_fraction",
        "Bandwidth roofline",
        "Minimal bytes moved per step / median time, as a fraction of a streaming-bandwidth "
        "probe (the faster of a copy and an in-place add, median pass) measured on the same "
        "device in this run. 1.0 is the roofline.",
        lambda df, m: bandwidth_fraction(df, m.get("stream_bandwidth")),
    ),
    FigureSpec(
        "convergence_vs_step",
        "Convergence vs step",
        "Loss per step on each test problem.",
        lambda df, m: convergence_curves(df, x="step"),
    ),
    FigureSpec(
        "convergence_vs_time",
        "Convergence vs wall-clock",
        "Loss against wall-clock seconds on each test problem: what a faster step buys.",
        lambda df, m: convergence_curves(df, x="time"),
    ),
    FigureSpec(
        "trajectory_rosenbrock-2d",
        "Trajectories on Rosenbrock",
        "Paths from (-1.5, 2) through the banana valley towards the minimum at (1, 1).",
        lambda df, m: trajectories(df, "rosenbrock-2d"),
    ),
    FigureSpec(
        "trajectory_rastrigin-2d",
        "Trajectories on Rastrigin",
        "Paths from (-2, 3.5) over the egg crate towards the minimum at (0, 0).",
        lambda df, m: trajectories(df, "rastrigin-2d"),
    ),
)


@dataclass
class Rendered:
    """What one rendering of a run produced: files per figure, and why the others are missing."""

    run_dir: Path
    written: dict[str, list[Path]] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)

    def paths(self) -> list[Path]:
        return [p for paths in self.written.values() for p in paths]

    def png(self, name: str) -> Path | None:
        return next((p for p in self.written.get(name, []) if p.suffix == ".png"), None)


def load_run(run_dir: Path) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Records and manifest; a run that has not flushed a row yet gives an empty frame."""
    manifest = load_manifest(run_dir)  # raises RunStoreError for a directory that is no run
    records = load(run_dir) if (run_dir / RECORDS).exists() else pd.DataFrame()
    if "status" not in records.columns:
        records["status"] = pd.Series(dtype=str)
    return records, manifest


def render_run(
    run_dir: str | Path,
    formats: Sequence[str] = FORMATS,
    figures: Sequence[FigureSpec] = FIGURES,
) -> Rendered:
    """Build every figure of the run and write it under `<run>/figures/`.

    A figure the run has no data for is skipped with its reason (logged, and kept in
    `Rendered.skipped`); so is one whose plotting raises, so that one bad figure never costs the
    others or the report.
    """
    run_dir = Path(run_dir)
    if not (run_dir / MANIFEST).exists() and (run_dir.parent / MANIFEST).exists():
        run_dir = run_dir.parent  # given records.parquet itself
    df, manifest = load_run(run_dir)
    out = Rendered(run_dir)
    target = run_dir / FIGURES_DIR
    for spec in figures:
        try:
            fig = spec.build(df, manifest)
        except SkipFigure as e:
            reason = str(e)
        except Exception as e:  # a plotting bug on odd data must not take the report down
            log.warning("figure %s failed", spec.name, exc_info=True)
            reason = f"plotting failed: {type(e).__name__}: {e}"
        else:
            out.written[spec.name] = save(fig, target, spec.name, formats)
            continue
        out.skipped[spec.name] = reason
        log.info("figure %s skipped: %s", spec.name, reason)
        for fmt in formats:  # a stale file from an earlier rendering would contradict the reason
            (target / f"{spec.name}.{fmt}").unlink(missing_ok=True)
    return out


def plot_run(run_dir: str | Path) -> list[Path]:
    """Write every figure the run has data for as PNG and SVG under `<run>/figures/`."""
    return render_run(run_dir).paths()
