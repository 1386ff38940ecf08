"""`workbench history`: one page over many runs, its tidy data, and what it refuses.

Five synthetic runs of two optimizers (tests.test_compare's quiet lognormal samples), ordered by
the times in their manifests (their directory names sort the other way), with SLOWED 1.5x slower
from run 4 on: the gate must fire at run 4 and nowhere else.
"""

from __future__ import annotations

import base64
import io
import json
import re
from contextlib import redirect_stdout
from pathlib import Path

import pandas as pd
import pytest

from tests.test_compare import QUIET, SLOWED, synthetic_rows, write_run
from workbench.cli import main
from workbench.results import RunStore
from workbench.results.history import DATA, PAGE, find_runs, load_runs

N_RUNS, SLOW_FROM = 5, 4
SLOWED_CASE = "Adamax / workbench / foreach / 100x10k / float32 / cpu / weight_decay=0.1"
UNSTABLE = ("torch", "forloop", "10x1k")  # recorded as not stable in run 2 only
OPTIMIZERS = ("Adamax", "AdamW")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "history.ipynb"


def stamp(run: Path, environment: dict | None = None, **fields: object) -> None:
    """Set manifest fields (`environment` merged) as a run made at another time would have."""
    path = run / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["environment"].update(environment or {})
    manifest.update(fields)
    path.write_text(json.dumps(manifest))


def history_runs(root: Path) -> list[Path]:
    runs = []
    for i in range(1, N_RUNS + 1):
        slow = {SLOWED: 1.5} if i >= SLOW_FROM else None
        extra = {UNSTABLE: {"stable": False}} if i == 2 else None
        rows = synthetic_rows(i, slow=slow, extra=extra, recorded=True, **QUIET)
        other = synthetic_rows(100 + i, recorded=True, **QUIET)
        rows += [{**r, "optimizer": "AdamW", "case_id": f"w{r['case_id']}"} for r in other]
        run = write_run(root / f"run-{N_RUNS - i}", rows)  # names sort newest first
        stamp(run, run_id=f"nightly-{i}", started=f"2026-12-0{i}T03:00:00+00:00",
              environment={"git_sha": str(i) * 40, "git_dirty": i == 5})  # fmt: skip
        runs.append(run)
    return runs


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> tuple[int, Path, str]:
    """Exit code, output folder and stdout of `workbench history` over the folder of runs."""
    root = tmp_path_factory.mktemp("runs")
    history_runs(root)
    out = tmp_path_factory.mktemp("site")
    capture = io.StringIO()
    with redirect_stdout(capture):
        code = main(["history", str(root), "--out", str(out)])
    return code, out, capture.getvalue()


def test_history_writes_a_page_and_its_data(site: tuple[int, Path, str]) -> None:
    code, out, stdout = site
    assert code == 0
    assert (out / PAGE).is_file() and (out / DATA).is_file()
    assert f"history of {N_RUNS} runs, 20 cases" in stdout


def test_runs_are_ordered_by_their_manifests_times(site: tuple[int, Path, str]) -> None:
    history = pd.read_parquet(site[1] / DATA)
    order = history.groupby("run_id")["order"].unique().map(list).to_dict()
    assert order == {f"nightly-{i}": [i] for i in range(1, N_RUNS + 1)}
    assert (history.groupby("order").size() == 20).all()  # one row per case per run
    page = (site[1] / PAGE).read_text()
    positions = [page.index(f"<td>nightly-{i}</td>") for i in range(1, N_RUNS + 1)]
    assert positions == sorted(positions)


def test_the_injected_slowdown_is_a_regression_at_run_4_only(site: tuple[int, Path, str]) -> None:
    history = pd.read_parquet(site[1] / DATA)
    assert history.loc[history["order"] == 1, "verdict"].isna().all()  # nothing to compare with
    assert history.loc[history["order"] > 1, "verdict"].notna().all()
    fired = history[history["verdict"] == "regression"]
    assert list(zip(fired["order"], fired["case"])) == [(SLOW_FROM, SLOWED_CASE)]
    slowed = history[history["case"] == SLOWED_CASE].set_index("order")
    assert slowed.loc[SLOW_FROM, "change"] == pytest.approx(1.5, rel=0.1)
    assert slowed.loc[SLOW_FROM + 1, "verdict"] == "same"  # still slow, no longer a change
    assert (history["noise"].between(0, 0.1)).all()  # QUIET: a band narrower than the threshold


def test_unstable_rows_are_recorded_as_not_stable(site: tuple[int, Path, str]) -> None:
    history = pd.read_parquet(site[1] / DATA)
    shaky = history[~history["stable"]]
    columns = ("order", "optimizer", "implementation", "backend", "size")
    # the one case marked, in run 2 only
    assert set(zip(*(shaky[c] for c in columns))) == {(2, "Adamax", *UNSTABLE)}


def test_the_page_embeds_one_png_per_optimizer_figure(site: tuple[int, Path, str]) -> None:
    page = (site[1] / PAGE).read_text()
    images = re.findall(r"<img [^>]*>", page)
    uris = re.findall(r'<img [^>]*src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) == len(uris) == 2 * len(OPTIMIZERS)  # trends and ratio, per optimizer
    import matplotlib.image

    for uri in uris:
        png = base64.b64decode(uri, validate=True)
        assert png.startswith(PNG_SIGNATURE)
        pixels = matplotlib.image.imread(io.BytesIO(png), format="png")
        assert pixels.ndim == 3 and pixels.shape[0] > 100 and pixels.shape[1] > 300
    for name in OPTIMIZERS:
        assert f'<h2 id="{name}">{name}</h2>' in page


def test_the_page_opens_without_network(site: tuple[int, Path, str]) -> None:
    page = (site[1] / PAGE).read_text()
    assert not re.search(r"<script|<link|https?://|src=\"(?!data:)", page)
    assert (site[1] / PAGE).stat().st_size < 2_000_000


def test_the_page_names_and_marks_the_regression(site: tuple[int, Path, str]) -> None:
    page = (site[1] / PAGE).read_text()
    rows = re.findall(r'<tr class="regression">(.*?)</tr>', page)
    assert len(rows) == 1
    assert SLOWED_CASE in rows[0] and "nightly-4" in rows[0]
    assert re.search(r">1\.[45]\d\d×<", rows[0])  # its change, about 1.5x
    # the table of runs counts it against run 4, the Adamax section names it
    assert '<b class="bad">1 regression</b>' in page
    assert f"regression at run {SLOW_FROM}: {SLOWED_CASE}" in page


def test_a_path_that_is_no_run_exits_2_naming_it(tmp_path: Path, capsys) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    missing = tmp_path / "no-such-run"
    for path in (empty, missing):
        assert main(["history", str(path), "--out", str(tmp_path / "site")]) == 2
        assert str(path) in capsys.readouterr().err
    assert not (tmp_path / "site").exists()


def test_one_run_still_gets_a_page_saying_trends_need_two(tmp_path: Path) -> None:
    run = write_run(tmp_path / "only", synthetic_rows(0, recorded=True, **QUIET))
    assert main(["history", str(run), "--out", str(tmp_path / "site")]) == 0
    page = (tmp_path / "site" / PAGE).read_text()
    assert "Only 1 run." in page and "need 2 or more" in page
    assert len(re.findall(r"<img ", page)) == 2  # one optimizer: trends and ratio, one point each


def test_commit_time_orders_before_start_time(tmp_path: Path) -> None:
    rows = synthetic_rows(0, n=5)
    late = write_run(tmp_path / "a", rows)
    early = write_run(tmp_path / "b", rows)
    # b ran first but measures the later commit (a rerun of an old commit, say)
    stamp(late, started="2026-12-02T00:00:00+00:00",
          environment={"git_commit_time": "2026-11-01T00:00:00+01:00"})  # fmt: skip
    stamp(early, started="2026-12-01T00:00:00+00:00",
          environment={"git_commit_time": "2026-11-02T00:00:00Z"})  # fmt: skip
    runs, _ = load_runs([tmp_path])
    assert [r.path.name for r in runs] == ["a", "b"]


def test_a_run_without_records_is_left_out_with_a_note(tmp_path: Path) -> None:
    kept = write_run(tmp_path / "kept", synthetic_rows(0, n=5))
    RunStore.create(tmp_path / "empty", {"run_id": "empty"}, "").close()
    runs, notes = find_runs([tmp_path, kept])  # the same run twice: once
    assert runs == [kept]
    assert len(notes) == 1 and "empty" in notes[0]


def test_the_history_notebook_runs_on_the_sample_run(monkeypatch: pytest.MonkeyPatch) -> None:
    nbformat = pytest.importorskip("nbformat", reason="nbformat not installed (dev extra)")
    nbclient = pytest.importorskip("nbclient", reason="nbclient not installed (dev extra)")
    from jupyter_client.manager import start_new_kernel

    try:  # as tests/test_notebooks.py: a kernel that cannot start here skips, saying why
        manager, client = start_new_kernel(kernel_name="python3", startup_timeout=60)
    except Exception as e:  # no kernelspec, no ipykernel, sockets refused in a sandbox, ...
        pytest.skip(f"a python3 Jupyter kernel cannot start here: {type(e).__name__}: {e}")
    client.stop_channels()
    manager.shutdown_kernel(now=True)
    monkeypatch.delenv("WORKBENCH_HISTORY", raising=False)  # the default: the sample run
    nb = nbformat.read(NOTEBOOK, as_version=4)
    where = {"metadata": {"path": str(NOTEBOOK.parent)}}
    nbclient.NotebookClient(nb, kernel_name="python3", timeout=120, resources=where).execute()
    outputs = [o for cell in nb.cells for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    assert "history of 3 runs" in "".join(o.get("text", "") for o in outputs)
    assert any("image/png" in o.get("data", {}) for o in outputs)  # the trend was drawn


def test_a_run_on_another_machine_is_marked_in_the_table(tmp_path: Path) -> None:
    for name, cores in (("a", 2), ("b", 2), ("c", 8)):
        run = write_run(tmp_path / "runs" / name, synthetic_rows(ord(name), n=5))
        stamp(run, environment={"machine": {"cpu_model": "EPYC", "logical_cores": cores}},
              started=f"2026-12-0{ord(name) - 96}T00:00:00+00:00")  # fmt: skip
    assert main(["history", str(tmp_path / "runs"), "--out", str(tmp_path / "site")]) == 0
    page = (tmp_path / "site" / PAGE).read_text()
    rows = re.findall(r"<tr><td>\d</td>.*?</tr>", page)
    assert [("another machine" in row) for row in rows] == [False, False, True]
