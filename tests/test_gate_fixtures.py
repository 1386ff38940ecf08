"""The gate on real runs: two runs of tests/fixtures/runs/fixture_suite.toml made back to back on
the project's 2-core VM (a, b), committed with their samples, probes and memory columns. Only the
edits named in each test are made to them, so what passes here is what this machine really gave
twice, and what fails is a change the gate must not let through."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest

from workbench.cli import main
from workbench.results import load
from workbench.results.compare import compare_runs

RUNS = Path(__file__).parent / "fixtures" / "runs"
A, B = RUNS / "a", RUNS / "b"
KEY = ["optimizer", "implementation", "backend", "size"]
# every column of a row that holds a step time (the samples and what was computed from them)
TIME_COLUMNS = ("median_s", "min_s", "median_ci_low_s", "median_ci_high_s")
LIST_TIME_COLUMNS = ("samples_s", "visit_medians_s")


def _edited(tmp_path: Path, edit: Callable[[pd.DataFrame], pd.DataFrame]) -> Path:
    """A copy of run b with its records changed by `edit`."""
    run = tmp_path / "b-edited"
    shutil.copytree(B, run)
    edit(load(run)).to_parquet(run / "records.parquet")
    return run


def _slowed(df: pd.DataFrame, cases: list[tuple], factor: float = 1.5) -> pd.DataFrame:
    rows = df.set_index(KEY).index.isin(cases)
    for column in TIME_COLUMNS:
        df.loc[rows, column] = df.loc[rows, column] * factor
    for column in LIST_TIME_COLUMNS:
        df.loc[rows, column] = df.loc[rows, column].map(lambda s: [x * factor for x in s])
    return df


def _verdicts(base: Path, new: Path) -> pd.Series:
    return compare_runs(load(base), load(new)).set_index(KEY)["verdict"]


@pytest.fixture(scope="module")
def same_cases() -> list[tuple]:
    """The cases a -> b judges `same`: stable in both runs, the machine still. (On the day these
    runs were made the host was noisy: 3 of 21 cases; the other 18 are inconclusive, and a
    slowdown of one of those is inconclusive too, which is the gate being honest.)"""
    verdicts = _verdicts(A, B)
    cases = list(verdicts[verdicts == "same"].index)
    assert cases, verdicts.value_counts()
    return cases


def test_two_real_runs_back_to_back_pass_the_gate_both_ways() -> None:
    assert main(["compare", str(A), str(B)]) == 0
    assert main(["compare", str(B), str(A)]) == 0
    assert set(_verdicts(A, B)) <= {"same", "inconclusive", "improvement"}


def test_a_1_5x_slowdown_of_one_case_fails_the_gate(tmp_path: Path, same_cases) -> None:
    case = same_cases[0]
    slow = _edited(tmp_path, lambda df: _slowed(df, [case]))
    assert main(["compare", str(A), str(slow)]) == 1
    before, after = _verdicts(A, B), _verdicts(A, slow)
    assert after[case] == "regression"
    assert after.drop(case).equals(before.drop(case))  # the other cases keep their verdicts


def test_every_stable_case_slowed_1_5x_is_a_regression(tmp_path: Path, same_cases) -> None:
    slow = _edited(tmp_path, lambda df: _slowed(df, same_cases))
    after = _verdicts(A, slow)
    assert (after[same_cases] == "regression").all(), after[same_cases].value_counts()


def test_a_grown_state_fails_the_gate(tmp_path: Path) -> None:
    df = load(B)
    case = tuple(df.loc[df["state_bytes"] > 0, KEY].iloc[0])

    def grow(df: pd.DataFrame) -> pd.DataFrame:
        rows = df.set_index(KEY).index.isin([case])
        df.loc[rows, "state_bytes"] = df.loc[rows, "state_bytes"] + 4  # one fp32 element more
        return df

    grown = _edited(tmp_path, grow)
    assert main(["compare", str(A), str(grown)]) == 1
    result = compare_runs(load(A), load(grown)).set_index(KEY)
    assert result.loc[case, "exact_verdict"] == "regression"
    assert result.loc[case, "verdict"] == "regression"


def test_a_case_missing_from_the_new_run_fails_the_gate(tmp_path: Path) -> None:
    case = tuple(load(B)[KEY].iloc[0])
    fewer = _edited(tmp_path, lambda df: df[~df.set_index(KEY).index.isin([case])])
    assert main(["compare", str(A), str(fewer)]) == 1
    assert main(["compare", str(A), str(fewer), "--allow-missing"]) == 0
    assert _verdicts(A, fewer)[case] == "missing"


CONVERGENCE = RUNS / "convergence"  # a real convergence run: Adam, SGD on quadratic, digits


def test_a_worse_final_loss_fails_the_gate_and_rounding_does_not(tmp_path: Path) -> None:
    case_key = ["optimizer", "implementation", "backend", "problem"]
    df = load(CONVERGENCE)
    case = tuple(df.loc[df["implementation"] == "workbench", case_key].iloc[0])

    def scaled(factor: float) -> Path:
        run = tmp_path / f"loss-x{factor}"
        shutil.copytree(CONVERGENCE, run)
        new = load(run)
        rows = new.set_index(case_key).index.isin([case])
        new.loc[rows, "final_loss"] = new.loc[rows, "final_loss"] * factor
        new.to_parquet(run / "records.parquet")
        return run

    assert main(["compare", str(CONVERGENCE), str(CONVERGENCE)]) == 0
    worse = scaled(1.01)  # 1% worse: beyond the default tolerance (relative 1e-3)
    assert main(["compare", str(CONVERGENCE), str(worse)]) == 1
    result = compare_runs(load(CONVERGENCE), load(worse)).set_index(case_key)
    assert result.loc[case, "exact_verdict"] == "regression"
    assert (result.drop(case)["exact_verdict"] == "same").all()
    assert main(["compare", str(CONVERGENCE), str(scaled(1 + 1e-5))]) == 0  # within tolerance
