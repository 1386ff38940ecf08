"""The analysis notebooks run top to bottom against the committed sample run, without a cell error.

Each notebook runs in a fresh kernel from the notebooks/ directory, as Jupyter would start it, so
its default run path (`sample_run`) resolves as it does for a reader. The convergence notebook
also runs against a small convergence run, so both its paths (columns absent, present) are
exercised.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

nbformat = pytest.importorskip("nbformat", reason="nbformat not installed (dev extra)")
nbclient = pytest.importorskip("nbclient", reason="nbclient not installed (dev extra)")

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
SAMPLE_RUN = NOTEBOOKS / "sample_run"
TIMEOUT_S = 120  # per cell; a whole notebook takes a few seconds
RUN_VARIABLES = ("WORKBENCH_RUN", "WORKBENCH_BASE_RUN")


@pytest.fixture(scope="module")
def kernel() -> str:
    """The kernel's name, once it is known to start here; otherwise the tests skip, saying why."""
    from jupyter_client.manager import start_new_kernel

    try:
        manager, client = start_new_kernel(kernel_name="python3", startup_timeout=60)
    except Exception as e:  # no kernelspec, no ipykernel, sockets refused in a sandbox, ...
        pytest.skip(f"a python3 Jupyter kernel cannot start here: {type(e).__name__}: {e}")
    client.stop_channels()
    manager.shutdown_kernel(now=True)
    return "python3"


def execute(path: Path, kernel: str) -> Any:
    """Run the notebook; returns it, outputs filled in."""
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        nb,
        kernel_name=kernel,
        timeout=TIMEOUT_S,
        resources={"metadata": {"path": str(NOTEBOOKS)}},
    )
    try:
        client.execute()
    except nbclient.exceptions.CellExecutionError as e:
        pytest.fail(f"{path.name}: a cell failed:\n{e}")
    # An exception inside a display formatter (drawing a figure) is an error output, not a cell
    # error: nbclient does not raise for it, but the reader sees a traceback all the same.
    for i, cell in enumerate(nb.cells):
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error":
                pytest.fail(f"{path.name}, cell {i}: {out.get('ename')}: {out.get('evalue')}")
    return nb


def _text(nb: Any) -> str:
    """Everything the notebook printed or displayed as text."""
    parts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            parts.append(out.get("text", ""))
            parts.append(out.get("data", {}).get("text/plain", ""))
    return "\n".join(parts)


def test_the_sample_run_is_small_and_complete() -> None:
    files = {p.name for p in SAMPLE_RUN.iterdir()}
    assert {"manifest.json", "records.parquet"} <= files
    assert sum(p.stat().st_size for p in SAMPLE_RUN.rglob("*")) < 200_000


@pytest.mark.parametrize("name", ["latency.ipynb", "memory.ipynb", "convergence.ipynb"])
def test_notebook_runs_on_the_sample_run(
    name: str, kernel: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for variable in RUN_VARIABLES:  # the defaults, whatever the developer's shell exports
        monkeypatch.delenv(variable, raising=False)
    execute(NOTEBOOKS / name, kernel)


@pytest.mark.parametrize("name", ["latency.ipynb", "memory.ipynb"])
def test_notebook_marks_the_flagged_row_of_a_run_with_stability(
    name: str, kernel: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from tests.test_plots import FLAGGED, write_stability_run

    monkeypatch.setenv("WORKBENCH_RUN", str(write_stability_run(tmp_path / "stability")))
    text = _text(execute(NOTEBOOKS / name, kernel))
    assert f"⚠ {', '.join(FLAGGED)}" in text  # the flagged row, with its flags
    assert "no-op" in text  # the no-op row, among those that did not run ok
    if name == "latency.ipynb":
        assert re.search(r"\d ⚠", text)  # a number marked in the pivots, "1.004 ⚠"


def test_the_sample_run_shows_stability_as_unknown(
    kernel: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for variable in RUN_VARIABLES:
        monkeypatch.delenv(variable, raising=False)
    text = _text(execute(NOTEBOOKS / "memory.ipynb", kernel))
    assert "unknown" in text and "⚠" not in text


def test_convergence_notebook_runs_on_a_convergence_run(
    kernel: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from tests.test_plots import write_convergence_run

    run = write_convergence_run(tmp_path / "conv")
    monkeypatch.setenv("WORKBENCH_RUN", str(run))
    execute(NOTEBOOKS / "convergence.ipynb", kernel)
    assert not (SAMPLE_RUN / "figures").exists()  # notebooks show figures, they write none


def test_compare_notebook_runs_on_the_sample_run_and_a_changed_copy(
    kernel: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # Base: the default (the sample run). New: a copy with a failed case and slower steps, so
    # that the comparison has something to find (the sample against itself finds nothing).
    from tests.test_plots import failing_copy

    monkeypatch.delenv("WORKBENCH_BASE_RUN", raising=False)
    monkeypatch.setenv("WORKBENCH_RUN", str(failing_copy(SAMPLE_RUN, tmp_path / "new")))
    execute(NOTEBOOKS / "compare_runs.ipynb", kernel)
