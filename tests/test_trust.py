"""What was timed is checked: controlled allocator, no-op steps, flags for noise, interference,
warm-up, probes and repeats; rows say `stable`, `noise` and `flags`."""

from __future__ import annotations

import json
import multiprocessing
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from workbench.cli import main
from workbench.harness import stability
from workbench.harness.meters import Interference
from workbench.harness.timing import time_steps
from workbench.results import load

CPU = torch.device("cpu")

SUITE = """
[suite]
name = "trust"
[axes]
optimizers = ["SGD"]
implementations = {implementations}
backends = ["foreach"]
sizes = ["4x10k"]
repeats = {repeats}
[timing]
warmup_s = 0.01
min_steps = 5
max_steps = 50
budget_s = 0.02
target_noise = 0
[measure]
memory = false
launches = false
bandwidth_probe = false
"""


def _run(tmp_path: Path, implementations: list[str], repeats: int = 1) -> tuple[int, Path]:
    suite = tmp_path / "trust.toml"
    suite.write_text(SUITE.format(implementations=json.dumps(implementations), repeats=repeats))
    out = tmp_path / "out"
    code = main(["run", str(suite), "--out", str(out)])
    (run,) = [p for p in out.iterdir() if p.is_dir()]
    return code, run


# --- controlled conditions ---------------------------------------------------------------------

_FAULTS = """
import resource, sys, torch
if sys.argv[1] == "control":
    from workbench.harness import conditions
    conditions.control()
# torch.optim's foreach Adamax: per step, temporaries of 400 KB per tensor
params = [torch.randn(100_000, requires_grad=True) for _ in range(50)]
for p in params:
    p.grad = torch.randn_like(p)
opt = torch.optim.Adamax(params, foreach=True)
for _ in range(5):
    opt.step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    opt.step()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 10)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_pinned_allocator_stops_per_step_page_faults_of_temporaries() -> None:
    """Unpinned, glibc mmaps every 400 KB temporary and faults it in on every step (the history-
    dependent 16 vs 38 ms); the harness's conditions serve them from the heap."""

    def faults(mode: str) -> float:
        env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("MALLOC_")}
        out = subprocess.run(
            [sys.executable, "-c", _FAULTS, mode], capture_output=True, text=True, env=env
        )
        assert out.returncode == 0, out.stderr
        return float(out.stdout)

    assert faults("plain") > 1000  # the premise: 50 x ~98 pages per step
    assert faults("control") < 50


def test_the_manifest_records_the_conditions(tmp_path: Path) -> None:
    code, run = _run(tmp_path, ["torch"])
    assert code == 0
    conditions = json.loads((run / "manifest.json").read_text())["conditions"]
    assert conditions["allocator"]["pinned"] is True
    assert conditions["threads"]["torch_intra_op"] == torch.get_num_threads()
    assert conditions["inductor_compile_threads"] == 1
    row = load(run).iloc[0]
    assert row["minor_faults_per_step"] >= 0 and row["ctx_switches_per_step"] >= 0


# --- checked results ---------------------------------------------------------------------------


def test_a_step_that_changes_nothing_is_a_no_op_row_not_a_fast_ok(tmp_path: Path) -> None:
    code, run = _run(tmp_path, ["torch", "tests.grad_factories:no_op"])
    df = load(run).set_index("implementation")
    noop = df.loc["tests.grad_factories:no_op"]
    assert noop["status"] == "no-op" and "changed none of the 4 params" in noop["error"]
    assert not noop["stable"]
    assert df.loc["torch", "status"] == "ok"
    assert code == 0  # one case measured: the run is not a total failure


def test_an_implementation_that_drops_its_grads_gets_them_back_every_step(tmp_path: Path) -> None:
    _, run = _run(tmp_path, ["torch", "tests.grad_factories:dropping_sgd"])
    df = load(run).set_index("implementation")
    dropping = df.loc["tests.grad_factories:dropping_sgd"]
    assert dropping["status"] == "ok" and dropping["grads_restored"]
    assert not df.loc["torch", "grads_restored"]


def test_rows_carry_stable_noise_and_flags(tmp_path: Path) -> None:
    _, run = _run(tmp_path, ["torch", "workbench"])
    df = load(run)
    assert {"stable", "noise", "flags", "median_ci_low_s", "median_ci_high_s"} <= set(df.columns)
    for row in df.to_dict("records"):
        assert row["median_ci_low_s"] <= row["median_s"] <= row["median_ci_high_s"]
        assert row["stable"] == (row["status"] == "ok" and len(row["flags"]) == 0)


# --- stability ---------------------------------------------------------------------------------


def test_the_median_interval_covers_the_true_median_as_often_as_it_claims() -> None:
    rng = random.Random(0)
    for n in (10, 30, 100):
        covered = 0
        for _ in range(400):
            xs = [rng.lognormvariate(0, 0.5) for _ in range(n)]
            lo, hi = stability.median_ci(xs)
            covered += lo <= 1.0 <= hi  # the lognormal(0, s) median is 1
        assert covered / 400 >= 0.93, n


def test_noise_shrinks_with_samples_and_grows_with_spread() -> None:
    rng = random.Random(1)
    tight = [1 + rng.gauss(0, 0.01) for _ in range(100)]
    wide = [1 + abs(rng.gauss(0, 0.3)) for _ in range(100)]
    assert stability.relative_noise(tight) < 0.01 < stability.relative_noise(wide)
    assert stability.relative_noise(tight[:10]) > stability.relative_noise(tight)


def test_timing_goes_on_until_the_median_is_precise_or_the_cap() -> None:
    rng = random.Random(2)

    def noisy() -> None:
        time.sleep(rng.choice([1e-4, 3e-3]))

    def steady() -> None:
        time.sleep(1e-3)

    kwargs = dict(warmup_s=0, min_steps=5, max_steps=10_000, budget_s=0.03, max_extension=5)
    extended = time_steps(noisy, CPU, target_noise=0.02, **kwargs)
    assert extended.extended and sum(extended.samples_s) > 0.03 * 3
    plain = time_steps(noisy, CPU, target_noise=None, **kwargs)
    assert not plain.extended and sum(plain.samples_s) < 0.03 * 2
    assert not time_steps(steady, CPU, target_noise=0.5, **kwargs).extended


def test_a_warming_up_case_is_cold() -> None:
    assert stability.warming_up([[2.0] * 10 + [1.0] * 10], noise=0.01)
    assert not stability.warming_up([[1.0, 1.01] * 10], noise=0.01)
    # visits: each warming up is cold; a machine that got faster between visits is not
    assert stability.warming_up([[2.0] * 5 + [1.0] * 5, [2.0] * 5 + [1.0] * 5], noise=0.01)
    assert not stability.warming_up([[2.0, 2.01] * 5, [1.0, 1.01] * 5], noise=0.01)


def test_faster_than_the_probe_is_flagged_and_probe_drift_too() -> None:
    row = {"status": "ok", "achieved_bw": 120.0, "flags": []}
    stability.probe_checks(row, 100.0, 98.0)
    assert row["bw_fraction"] == pytest.approx(1.2) and row["flags"] == [stability.ABOVE_PROBE]
    row = {"status": "ok", "achieved_bw": 50.0, "flags": []}
    stability.probe_checks(row, 100.0, 60.0)
    assert row["flags"] == [stability.PROBE_DRIFT]
    stability.finalize(row)
    assert row["stable"] is False


def test_the_bandwidth_read_inside_the_group_judges_drift() -> None:
    # steady passes inside the rounds: probes around the group that differ do not flag it
    row = {"status": "ok", "flags": [], "probe_window_bw": 90.0, "probe_window_spread": 0.05}
    stability.probe_checks(row, 100.0, 60.0)
    assert row["flags"] == []
    # passes that moved inside the rounds do, whatever the probes around them said
    row = {"status": "ok", "flags": [], "probe_window_bw": 90.0, "probe_window_spread": 0.4}
    stability.probe_checks(row, 100.0, 100.0)
    assert row["flags"] == [stability.PROBE_DRIFT]
    # the ceiling is the fastest reading, the window's included
    row = {"status": "ok", "flags": [], "achieved_bw": 100.0, "probe_window_bw": 95.0}
    stability.probe_checks(row, 50.0, 50.0)
    assert row["bw_fraction"] == pytest.approx(100 / 95) and row["flags"] == []


def test_a_group_timed_off_the_runs_usual_bandwidth_is_flagged() -> None:
    def row(window: float, device: str = "cpu") -> dict:
        return {"status": "ok", "device": device, "flags": [], "probe_window_bw": window}

    rows = [row(45.0), row(45.0), row(48.0), row(50.0), row(90.0), row(90.0, "cuda")]
    for r in rows:
        stability.finalize(r)
    assert stability.flag_unusual_bandwidth(rows)
    assert [r["stable"] for r in rows] == [True, True, True, True, False, True]
    assert rows[4]["flags"] == [stability.PROBE_DRIFT]
    assert not stability.flag_unusual_bandwidth(rows)  # already flagged: nothing changes


def _spin(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def test_other_processes_taking_the_cpus_are_measured() -> None:
    meter = Interference()
    ctx = multiprocessing.get_context("spawn")
    busy = [ctx.Process(target=_spin, args=(1.5,)) for _ in meter.cpus]
    for p in busy:
        p.start()
    time.sleep(0.3)  # let them start spinning
    meter.start()
    time.sleep(0.6)  # we take (almost) no CPU: the busy time is theirs
    other = meter.stop()
    for p in busy:
        p.join()
    assert other is not None and other > 0.5


def test_repeats_run_in_separate_processes_and_report_their_spread(tmp_path: Path) -> None:
    code, run = _run(tmp_path, ["torch"], repeats=2)
    assert code == 0
    df = load(run)
    assert sorted(df["repeat"]) == [0, 1]
    pids = set(df["pid"])
    assert len(pids) == 2 and __import__("os").getpid() not in pids
    assert (df["repeat_spread"] >= 0).all()


def test_repeats_that_disagree_beyond_their_noise_are_unrepeatable(tmp_path: Path) -> None:
    from workbench.harness.runner import flag_unrepeatable
    from workbench.results.store import RunStore

    store = RunStore.create(tmp_path / "run", {"n_cases": 2}, "")
    axes = {"optimizer": "SGD", "implementation": "torch", "backend": "foreach", "size": "4x1k"}
    for repeat, (median, lo, hi) in enumerate([(1.0, 0.98, 1.02), (1.3, 1.27, 1.33)]):
        row = {"case_id": str(repeat), "repeat": repeat, "status": "ok", "flags": []}
        row.update(axes, median_s=median, median_ci_low_s=lo, median_ci_high_s=hi)
        store.append(row)
    flag_unrepeatable(store)
    rows = load(store.run_dir).to_dict("records")
    assert all(list(r["flags"]) == [stability.UNREPEATABLE] and not r["stable"] for r in rows)
    assert rows[0]["repeat_spread"] == pytest.approx(0.3 / 1.3)
