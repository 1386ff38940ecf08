"""Figures and the HTML report: the files a run gets, and what a reader must find in the page.

The latency figures are drawn from a copy of the committed sample run (notebooks/sample_run);
convergence figures from a small synthetic convergence run written here (numpy curves: the
figures only read columns, the convergence runner is tested on its own).
"""

from __future__ import annotations

import html
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from workbench.results import RunStore, load, load_manifest

pytest.importorskip("matplotlib", reason="matplotlib not installed (dev extra)")

from workbench.plots import Rendered, plot_run, render_run, write_report  # noqa: E402

SAMPLE_RUN = Path(__file__).resolve().parent.parent / "notebooks" / "sample_run"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
LATENCY_FIGURES = ("latency_vs_size", "speedup_heatmap", "memory_overhead", "bandwidth_fraction")
CONVERGENCE_FIGURES = ("convergence_vs_step", "convergence_vs_time", "trajectory_rosenbrock-2d")
ERROR = "RuntimeError: fused kernel launch failed <sm_90> & friends"
GIT_SHA = "0123456789abcdef0123456789abcdef01234567"


# --- runs to draw (also used by tests/test_notebooks.py) ------------------------------------


def _manifest(run_id: str, n_cases: int) -> dict[str, Any]:
    return {
        "run_id": run_id,
        "suite": "synthetic",
        "n_cases": n_cases,
        "environment": {"git_sha": GIT_SHA, "git_dirty": True, "torch": "2.13.0+cpu"},
        "capabilities": {"cpu": {"kernel_launches": "device is cpu: counts aten ops"}},
    }


def write_run(run_dir: Path, rows: list[dict[str, Any]]) -> Path:
    store = RunStore.create(run_dir, _manifest(run_dir.name, len(rows)), "")
    for row in rows:
        store.append(row)
    store.set_status("complete")
    return run_dir


def failing_copy(src: Path, dst: Path) -> Path:
    """A copy of a run where one ok row failed with ERROR, one lost its memory and bandwidth
    numbers (NaN), and every other step got 30% slower."""
    shutil.copytree(src, dst)
    df = load(dst)
    ok = df.index[df["status"] == "ok"]
    failed, no_numbers = ok[0], ok[1]
    for col in ("median_s", "iqr_s", "min_s", "achieved_bw", "bw_fraction", "state_bytes"):
        df[col] = df[col].astype(float)
        df.loc[failed, col] = np.nan
    df.loc[failed, ["status", "error"]] = ["error", ERROR]
    df["traceback"] = None
    df.loc[failed, "traceback"] = f"Traceback (most recent call last):\n  ...\n{ERROR}"
    df.loc[no_numbers, ["bw_fraction", "step_peak_bytes", "state_bytes"]] = np.nan
    df["median_s"] = df["median_s"] * 1.3
    df["samples_s"] = [None if s is None else np.asarray(s) * 1.3 for s in df["samples_s"]]
    df.to_parquet(dst / "records.parquet", index=False)
    manifest = load_manifest(dst)
    manifest.update(run_id=dst.name, environment={**manifest["environment"], "git_sha": GIT_SHA})
    RunStore(dst, manifest, []).write_manifest()
    return dst


def _curve(rate: float, steps: int = 60) -> list[float]:
    return list(5.0 * np.exp(-rate * np.arange(steps + 1)) + 1e-4)


def write_convergence_run(run_dir: Path) -> Path:
    """Two optimizers x two backends on two problems, one diverged case and one failed case."""
    rows = []
    for problem in ("rosenbrock-2d", "quadratic"):
        for optimizer, rate in (("Adam", 0.08), ("SGD", 0.02)):
            for backend in ("forloop", "foreach"):
                loss = _curve(rate)
                t = np.linspace(-1.5, 0.9, len(loss))
                path = np.stack([t, 2 - 0.8 * (t + 1.5)], axis=1).tolist()
                hit = next((k for k, v in enumerate(loss) if v <= 0.1), None)
                rows.append(
                    {
                        "case_id": f"{problem}-{optimizer}-{backend}",
                        "optimizer": optimizer,
                        "implementation": "workbench",
                        "backend": backend,
                        "size": problem,
                        "dtype": "float32",
                        "device": "cpu",
                        "repeat": 0,
                        "problem": problem,
                        "loss_curve": loss,
                        "loss_time_s": list(np.arange(len(loss)) * 1e-3),
                        "final_loss": loss[-1],
                        "best_loss": min(loss),
                        "target_loss": 0.1,
                        "steps_to_target": hit,
                        "time_to_target_s": None if hit is None else hit * 1e-3,
                        "trajectory": path if problem.endswith("2d") else None,
                        "distance_to_reference": 0.0 if backend == "forloop" else 1e-7,
                        "status": "ok",
                        "error": None,
                    }
                )
    diverged = {**rows[0], "case_id": "diverged", "optimizer": "RAdam", "status": "diverged"}
    diverged.update(loss_curve=[5.0, 40.0, 1e9, float("inf")], error="not finite after 3 steps")
    diverged.update(loss_time_s=[0.0, 1e-3, 2e-3], trajectory=[[-1.5, 2.0], [3.0, 9.0]])
    failed = {**rows[0], "case_id": "failed", "optimizer": "Rprop", "status": "error"}
    failed.update(loss_curve=None, loss_time_s=None, trajectory=None, error=ERROR)
    return write_run(run_dir, [*rows, diverged, failed])


# --- figures ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Rendered]:
    """A copy of the sample run with one failed row and NaN holes, plotted and reported once."""
    run = failing_copy(SAMPLE_RUN, tmp_path_factory.mktemp("runs") / "sample-failing")
    rendered = render_run(run)
    write_report(run, rendered=rendered)
    return run, rendered


def _assert_figure_files(figures: Path, names: tuple[str, ...]) -> None:
    for name in names:
        png, svg = figures / f"{name}.png", figures / f"{name}.svg"
        assert png.read_bytes()[:8] == PNG_MAGIC, png
        assert png.stat().st_size > 5_000, png  # a drawn figure, not an empty canvas
        assert b"<svg" in svg.read_bytes()[:2_000], svg


def test_plot_run_writes_png_and_svg_of_each_latency_figure(tmp_path: Path) -> None:
    run = shutil.copytree(SAMPLE_RUN, tmp_path / "sample")
    paths = plot_run(run)
    expected = {run / "figures" / f"{n}.{ext}" for n in LATENCY_FIGURES for ext in ("png", "svg")}
    assert set(paths) == expected
    _assert_figure_files(run / "figures", LATENCY_FIGURES)


def test_failed_rows_and_nan_still_give_every_latency_figure(
    sample: tuple[Path, Rendered],
) -> None:
    run, rendered = sample
    assert set(LATENCY_FIGURES) <= set(rendered.written), rendered.skipped
    _assert_figure_files(run / "figures", LATENCY_FIGURES)


def test_convergence_figures_are_drawn_when_the_columns_are_there(tmp_path: Path) -> None:
    run = write_convergence_run(tmp_path / "conv")
    rendered = render_run(run)
    assert set(CONVERGENCE_FIGURES) <= set(rendered.written), rendered.skipped
    _assert_figure_files(run / "figures", CONVERGENCE_FIGURES)
    # A convergence run times no step: the latency figures say so instead of drawing nothing.
    assert "median_s" in rendered.skipped["latency_vs_size"]


def test_a_latency_run_skips_the_convergence_figures_with_a_reason(
    sample: tuple[Path, Rendered],
) -> None:
    run, rendered = sample
    for name in CONVERGENCE_FIGURES:
        assert "lacks column" in rendered.skipped[name]
        assert not (run / "figures" / f"{name}.png").exists()


# --- the report -------------------------------------------------------------------------------


def test_the_report_is_one_self_contained_page(sample: tuple[Path, Rendered]) -> None:
    run, _ = sample
    page = (run / "report.html").read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", page, re.I)
    assert "<script" not in page and "<link" not in page
    assert page.count('src="data:image/png;base64,') == len(LATENCY_FIGURES)


def test_the_report_says_where_the_numbers_come_from(sample: tuple[Path, Rendered]) -> None:
    run, _ = sample
    page = (run / "report.html").read_text()
    assert run.name in page  # the run id
    assert GIT_SHA in page and "dirty" in page
    assert "kernel_launches" in page  # a capability the device did not have


def test_the_report_lists_failures_with_their_errors(sample: tuple[Path, Rendered]) -> None:
    run, _ = sample
    page = (run / "report.html").read_text()
    assert html.escape(ERROR) in page  # escaped: "<sm_90>" must not become a tag
    assert "Traceback (most recent call last)" in page
    assert "heavyball" in page  # the sample run's skipped peer


def test_a_run_with_no_ok_row_still_gets_a_report_that_says_so(tmp_path: Path) -> None:
    df = load(SAMPLE_RUN)
    rows = [
        {**r, "status": "error", "error": ERROR, "median_s": None}
        for r in df.head(3).to_dict("records")
    ]
    run = write_run(tmp_path / "all-failed", rows)
    page = write_report(run).read_text()
    assert "No case finished ok" in page and "3 error" in page
    assert "No figure" in page and "data:image/png" not in page
    assert html.escape(ERROR) in page


def test_a_run_without_rows_yet_gets_a_report(tmp_path: Path) -> None:
    run = tmp_path / "empty"
    RunStore.create(run, _manifest("empty", 4), "")
    page = write_report(run).read_text()
    assert "holds no rows yet" in page and GIT_SHA in page


def test_cli_plot_and_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from workbench.cli import main

    rows = [{**r, "status": "skipped"} for r in load(SAMPLE_RUN).head(2).to_dict("records")]
    run = write_run(tmp_path / "skipped", rows)  # no figure to draw: the commands, not plotting
    assert main(["plot", str(run)]) == 0
    assert "skipped latency_vs_size" in capsys.readouterr().out
    assert main(["report", str(run)]) == 0
    assert "No case finished ok" in (run / "report.html").read_text()
    assert main(["report", str(tmp_path / "no-such-run")]) == 2


def test_summary_rows_of_the_sample_run_are_what_the_notebooks_expect() -> None:
    df = load(SAMPLE_RUN)
    assert {"ok", "skipped"} <= set(df["status"])
    assert pd.api.types.is_numeric_dtype(df["median_s"]) and df["samples_s"].notna().any()
