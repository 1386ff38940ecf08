"""The run store keeps every finished row through crashes, and says clearly what it cannot read."""

from __future__ import annotations

import json
import os

import pandas as pd
import pytest

from workbench.results import RunStore, RunStoreError, load
from workbench.results.store import RunLockedError, lock_holder, status_of
from workbench.results.summary import with_ratios


def _row(case_id: str, impl: str, backend: str, median: float) -> dict:
    return {
        "case_id": case_id, "optimizer": "Adamax", "implementation": impl, "backend": backend,
        "size": "1x1k", "dtype": "float32", "device": "cpu", "repeat": 0, "flag_lr": 0.1,
        "median_s": median, "samples_s": [median, median * 1.1], "status": "ok", "error": None,
        "flags": [],
    }  # fmt: skip


def test_rows_survive_reopening_and_resume_sees_them(tmp_path) -> None:
    store = RunStore.create(tmp_path / "run", {"run_id": "r", "n_cases": 3}, "[suite]\n")
    store.append(_row("a", "torch", "forloop", 2.0))
    store.append(_row("b", "workbench", "foreach", 1.0))
    # a crash here loses nothing that was appended
    reopened = RunStore.open(tmp_path / "run")
    assert reopened.done_case_ids() == {"a", "b"}
    assert reopened.manifest["status"] == "running"
    df = load(tmp_path / "run")
    assert list(df["case_id"]) == ["a", "b"]
    assert list(df.loc[1, "samples_s"]) == [1.0, 1.1]
    # list cells come back as lists, as appended (parquet's arrays have no truth value if empty)
    assert reopened.rows[1]["samples_s"] == [1.0, 1.1] and reopened.rows[1]["flags"] == []
    with pytest.raises(RunStoreError, match="already holds a run"):
        RunStore.create(tmp_path / "run", {}, "")


def test_unreadable_runs_name_the_file(tmp_path) -> None:
    with pytest.raises(RunStoreError, match="manifest.json: no such file"):
        RunStore.open(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(RunStoreError, match="manifest.json: not valid JSON"):
        RunStore.open(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({}))
    (tmp_path / "records.parquet").write_bytes(b"garbage")
    with pytest.raises(RunStoreError, match="records.parquet: cannot be read as parquet"):
        load(tmp_path)


def test_ratio_against_torch_best_of_the_same_problem() -> None:
    df = pd.DataFrame(
        [
            _row("a", "torch", "forloop", 2.0),
            _row("b", "torch", "foreach", 4.0),
            _row("c", "workbench", "compiled", 1.0),
            {**_row("d", "workbench", "forloop", 1.0), "size": "other"},  # no torch row: NaN
        ]
    )
    ratios = with_ratios(df).set_index("case_id")["vs_torch_best"]
    assert ratios["a"] == 1.0
    assert ratios["b"] == 0.5
    assert ratios["c"] == 2.0
    assert pd.isna(ratios["d"])


def test_one_writer_per_run_until_it_closes(tmp_path) -> None:
    run = tmp_path / "run"
    with RunStore.create(run, {"n_cases": 1}, "") as writer:
        assert lock_holder(run) == os.getpid()
        assert status_of(run, writer.manifest) == "running"
        with pytest.raises(RunLockedError, match=f"pid {os.getpid()}") as refused:
            RunStore.open(run, lock=True)
        assert refused.value.pid == os.getpid()
        assert isinstance(refused.value, RunStoreError)  # the cli's exit 2
        assert RunStore.open(run).manifest["status"] == "running"  # readers are not refused
    assert lock_holder(run) is None
    # recorded as running, written by nobody: it was interrupted; the manifest is left as it is
    assert status_of(run, RunStore.open(run).manifest) == "interrupted"
    assert json.loads((run / "manifest.json").read_text())["status"] == "running"
    resumed = RunStore.open(run, lock=True)
    assert lock_holder(run) == os.getpid()
    resumed.close()
    assert lock_holder(run) is None


def test_runs_from_before_locking_read_as_interrupted_or_as_recorded(tmp_path) -> None:
    (tmp_path / "manifest.json").write_text(json.dumps({"status": "running"}))
    assert status_of(tmp_path, RunStore.open(tmp_path).manifest) == "interrupted"
    assert status_of(tmp_path, {"status": "complete"}) == "complete"
