"""The regression gate on real runs made back to back: it passes on two runs of the same code, it
fails on a genuine 1.5x slowdown of one case, and on a case missing from the new run."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.grad_factories import SLOWDOWN_ENV
from workbench.cli import main
from workbench.results import load
from workbench.results.compare import compare_runs

# Sleep-dominated steps (2 ms each): what the gate is tested on is its statistics, on real runs,
# not this machine's quietness under `pytest -n 2` (whose other worker would flag every row
# `interference`: max_interference = 1 accepts it). 2x1k and 4x1k: two cases, one slowed.
SUITE = """
[suite]
name = "gate"
[axes]
optimizers = ["SGD"]
implementations = ["tests.grad_factories:sleepy_sgd"]
sizes = ["2x1k", "4x1k"]
[timing]
warmup_s = 0.02
min_steps = 40
max_steps = 60
budget_s = 0.05
target_noise = 0
max_interference = 1.0
[measure]
memory = false
launches = false
bandwidth_probe = false
"""


def _run(tmp_path: Path, name: str, *extra: str) -> Path:
    suite = tmp_path / "gate.toml"
    suite.write_text(SUITE)
    out = tmp_path / name
    assert main(["run", str(suite), "--out", str(out), *extra]) == 0
    (run,) = [p for p in out.iterdir() if p.is_dir()]
    return run


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _run(tmp_path_factory.mktemp("base"), "base")


def test_two_runs_of_the_same_code_pass_the_gate(base: Path, tmp_path: Path) -> None:
    new = _run(tmp_path, "new")
    assert main(["compare", str(base), str(new)]) == 0
    verdicts = set(compare_runs(load(base), load(new))["verdict"])
    assert verdicts <= {"same", "inconclusive"}


def test_a_genuine_slowdown_of_one_case_fails_the_gate(
    base: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(SLOWDOWN_ENV, "2000:1.5")  # 2x1k: two tensors of 1,000 params
    new = _run(tmp_path, "slow")
    assert main(["compare", str(base), str(new)]) == 1
    result = compare_runs(load(base), load(new)).set_index("size")
    assert result.loc["2x1k", "verdict"] == "regression"
    assert result.loc["2x1k", "change"] == pytest.approx(1.5, rel=0.15)
    assert result.loc["4x1k", "verdict"] in ("same", "inconclusive")


def test_a_case_missing_from_the_new_run_fails_the_gate(base: Path, tmp_path: Path) -> None:
    new = _run(tmp_path, "fewer", "--set", 'axes.sizes=["4x1k"]')
    assert main(["compare", str(base), str(new)]) == 1
    assert main(["compare", str(base), str(new), "--allow-missing"]) == 0
    result = compare_runs(load(base), load(new)).set_index("size")
    assert result.loc["2x1k", "verdict"] == "missing"
