"""Figures and the HTML report of a run (matplotlib, no display needed).

`plot_run(run_dir)` writes every figure the run has data for under `<run>/figures/` (PNG + SVG);
`write_report(run_dir)` writes `<run>/report.html`, one self-contained page. The figure functions
take a run's DataFrame and return a matplotlib Figure, for notebooks.
"""

from ._common import SkipFigure
from .convergence import convergence_curves, trajectories
from .memory import memory_overhead
from .performance import bandwidth_fraction, latency_vs_size, speedup_heatmap
from .render import FIGURES, Rendered, plot_run, render_run
from .report import write_report

__all__ = [
    "FIGURES",
    "Rendered",
    "SkipFigure",
    "bandwidth_fraction",
    "convergence_curves",
    "latency_vs_size",
    "memory_overhead",
    "plot_run",
    "render_run",
    "speedup_heatmap",
    "trajectories",
    "write_report",
]
