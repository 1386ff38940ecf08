"""Sharded optimizer steps: FSDP2 (DTensor params) and ZeroRedundancyOptimizer wrapping ours, on 2
CPU ranks over gloo, against one process; and `workbench run` with world_size > 1."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
import torch

if not torch.distributed.is_available():
    pytest.skip("torch.distributed is not available", allow_module_level=True)

from workbench.cli import main
from workbench.harness.distributed import launch
from workbench.harness.distributed_worker import HANG_ENV
from workbench.results import load

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def parity(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    out = tmp_path_factory.mktemp("parity") / "parity.json"
    env = {
        "TRITON_INTERPRET": "1",
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",
    }
    launch("tests._distributed_parity", [str(out)], 2, timeout_s=120, env=env)
    return json.loads(out.read_text())


CONFIGS = [f"{n}/{b}" for n in ("Adamax", "Adam", "SGD") for b in ("forloop", "foreach", "fused")]


@pytest.mark.parametrize("config", CONFIGS)
def test_fsdp2_matches_one_process(parity: list[dict], config: str) -> None:
    assert parity[0][config]["moved"] > 1e-2  # the steps did change the params
    for rank, results in enumerate(parity):
        fsdp = results[config]["fsdp"]
        assert fsdp["max_diff"] < 1e-5, (rank, fsdp)
        # state lives as DTensors, as torch.optim keeps it for FSDP2 (step stays a plain tensor;
        # SGD has none)
        assert fsdp["state_types"] == (
            ["DTensor"] if config.startswith("SGD") else ["DTensor", "Tensor"]
        )
        assert fsdp["loads_into_torch"]
    # the first weight (10 x 6) is split 5 + 5 rows: each rank holds half the state
    assert [r[config]["fsdp"]["local_state_numel"] for r in parity] == [30, 30]


@pytest.mark.parametrize("config", CONFIGS)
def test_zero_redundancy_optimizer_matches_one_process(parity: list[dict], config: str) -> None:
    for rank, results in enumerate(parity):
        assert results[config]["zero"]["max_diff"] < 1e-5, (rank, results[config]["zero"])
    # ZeRO partitions whole params between the ranks: together they hold each exactly once
    assert sum(r[config]["zero"]["local_params"] for r in parity) == 6 * 10 + 10 + 10 * 3 + 3


SHARDED = """
[suite]
name = "sharded"
[axes]
optimizers = ["Adam"]
implementations = ["workbench"]
backends = ["foreach"]
sizes = ["4x100k"]
world_size = [1, 2]
[timing]
warmup_s = 0.01
min_steps = 5
max_steps = 10
budget_s = 0.05
[measure]
memory = true
launches = false
bandwidth_probe = false
[distributed]
backend = "gloo"
timeout_s = {timeout}
"""


def _run(tmp_path: Path, timeout: float) -> pd.DataFrame:
    suite = tmp_path / "sharded.toml"
    suite.write_text(SHARDED.format(timeout=timeout))
    assert main(["run", str(suite), "--out", str(tmp_path / "out")]) == 0
    (run,) = [p for p in (tmp_path / "out").iterdir() if p.is_dir()]
    return load(run).set_index("world_size")


def test_two_ranks_hold_half_the_state_each(tmp_path: Path) -> None:
    df = _run(tmp_path, timeout=90)
    assert list(df["status"]) == ["ok", "ok"], df["error"].tolist()
    one, two = df.loc[1], df.loc[2]
    # exp_avg + exp_avg_sq of 4 x 100k fp32 (+ 4 step counters) vs half of the rows on each rank
    assert one["state_bytes"] == 2 * 4 * 100_000 * 4 + 4 * 4
    assert list(two["rank_state_bytes"]) == [2 * 4 * 50_000 * 4 + 4 * 4] * 2
    assert len(two["rank_median_s"]) == 2 and two["median_s"] > 0
    assert two["comm_s"] > 0 and two["all_gather_s"] > 0 and two["reduce_scatter_s"] > 0


def test_a_hanging_rank_becomes_an_error_row(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv(HANG_ENV, "1")
    began = time.monotonic()
    df = _run(tmp_path, timeout=12)
    assert time.monotonic() - began < 60
    assert df.loc[1, "status"] == "ok"  # the single-process case does not launch ranks
    assert df.loc[2, "status"] == "timeout", df.loc[2, "error"]
    assert "rank(s) [0, 1] still running" in df.loc[2, "error"]


def test_more_ranks_than_gpus_is_a_skipped_row(tmp_path: Path, monkeypatch) -> None:
    from workbench.harness.runner import CaseFailure, run_case
    from workbench.harness.suite_loader import load_suite

    suite_file = tmp_path / "gpu.toml"
    text = SHARDED.format(timeout=10).replace('backend = "gloo"', 'backend = "nccl"')
    suite_file.write_text(text.replace("[axes]", '[axes]\ndevices = ["cuda"]'))
    suite = load_suite(suite_file)
    (case,) = [c for c in suite.cases() if c.world_size == 2]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(CaseFailure, match="needs 2 GPUs; 1 visible") as failure:
        run_case(case, suite, None)
    assert failure.value.status == "skipped"


@pytest.mark.parametrize(
    ("old", "new", "key"),
    [
        ("world_size = [1, 2]", "world_size = [0]", "axes.world_size[0]"),
        ("world_size = [1, 2]", 'world_size = ["2"]', "axes.world_size"),
        ('backend = "gloo"', 'backend = "mpi"', "distributed.backend"),
    ],
)
def test_bad_distributed_settings_are_refused(tmp_path: Path, old: str, new: str, key: str):
    from workbench.harness.suite import SuiteError
    from workbench.harness.suite_loader import load_suite

    suite_file = tmp_path / "bad.toml"
    suite_file.write_text(SHARDED.format(timeout=10).replace(old, new))
    with pytest.raises(SuiteError) as error:
        load_suite(suite_file)
    assert error.value.key == key


def test_shipped_suites_have_sharded_cases_beside_single_process_ones() -> None:
    from workbench.harness.suite_loader import load_suite

    full = load_suite(ROOT / "suites" / "full.toml")
    sharded = [c for c in full.cases() if c.world_size > 1]
    assert [(c.optimizer, c.implementation, c.backend, c.world_size) for c in sharded] == [
        ("Adam", "workbench", "foreach", 2)
    ]
    assert dataclasses.replace(sharded[0], world_size=1) in full.cases()  # its 1-rank row
    assert full.distributed.backend == "gloo"
    gpu = load_suite(ROOT / "suites" / "gpu.toml")
    assert gpu.distributed.backend == "nccl"
    assert {c.world_size for c in gpu.cases()} == {1, 2}


SLEEPER = """
import os, sys, time
from pathlib import Path
Path(sys.argv[1]).write_text(str(os.getpid()))
time.sleep(float(sys.argv[2]))
"""

LAUNCHER = """
import sys
from pathlib import Path
from workbench.harness.distributed import launch, rank_temp_dir
tmp = rank_temp_dir()
Path(sys.argv[1]).write_text(tmp.name)
launch("sleeper", [str(Path(tmp.name) / "rank.pid"), "600"], 1, timeout_s=600)
"""


def _wait_for(predicate: Callable[[], bool], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_ranks_and_temp_dirs_do_not_outlive_a_killed_launcher(tmp_path: Path, monkeypatch):
    from workbench.harness.distributed import pid_alive, rank_temp_dir

    (tmp_path / "mods").mkdir()
    (tmp_path / "mods" / "sleeper.py").write_text(SLEEPER)
    (tmp_path / "tmp").mkdir()
    path = os.pathsep.join([str(tmp_path / "mods"), str(ROOT), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": path, "TMPDIR": str(tmp_path / "tmp")}
    named = tmp_path / "temp_dir_name"
    launcher = subprocess.Popen([sys.executable, "-c", LAUNCHER, str(named)], env=env)

    def rank_pid() -> int | None:
        try:  # each file may not be there yet, or be empty for an instant
            return int((Path(named.read_text()) / "rank.pid").read_text())
        except (OSError, ValueError):
            return None

    rank = None
    try:
        assert _wait_for(lambda: rank_pid() is not None, 60)
        stale, rank = Path(named.read_text()), rank_pid()
        assert pid_alive(rank)
        launcher.send_signal(signal.SIGKILL)  # no finally, no atexit: only the kernel acts
        launcher.wait()
        assert _wait_for(lambda: not pid_alive(rank), 5), f"rank {rank} outlived its launcher"
    finally:
        launcher.kill()
        launcher.wait()
        if rank is not None and pid_alive(rank):
            os.kill(rank, signal.SIGKILL)
    assert stale.is_dir()  # nobody could remove it ...
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    monkeypatch.setenv("PYTHONPATH", path)
    with rank_temp_dir() as ours:  # (a live owner's dir is not stale)
        launch("sleeper", [str(tmp_path / "quick.pid"), "0"], 1, timeout_s=60)
        assert not stale.exists()  # ... until the next launch
        assert Path(ours).is_dir()
