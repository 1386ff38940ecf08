"""Interleaved timing: rounds that give every step the same stretch of machine time."""

from __future__ import annotations

from pathlib import Path

import torch

from workbench.cli import main
from workbench.harness.cases import Case
from workbench.harness.interleave import interleave_groups
from workbench.harness.timing import Timing, time_interleaved
from workbench.results import load

CPU = torch.device("cpu")


def test_rounds_take_one_step_each_in_a_rotating_order() -> None:
    log: list[str] = []
    steps = [lambda name=name: log.append(name) for name in "abc"]
    results = time_interleaved(steps, CPU, warmup_s=0.0, min_steps=4, max_steps=4, budget_s=0.0)
    assert all(isinstance(r, Timing) and len(r.samples_s) == 4 for r in results)
    timed = log[3:]  # after the three first calls (no warm-up rounds at warmup_s=0)
    rounds = [timed[i : i + 3] for i in range(0, 12, 3)]
    assert all(sorted(r) == ["a", "b", "c"] for r in rounds)
    assert [r[0] for r in rounds] == ["a", "b", "c", "a"]  # who goes first rotates


def test_a_step_that_fails_drops_out_and_the_others_go_on() -> None:
    calls = {"ok": 0, "bad": 0}

    def ok() -> None:
        calls["ok"] += 1

    def bad() -> None:
        calls["bad"] += 1
        if calls["bad"] > 2:
            raise RuntimeError("step 3 fails")

    results = time_interleaved([ok, bad], CPU, warmup_s=0.0, min_steps=5, max_steps=5, budget_s=0)
    assert isinstance(results[0], Timing) and len(results[0].samples_s) == 5
    assert isinstance(results[1], RuntimeError) and calls["bad"] == 3


class _Clock:
    """A perf_counter that moves only when a step says so: budgets counted in steps, not seconds."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def step(self) -> None:
        self.now += 1.0


def test_monitors_ride_along_without_earning_budget(monkeypatch) -> None:
    import types

    import workbench.harness.timing as timing

    clock = _Clock()
    monkeypatch.setattr(timing, "time", types.SimpleNamespace(perf_counter=clock))
    steps = [clock.step, clock.step, lambda: None]  # two cases, then one (free) monitor
    alone = time_interleaved(steps, CPU, warmup_s=0, min_steps=1, max_steps=1000, budget_s=10)
    clock.now = 0.0
    ridden = time_interleaved(steps, CPU, warmup_s=0, min_steps=1, max_steps=1000, budget_s=10,
                              riders=1)  # fmt: skip
    # every round costs 2 clock seconds; budget_s * 3 steps = 30 s = 15 rounds counted as steps,
    # budget_s * 2 cases = 20 s = 10 rounds with the monitor riding along
    assert [len(r.samples_s) for r in alone] == [15, 15, 15]
    assert [len(r.samples_s) for r in ridden] == [10, 10, 10]


def test_rounds_end_when_only_monitors_are_left() -> None:
    calls = {"case": 0, "monitor": 0}

    def case() -> None:
        calls["case"] += 1
        if calls["case"] > 3:
            raise RuntimeError("the case fails on its 4th call")

    def monitor() -> None:
        calls["monitor"] += 1

    results = time_interleaved([case, monitor], CPU, warmup_s=0, min_steps=50, max_steps=50,
                               budget_s=0, riders=1)  # fmt: skip
    assert isinstance(results[0], RuntimeError)
    assert isinstance(results[1], Timing) and len(results[1].samples_s) < 5


def test_warm_up_lasts_at_least_the_rounds_asked() -> None:
    log: list[str] = []
    steps = [lambda name=name: log.append(name) for name in "ab"]
    results = time_interleaved(steps, CPU, warmup_s=0.0, min_steps=2, max_steps=2, budget_s=0.0,
                               warmup_rounds=3)  # fmt: skip
    assert all(isinstance(r, Timing) and len(r.samples_s) == 2 for r in results)
    assert log.count("a") == log.count("b") == 1 + 3 + 2  # first call, warm-up rounds, timed


def test_every_copy_takes_its_first_step_before_the_timed_rounds() -> None:
    """A copy's first step creates its state and faults in its memory: timed, it once doubled
    Adam fused's median (12 copies, about 8 rounds a visit)."""
    import types

    from workbench.harness import measure
    from workbench.harness.suite import MeasureSettings, Suite, TimingSettings

    calls: list[int] = []  # the copy each step went to, in order
    copies = [types.SimpleNamespace(protocol="closure", step=lambda i=i: calls.append(i))
              for i in range(5)]  # fmt: skip
    prepared = measure.PreparedCase(_case("workbench", "forloop"), CPU, copies[0], copies)
    timing = TimingSettings(warmup_s=0.0, min_steps=3, max_steps=3, budget_s=0.0)
    suite = Suite("s", "", Path("s.toml"), timing, MeasureSettings(bandwidth_probe=False))
    (result,) = measure._time_group([prepared], suite, monitors=[], index=1, of=3)
    assert isinstance(result, Timing) and len(result.samples_s) == 1  # ceil(3 / 3 visits)
    untimed = calls[: len(calls) - len(result.samples_s)]
    assert sorted(set(untimed)) == [0, 1, 2, 3, 4]


def _case(impl: str, backend: str, size: str = "2x1k", world_size: int = 1) -> Case:
    return Case("Adamax", impl, backend, size, ((1000,), (1000,)), "float32", "cpu", (), 0,
                world_size=world_size)  # fmt: skip


def test_groups_hold_the_cases_that_compare_and_leave_sharded_ones_alone() -> None:
    cases = [
        _case("workbench", "forloop"),
        _case("workbench", "forloop", size="3x1k"),
        _case("torch", "foreach"),
        _case("workbench", "foreach", world_size=2),
    ]
    groups = interleave_groups(cases)
    assert [[c.case_id for c in g] for g in groups] == [
        [cases[0].case_id, cases[2].case_id],
        [cases[1].case_id],
        [cases[3].case_id],
    ]


SUITE = """
[suite]
name = "side-by-side"
[axes]
optimizers = ["Adamax"]
implementations = ["workbench", "torch", "no_such_module:factory"]
backends = ["forloop", "foreach"]
sizes = ["3x4k"]
[timing]
warmup_s = 0.01
min_steps = 3
max_steps = 5
budget_s = 0.01
interleave = true
[measure]
memory = true
launches = false
bandwidth_probe = false
"""


def test_an_interleaved_run_gives_every_case_its_row(tmp_path: Path) -> None:
    suite = tmp_path / "suite.toml"
    suite.write_text(SUITE)
    assert main(["run", str(suite), "--out", str(tmp_path / "out")]) == 0
    (run,) = [p for p in (tmp_path / "out").iterdir() if p.is_dir()]
    df = load(run)
    ok = df[df["status"] == "ok"]
    assert len(df) == 5 and len(ok) == 4  # the unimportable peer is an error row, not a crash
    assert (ok["interleaved_with"] == 4).all()
    assert (ok["n_samples"] >= 3).all() and (ok["median_s"] > 0).all()
    assert (ok["state_bytes"] == 2 * 3 * 4000 * 4 + 3 * 4).all()
    assert df.loc[df["status"] != "ok", "error"].str.contains("no_such_module").all()
