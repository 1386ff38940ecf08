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


FLAGGED = ["noisy", "interference"]


def write_stability_run(run_dir: Path) -> Path:
    """The sample run's ok rows at world_size 1 and again at world_size 2 (slower, half the
    state), with the stability columns; one world_size 2 row (workbench/foreach at the largest
    size) flagged FLAGGED, and a no-op row."""
    base = load(SAMPLE_RUN)
    base = base[base["status"] == "ok"].to_dict("records")
    rows = []
    for ranks, slower, state in ((1, 1.0, 1.0), (2, 1.7, 0.5)):
        for r in base:
            rows.append(
                {
                    **r,
                    "case_id": f"{r['case_id']}-ws{ranks}",
                    "world_size": ranks,
                    "median_s": r["median_s"] * slower,
                    "samples_s": [s * slower for s in r["samples_s"]],
                    "state_bytes": r["state_bytes"] * state,
                    "stable": True,
                    "noise": 0.01,
                    "flags": [],
                    "other_cpu": 0.0,
                }
            )
    largest = max(r["numel"] for r in base)
    flagged = next(
        r
        for r in rows
        if (r["world_size"], r["implementation"], r["backend"], r["numel"])
        == (2, "workbench", "foreach", largest)
    )
    flagged.update(stable=False, noise=0.12, flags=list(FLAGGED), other_cpu=0.4)
    noop = {**rows[0], "case_id": "noop", "status": "no-op", "stable": False, "noise": None}
    noop.update(error="a step changed no param", median_s=None, samples_s=None)
    return write_run(run_dir, [*rows, noop])


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
    diverged = {**rows[0], "case_id": "diverged", "optimizer": "Diverging", "status": "diverged"}
    diverged.update(loss_curve=[5.0, 40.0, 1e9, float("inf")], error="not finite after 3 steps")
    diverged.update(loss_time_s=[0.0, 1e-3, 2e-3], trajectory=[[-1.5, 2.0], [3.0, 9.0]])
    failed = {**rows[0], "case_id": "failed", "optimizer": "Failing", "status": "error"}
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


# --- stability marks and world_size ---------------------------------------------------------


@pytest.fixture(scope="module")
def stability_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame]:
    run = write_stability_run(tmp_path_factory.mktemp("runs") / "stability")
    return run, load(run)


def _flagged(df: pd.DataFrame) -> pd.Series:
    return df[df["flags"].map(len) > 0].iloc[0]


def test_summary_table_has_noise_and_flags_right_after_the_iqr(
    stability_run: tuple[Path, pd.DataFrame],
) -> None:
    from workbench.results.summary import summary_table

    _, df = stability_run
    table = summary_table(df)
    cols = list(table.columns)
    assert cols[cols.index("IQR ms") + 1 : cols.index("IQR ms") + 3] == ["± %", "flags"]
    flagged = table[table["flags"] != ""]
    assert flagged["flags"].tolist() == [", ".join(FLAGGED)]
    assert flagged["± %"].tolist() == pytest.approx([12.0])
    assert set(table.loc[table["flags"] == "", "± %"].dropna()) == {1.0}
    # an older run has neither column, and the table still builds
    assert not {"± %", "flags"} & set(summary_table(load(SAMPLE_RUN)).columns)


def test_the_report_marks_the_flagged_row_and_explains_every_flag(
    stability_run: tuple[Path, pd.DataFrame],
) -> None:
    from workbench.harness.stability import STABILITY_FLAGS
    from workbench.results.summary import FLAG_MEANINGS

    run, df = stability_run
    page = write_report(run).read_text()
    marked = re.findall(r'<tr class="unstable">(.*?)</tr>', page)
    assert len(marked) == 1
    cells = re.findall(r"<td[^>]*>(.*?)</td>", marked[0])
    row = _flagged(df)
    assert cells[:3] == [row["optimizer"], row["implementation"], row["backend"]]
    assert cells[6] == "2"  # ranks: the world_size 2 copy, not its world_size 1 twin
    assert f'<span class="mark">⚠</span> {", ".join(FLAGGED)}' in cells
    assert page.count('<td><span class="mark">') == 1
    # the count at the top, with the no-op row among the statuses that are not ok
    n_ok = int((df["status"] == "ok").sum())
    assert f"{n_ok - 1} of {n_ok} ok rows stable; 1 flagged" in page
    assert "not ok: 1 no-op" in page
    # one legend line per flag the harness can set, in the words the harness means
    assert set(STABILITY_FLAGS) <= set(FLAG_MEANINGS)
    for flag, meaning in FLAG_MEANINGS.items():
        assert f"<li><b>{flag}</b>: {html.escape(meaning)}</li>" in page
    assert "other processes took CPU" in FLAG_MEANINGS["interference"]


def test_a_report_of_an_older_run_marks_nothing_and_says_why(
    sample: tuple[Path, Rendered], tmp_path: Path
) -> None:
    run, _ = sample
    page = (run / "report.html").read_text()
    assert "Stability not recorded" in page
    assert 'class="unstable"' not in page and '<td><span class="mark">' not in page
    assert (
        '<td><span class="mark">' in write_report(write_stability_run(tmp_path / "new")).read_text()
    )


def _panel(fig: Any, title_part: str) -> Any:
    (ax,) = [a for a in fig.axes if title_part in a.get_title(loc="left")]
    return ax


def _medians(df: pd.DataFrame, impl: str, backend: str, value: str) -> dict[int, list[float]]:
    rows = df[(df["status"] == "ok") & (df["implementation"] == impl) & (df["backend"] == backend)]
    rows = rows.sort_values("numel")
    return {ws: g[value].tolist() for ws, g in rows.groupby("world_size")}


@pytest.mark.parametrize(
    ("figure", "value"), [("latency", "median_s"), ("bandwidth", "bw_fraction")]
)
def test_line_figures_draw_one_line_per_world_size(
    stability_run: tuple[Path, pd.DataFrame], figure: str, value: str
) -> None:
    from workbench.plots import bandwidth_fraction, latency_vs_size

    _, df = stability_run
    fig = (latency_vs_size if figure == "latency" else bandwidth_fraction)(df)
    ax = _panel(fig, "Adamax")
    lines = {c.get_label(): c.lines[0].get_ydata() for c in ax.containers}
    expected = _medians(df, "workbench", "foreach", value)
    assert set(expected) == {1, 2}
    for ws, ys in expected.items():
        # each world size's own values, not a median pooled over both
        assert list(lines[f"workbench/foreach/world_size={ws}"]) == pytest.approx(ys)


def test_memory_figure_draws_one_bar_per_world_size(
    stability_run: tuple[Path, pd.DataFrame],
) -> None:
    from workbench.plots import memory_overhead

    _, df = stability_run
    ax = _panel(memory_overhead(df), "10x30k")
    labels = [t.get_text() for t in ax.get_yticklabels()]
    state = {lab: bar.get_width() for lab, bar in zip(labels, ax.containers[0])}
    one, two = state["workbench/forloop/world_size=1"], state["workbench/forloop/world_size=2"]
    assert two == pytest.approx(one / 2)  # the synthetic world_size 2 rows hold half the state


def _memory_bars(ax: Any) -> dict[str, list[Any]]:
    labels = [t.get_text() for t in ax.get_yticklabels()]
    bars: dict[str, list[Any]] = {lab: [] for lab in labels}
    for container in ax.containers:
        for lab, bar in zip(labels, container):
            bars[lab].append(bar)
    return bars


def test_figures_hatch_and_fade_the_flagged_row(stability_run: tuple[Path, pd.DataFrame]) -> None:
    from workbench.plots import latency_vs_size, memory_overhead, speedup_heatmap
    from workbench.plots._common import UNSTABLE_HATCH, UNSTABLE_LABEL

    _, df = stability_run
    row = _flagged(df)
    flagged = f"{row['implementation']}/{row['backend']}/world_size=2"

    fig = memory_overhead(df)
    for ax in fig.axes:
        for label, bars in _memory_bars(ax).items():
            shaky = label == flagged and row["size"] in ax.get_title(loc="left")
            for bar in bars:
                assert (bar.get_hatch() == UNSTABLE_HATCH) is shaky, (label, ax.get_title())
                assert (bar.get_alpha() is not None and bar.get_alpha() < 1) is shaky
    assert UNSTABLE_LABEL in [t.get_text() for t in fig.legends[0].get_texts()]

    fig = latency_vs_size(df)
    rings = [c for c in fig.axes[0].collections if c.get_label() == UNSTABLE_LABEL]
    assert len(rings) == 1
    assert rings[0].get_offsets().tolist() == [[row["numel"], row["median_s"]]]
    assert rings[0].get_hatch() == UNSTABLE_HATCH
    assert UNSTABLE_LABEL in [t.get_text() for t in fig.legends[0].get_texts()]

    ax = speedup_heatmap(df).axes[0]
    cells = [p for p in ax.patches if p.get_hatch() == UNSTABLE_HATCH]
    assert len(cells) == 1
    rows = [t.get_text() for t in ax.get_yticklabels()]
    cols = [t.get_text() for t in ax.get_xticklabels()]
    x, y = cells[0].get_xy()
    assert rows[round(y + 0.5)] == f"{row['optimizer']} · {row['size']} · world_size=2"
    assert cols[round(x + 0.5)] == f"{row['implementation']}/{row['backend']}"


def test_figures_of_an_older_run_mark_nothing(tmp_path: Path) -> None:
    from workbench.plots import latency_vs_size, memory_overhead, speedup_heatmap
    from workbench.plots._common import UNSTABLE_HATCH, UNSTABLE_LABEL

    df = load(SAMPLE_RUN)
    for make in (latency_vs_size, memory_overhead, speedup_heatmap):
        fig = make(df)
        artists = [a for ax in fig.axes for a in (*ax.patches, *ax.collections)]
        assert not [a for a in artists if getattr(a, "get_hatch", lambda: None)()], make
        texts = [t.get_text() for legend in fig.legends for t in legend.get_texts()]
        assert UNSTABLE_LABEL not in texts and not any("world_size" in t for t in texts)
    assert UNSTABLE_HATCH  # the constant the checks above look for
