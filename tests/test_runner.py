"""`workbench run` end to end: rows for every case, failures as rows, clear refusals, resume."""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from workbench.cli import main
from workbench.results import RunStore, load

TINY = """
[suite]
name = "tiny"
[axes]
optimizers = ["Adamax"]
implementations = ["workbench", "torch"{extra_impl}]
backends = ["forloop", "foreach"]
sizes = ["3x4k"]
repeats = {repeats}
[timing]
warmup_s = 0.01
min_steps = 3
max_steps = 5
budget_s = 0.01
[measure]
memory = true
launches = true
bandwidth_probe = false
"""


def _suite(tmp_path: Path, extra_impl: str = "", repeats: int = 1) -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text(TINY.format(extra_impl=extra_impl, repeats=repeats))
    return path


def _only_run(out: Path) -> Path:
    (run,) = [p for p in out.iterdir() if p.is_dir()]
    return run


def test_run_writes_one_row_per_case_with_side_by_side_ratios(tmp_path: Path) -> None:
    assert main(["run", str(_suite(tmp_path)), "--out", str(tmp_path / "out")]) == 0
    run = _only_run(tmp_path / "out")
    df = load(run)
    assert len(df) == 4  # 2 implementations x 2 backends
    assert set(df["status"]) == {"ok"}
    assert (df["median_s"] > 0).all() and (df["n_samples"] >= 3).all()
    assert set(df["implementation"]) == {"workbench", "torch"}
    # state: exp_avg and exp_inf for 3 x 4k fp32, plus three 4-byte step counters
    assert (df["state_bytes"] == 2 * 3 * 4000 * 4 + 3 * 4).all()  # "4k" is 4000
    # foreach holds a temporary the size of the grads; forloop one tensor's worth at most
    peaks = df.set_index(["implementation", "backend"])["step_peak_bytes"]
    assert peaks["torch", "foreach"] >= 3 * 4000 * 4 > peaks["torch", "forloop"]
    manifest = RunStore.open(run).manifest
    assert manifest["status"] == "complete"
    assert manifest["n_cases"] == 4 and manifest["environment"]["torch"]


def test_a_failing_case_is_a_row_and_the_sweep_goes_on(tmp_path: Path) -> None:
    suite = _suite(tmp_path, extra_impl=', "no_such_module:make"')
    assert main(["run", str(suite), "--out", str(tmp_path / "out")]) == 0
    df = load(_only_run(tmp_path / "out"))
    failed = df[df["implementation"] == "no_such_module:make"]
    assert len(failed) == 1 and failed["status"].iloc[0] == "error"
    assert "not installed" in failed["error"].iloc[0]
    assert (df[df["implementation"] != "no_such_module:make"]["status"] == "ok").all()


def test_peers_run_beside_ours_or_are_skipped_when_absent(tmp_path: Path) -> None:
    suite = _suite(tmp_path, extra_impl=', "pytorch_optimizer", "heavyball"')
    assert main(["run", str(suite), "--out", str(tmp_path / "out")]) == 0
    df = load(_only_run(tmp_path / "out")).set_index("implementation")
    installed = importlib.util.find_spec("pytorch_optimizer") is not None
    assert df.loc["pytorch_optimizer", "status"] == ("ok" if installed else "skipped")
    # heavyball (3.x) has no Adamax: installed, its row says so; absent, it is skipped
    if importlib.util.find_spec("heavyball") is None:
        assert df.loc["heavyball", "status"] == "skipped"
    else:
        assert df.loc["heavyball", "error"] == "heavyball has no optimizer named Adamax"


def test_a_bad_suite_is_refused_before_any_work(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(TINY.format(extra_impl="", repeats=1).replace("sizes =", "sises ="))
    assert main(["run", str(bad), "--out", str(tmp_path / "out")]) == 2
    message = capsys.readouterr().out
    assert "bad.toml" in message and "sises" in message
    assert not (tmp_path / "out").exists()
    assert main(["run", str(_suite(tmp_path)), "--set", "timing.budget_s=fast"]) == 2


def test_a_run_killed_halfway_resumes_with_every_case_once(tmp_path: Path) -> None:
    suite = _suite(tmp_path, repeats=6)  # 24 cases
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "workbench.cli", "run", str(suite), "--out", str(out)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    rows = 0
    while time.monotonic() < deadline and rows < 3:
        time.sleep(0.2)
        runs = list(out.glob("*/records.parquet")) if out.exists() else []
        rows = len(load(runs[0])) if runs else 0
    proc.send_signal(signal.SIGKILL)  # no chance to clean up: the store must already be whole
    proc.wait()
    run = _only_run(out)
    kept = len(load(run))
    assert 3 <= kept < 24
    assert main(["run", "--resume", str(run)]) == 0
    df = load(run)
    assert len(df) == 24
    assert df["case_id"].is_unique
    assert RunStore.open(run).manifest["status"] == "complete"


def test_list_and_show(tmp_path: Path, capsys) -> None:
    main(["run", str(_suite(tmp_path)), "--out", str(tmp_path / "out")])
    capsys.readouterr()
    assert main(["list", str(tmp_path / "out")]) == 0
    assert "tiny" in capsys.readouterr().out
    assert main(["show", str(_only_run(tmp_path / "out"))]) == 0
    assert "forloop" in capsys.readouterr().out
    assert main(["show", str(tmp_path / "nowhere")]) == 2


@pytest.mark.parametrize("size", ["3x4k"])
def test_profile_writes_a_trace(tmp_path: Path, size: str) -> None:
    trace = tmp_path / "trace.json"
    assert main(["profile", str(_suite(tmp_path)), "--case", "1", "--out", str(trace)]) == 0
    assert trace.stat().st_size > 0
    assert "aten::" in trace.read_text()


def test_profile_traces_a_closure_step_with_its_closure(tmp_path: Path) -> None:
    suite = tmp_path / "lbfgs.toml"
    suite.write_text(
        TINY.format(extra_impl="", repeats=1)
        .replace('["Adamax"]', '["LBFGS"]')
        .replace('["forloop", "foreach"]', '["forloop"]')
    )
    trace = tmp_path / "trace.json"
    assert main(["profile", str(suite), "--case", "0", "--out", str(trace)]) == 0
    # LBFGS's step evaluates the closure: the trace holds its loss and the param update
    text = trace.read_text()
    assert "aten::dot" in text and "aten::add_" in text
