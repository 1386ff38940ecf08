"""`workbench regress`: a suite run gated against its machine's stored baseline, the one gate
that `make regress` and the CI job (.ci/bench-gate) use."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.grad_factories import SLOWDOWN_ENV
from tests.test_gate import SUITE
from workbench.cli import main
from workbench.results import load
from workbench.results.baselines import machine_of


def _regress(tmp_path: Path, *extra: str) -> int:
    suite = tmp_path / "gate.toml"
    suite.write_text(SUITE)
    out, baselines = tmp_path / "results", tmp_path / "baselines"
    return main(["regress", str(suite), "--out", str(out), "--baselines", str(baselines), *extra])


def _runs(tmp_path: Path) -> list[Path]:
    return sorted((tmp_path / "results").iterdir())


def _stored(tmp_path: Path) -> Path:
    (machine,) = (tmp_path / "baselines").iterdir()
    return machine / "gate"


def test_the_first_run_becomes_the_baseline_of_its_machine(tmp_path: Path, capsys) -> None:
    assert _regress(tmp_path) == 0
    (run,) = _runs(tmp_path)
    stored = _stored(tmp_path)
    assert stored.parent.name == machine_of(run)[0]
    assert load(stored).equals(load(run))
    assert "is now the baseline" in capsys.readouterr().out


def test_later_runs_are_gated_and_a_slowdown_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    assert _regress(tmp_path) == 0
    first = json.loads((_stored(tmp_path) / "manifest.json").read_text())["run_id"]
    # the same code, back to back; 30%: under `make test -n 2` a sleep-bound case once read 1.11x
    # (a clean-clone CI failure), and what this test is about is the plumbing, not the noise
    assert _regress(tmp_path, "--threshold", "0.3") == 0
    assert "against the baseline of machine" in capsys.readouterr().out
    monkeypatch.setenv(SLOWDOWN_ENV, "2000:1.5")  # the 2x1k case, 1.5x slower
    assert _regress(tmp_path, "--threshold", "0.3") == 1
    assert "fails the gate" in capsys.readouterr().out
    # judging a run never moves the baseline
    assert json.loads((_stored(tmp_path) / "manifest.json").read_text())["run_id"] == first


def test_save_baseline_replaces_the_stored_run(tmp_path: Path) -> None:
    assert _regress(tmp_path) == 0
    assert _regress(tmp_path, "--save-baseline") == 0
    newest = _runs(tmp_path)[-1]
    stored = json.loads((_stored(tmp_path) / "manifest.json").read_text())
    assert stored["run_id"] == json.loads((newest / "manifest.json").read_text())["run_id"]
    assert not [p for p in _stored(tmp_path).parent.iterdir() if p.name.startswith(".")]


def test_another_machines_baseline_is_never_compared(tmp_path: Path, capsys) -> None:
    assert _regress(tmp_path) == 0
    stored = _stored(tmp_path)
    other = stored.parent.with_name("0123456789ab") / "gate"  # the same run, filed elsewhere
    other.parent.mkdir()
    stored.rename(other)
    assert _regress(tmp_path) == 0  # this machine has no baseline now: the run becomes it
    assert "none was stored for this machine" in capsys.readouterr().out
    assert (stored / "records.parquet").is_file()
