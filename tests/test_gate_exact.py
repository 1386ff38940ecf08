"""The gate beyond time: exact columns (state and step peak bytes, a convergence case's final loss)
and the machine fingerprint that keeps absolute times of two machines from being compared.

Built on tests/test_compare.py's synthetic runs: the step times of base and new come from one
distribution (QUIET: every timing verdict is `same`), so any other verdict is the exact columns'.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch

from tests.test_compare import (
    AXES,
    QUIET,
    REFERENCE,
    SLOWED,
    Key,
    compare,
    synthetic_rows,
    verdicts,
    write_run,
)
from workbench.harness import environment
from workbench.results import load
from workbench.results.compare import compare_runs

MEMORY = {"state_bytes": 800_000, "step_peak_bytes": 64_000}
CASES: list[Key] = [
    (impl, backend, size)
    for impl, backend in (
        ("workbench", "forloop"), ("workbench", "foreach"), ("workbench", "compiled"),
        ("torch", "forloop"), ("torch", "foreach"),
    )
    for size in ("10x1k", "100x10k")
]  # fmt: skip


def every_case(
    columns: dict[str, Any], changed: dict[Key, dict[str, Any]] | None = None
) -> dict[Key, dict[str, Any]]:
    """`extra` for synthetic_rows: `columns` on every case, and `changed` on top for some."""
    return {key: {**columns, **(changed or {}).get(key, {})} for key in CASES}


def _line_of(out: str, key: Key) -> str:
    """The table line of a case (rich draws one line per case at width 200)."""
    impl, backend, size = key
    return next(
        line
        for line in out.splitlines()
        if re.search(rf"\b{impl}\b.*\b{backend}\b.*\b{size}\b", line) and "Adamax" in line
    )


# --- state and step peak bytes ---------------------------------------------------------------


def test_a_grown_state_fails_the_gate_and_names_the_case(tmp_path: Path, capsys) -> None:
    base = write_run(tmp_path / "base", synthetic_rows(0, extra=every_case(MEMORY), **QUIET))
    grown = every_case(MEMORY, {SLOWED: {"state_bytes": 1_200_000}})
    new = write_run(tmp_path / "new", synthetic_rows(1, extra=grown, **QUIET))
    capsys.readouterr()
    assert compare(base, new) == 1
    out = capsys.readouterr().out
    assert "fails the gate: 1 regression" in out
    line = _line_of(out, SLOWED)
    assert "regression" in line and "state bytes 800000 -> 1200000" in line
    assert "bytes/loss alone: 1 regression, 9 same" in out
    result = compare_runs(load(base), load(new)).set_index(AXES)
    case = result.loc[SLOWED]
    assert case["verdict"] == "regression" and case["exact_verdict"] == "regression"
    assert case["timing_verdict"] == "same"  # the times did not move: the bytes alone failed it
    assert (case["base_state_bytes"], case["new_state_bytes"]) == (800_000, 1_200_000)
    others = result.drop(index=[SLOWED])
    assert set(others["verdict"]) == set(others["exact_verdict"]) == {"same"}
    assert result.index[0] == SLOWED  # what fails the gate is listed first


def test_a_shrunk_state_is_an_improvement_and_passes(tmp_path: Path) -> None:
    base = write_run(tmp_path / "base", synthetic_rows(0, extra=every_case(MEMORY), **QUIET))
    shrunk = every_case(MEMORY, {SLOWED: {"state_bytes": 400_000}})
    new = write_run(tmp_path / "new", synthetic_rows(1, extra=shrunk, **QUIET))
    assert compare(base, new) == 0
    case = compare_runs(load(base), load(new)).set_index(AXES).loc[SLOWED]
    assert case["verdict"] == "improvement" and case["timing_verdict"] == "same"
    assert case["note"] == "state bytes 800000 -> 400000"


def test_identical_bytes_stay_same(tmp_path: Path, capsys) -> None:
    base = write_run(tmp_path / "base", synthetic_rows(0, extra=every_case(MEMORY), **QUIET))
    new = write_run(tmp_path / "new", synthetic_rows(1, extra=every_case(MEMORY), **QUIET))
    capsys.readouterr()
    assert compare(base, new) == 0
    out = capsys.readouterr().out
    assert "10 same" in out and "bytes/loss alone: 10 same" in out
    result = compare_runs(load(base), load(new))
    assert set(result["verdict"]) == set(result["exact_verdict"]) == {"same"}
    assert (result["note"] == "").all()


def test_one_byte_more_of_step_peak_is_a_regression() -> None:
    base = synthetic_rows(0, extra=every_case(MEMORY), **QUIET)
    one_more = every_case(MEMORY, {SLOWED: {"step_peak_bytes": 64_001}})
    new = synthetic_rows(1, extra=one_more, **QUIET)
    case = verdicts(base, new).loc[SLOWED]
    assert case["verdict"] == "regression" and case["note"] == "step peak bytes 64000 -> 64001"


def test_a_slower_case_stays_a_regression_whatever_its_bytes_did() -> None:
    """The worse verdict wins: shrunk bytes do not excuse a slowdown, grown bytes are not
    excused by a speedup."""
    base = synthetic_rows(0, extra=every_case(MEMORY), **QUIET)
    shrunk = every_case(MEMORY, {SLOWED: {"state_bytes": 400_000}})
    new = synthetic_rows(1, slow={SLOWED: 1.5}, extra=shrunk, **QUIET)
    case = verdicts(base, new).loc[SLOWED]
    assert case["timing_verdict"] == "regression" and case["exact_verdict"] == "improvement"
    assert case["verdict"] == "regression" and "state bytes 800000 -> 400000" in case["note"]
    grown = every_case(MEMORY, {SLOWED: {"step_peak_bytes": 128_000}})
    new = synthetic_rows(1, slow={SLOWED: 1 / 1.5}, extra=grown, **QUIET)
    case = verdicts(base, new).loc[SLOWED]
    assert case["timing_verdict"] == "improvement" and case["verdict"] == "regression"


def test_runs_without_exact_columns_keep_their_verdicts(tmp_path: Path, capsys) -> None:
    """An old run, or a suite with memory off: nothing to judge, no column, no line."""
    base = write_run(tmp_path / "base", synthetic_rows(0, **QUIET))
    new = write_run(tmp_path / "new", synthetic_rows(1, slow={SLOWED: 1.5}, **QUIET))
    result = compare_runs(load(base), load(new))
    assert result["exact_verdict"].isna().all()
    assert (result["timing_verdict"] == result["verdict"]).all()
    assert not any(c.endswith("state_bytes") for c in result.columns)
    capsys.readouterr()
    assert compare(base, new) == 1
    out = capsys.readouterr().out
    assert "bytes/loss" not in out and "fails the gate: 1 regression" in out
    # one side measured memory, the other did not: still nothing to judge
    half = write_run(tmp_path / "half", synthetic_rows(2, extra=every_case(MEMORY), **QUIET))
    assert compare_runs(load(base), load(half))["exact_verdict"].isna().all()


def test_ratio_mode_judges_our_bytes_and_not_torchs() -> None:
    base = synthetic_rows(0, extra=every_case(MEMORY), **QUIET)
    grown = {"state_bytes": 1_200_000}
    new = synthetic_rows(1, extra=every_case(MEMORY, {SLOWED: grown, REFERENCE: grown}), **QUIET)
    result = verdicts(base, new, metric="ratio")
    assert result.loc[SLOWED, "verdict"] == "regression"
    assert result.loc[SLOWED, "note"] == "state bytes 800000 -> 1200000"
    # torch.optim is ratio mode's reference: its state is not ours to judge
    assert result.loc[REFERENCE, "verdict"] == "n/a"
    assert pd.isna(result.loc[REFERENCE, "exact_verdict"])
    assert verdicts(base, new).loc[REFERENCE, "verdict"] == "regression"  # time mode judges it


# --- final loss --------------------------------------------------------------------------------


def test_a_worse_final_loss_fails_the_gate(tmp_path: Path, capsys) -> None:
    loss = {"final_loss": 0.5}
    base = write_run(tmp_path / "base", synthetic_rows(0, extra=every_case(loss), **QUIET))
    worse = every_case(loss, {SLOWED: {"final_loss": 0.501}})  # 2e-3 worse: beyond 1e-3
    new = write_run(tmp_path / "new", synthetic_rows(1, extra=worse, **QUIET))
    capsys.readouterr()
    assert compare(base, new) == 1
    out = capsys.readouterr().out
    assert "final loss 0.5 -> 0.501" in _line_of(out, SLOWED)
    case = compare_runs(load(base), load(new)).set_index(AXES).loc[SLOWED]
    assert case["verdict"] == "regression" and case["timing_verdict"] == "same"
    assert compare(base, new, "--loss-tolerance", "0.01") == 0  # the tolerance let it pass
    result = compare_runs(load(base), load(new), loss_tolerance=0.01)
    assert set(result["verdict"]) == {"same"}


def test_a_final_loss_within_the_tolerance_is_same_and_a_better_one_an_improvement() -> None:
    loss = {"final_loss": 0.5}
    base = synthetic_rows(0, extra=every_case(loss), **QUIET)
    rounding = every_case(loss, {SLOWED: {"final_loss": 0.5 * (1 + 5e-4)}})
    assert verdicts(base, synthetic_rows(1, extra=rounding, **QUIET)).loc[SLOWED, "verdict"] == (
        "same"
    )
    better = every_case(loss, {SLOWED: {"final_loss": 0.4}})
    case = verdicts(base, synthetic_rows(1, extra=better, **QUIET)).loc[SLOWED]
    assert case["verdict"] == "improvement" and case["note"] == "final loss 0.5 -> 0.4"


def test_a_case_without_step_times_is_judged_by_its_loss_alone() -> None:
    """A convergence case records no step samples: its timing verdict is n/a, not inconclusive."""
    untimed = {"samples_s": None, "median_s": None, "final_loss": 0.5}
    base = synthetic_rows(0, extra=every_case(untimed), **QUIET)
    worse = every_case(untimed, {SLOWED: {"final_loss": 0.6}})
    result = verdicts(base, synthetic_rows(1, extra=worse, **QUIET))
    assert result.loc[SLOWED, "verdict"] == "regression"
    assert result.loc[SLOWED, "note"] == "final loss 0.5 -> 0.6"
    others = result.drop(index=[SLOWED])
    assert set(others["verdict"]) == {"same"} and set(result["timing_verdict"]) == {"n/a"}
    # without a loss such a case is what it was before: inconclusive, nothing timed
    untimed_only = every_case({"samples_s": None, "median_s": None})
    old = verdicts(synthetic_rows(0, extra=untimed_only), synthetic_rows(1, extra=untimed_only))
    assert set(old["verdict"]) == {"inconclusive"}


# --- machines ----------------------------------------------------------------------------------

LAPTOP = {
    "cpu_model": "Intel(R) Core(TM) i7-1185G7", "logical_cores": 8, "memory_gib": 16,
    "gpu_name": None, "torch": "2.5.1",
}  # fmt: skip
CI = {**LAPTOP, "cpu_model": "AMD EPYC 7763 64-Core Processor", "logical_cores": 2}


def test_two_machines_are_refused_in_time_mode_naming_the_fields(tmp_path: Path, capsys) -> None:
    base = write_run(tmp_path / "base", synthetic_rows(0, **QUIET), "laptop", machine=LAPTOP)
    new = write_run(tmp_path / "new", synthetic_rows(1, **QUIET), "ci", machine=CI)
    capsys.readouterr()
    assert compare(base, new) == 2
    out = capsys.readouterr().out
    assert "cpu_model" in out and "logical_cores" in out and "--metric ratio" in out
    assert "memory_gib" not in out and "gpu_name" not in out  # only the fields that differ
    assert "Adamax" not in out  # refused before any table
    assert compare(base, new, "--metric", "ratio") == 0
    assert "different machines" not in capsys.readouterr().out
    assert compare(base, new, "--allow-other-machine") == 0
    out = capsys.readouterr().out
    assert "machines differ" in out and "--allow-other-machine" in out  # the override is said


def test_one_machine_under_two_hostnames_compares_in_time_mode(tmp_path: Path, capsys) -> None:
    """Two CI runners of one type: one fingerprint, nothing to refuse or hint."""
    base = write_run(tmp_path / "base", synthetic_rows(0, **QUIET), "runner-1", machine=CI)
    new = write_run(tmp_path / "new", synthetic_rows(1, slow={SLOWED: 1.5}, **QUIET), "runner-2",
                    machine=dict(CI))  # fmt: skip
    capsys.readouterr()
    assert compare(base, new) == 1  # judged: the slowdown is found
    out = capsys.readouterr().out
    assert "fails the gate: 1 regression" in out and "--metric ratio" not in out


def test_a_run_without_a_fingerprint_gets_the_old_hint(tmp_path: Path, capsys) -> None:
    old = write_run(tmp_path / "old", synthetic_rows(0, **QUIET), "laptop")
    new = write_run(tmp_path / "new", synthetic_rows(1, **QUIET), "ci", machine=CI)
    capsys.readouterr()
    assert compare(old, new) == 0  # not refused: the old run cannot say what it ran on
    assert "the runs differ in hostname" in capsys.readouterr().out


def test_capture_environment_records_the_machine_fingerprint() -> None:
    env = environment.capture_environment()
    machine = env["machine"]
    assert tuple(machine) == environment.MACHINE_KEYS
    assert machine["torch"] == torch.__version__
    assert machine["cpu_model"] == env["cpu_model"]
    assert machine["logical_cores"] == env["logical_cores"] >= 1
    assert env["memory_bytes"] > 2**28 and machine["memory_gib"] == round(
        env["memory_bytes"] / 2**30
    )
    if not torch.cuda.is_available():
        assert machine["gpu_name"] is None
    assert re.fullmatch(r"[0-9a-f]{12}", env["machine_id"])
    assert env["machine_id"] == environment.machine_id(machine)
    json.dumps(env)  # the manifest is JSON
    assert environment.capture_environment()["machine_id"] == env["machine_id"]  # stable


def test_machine_id_depends_on_every_field_and_not_on_order() -> None:
    ident = environment.machine_id(LAPTOP)
    assert environment.machine_id(dict(reversed(list(LAPTOP.items())))) == ident
    for key in environment.MACHINE_KEYS:
        assert environment.machine_id({**LAPTOP, key: "other"}) != ident, key


@pytest.mark.parametrize("gib", [15.6, 16.4])
def test_memory_is_rounded_to_gib(gib: float) -> None:
    fingerprint = environment.machine_fingerprint({"memory_bytes": int(gib * 2**30)})
    assert fingerprint["memory_gib"] == 16
