"""Visits: each latency group timed once per pass over the suite, its samples pooled into one row
(runner.py explains why: the machine drifts over seconds, and one window is one draw of it)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from workbench.cli import main
from workbench.harness import stability
from workbench.harness.measure import Visit, visit_settings
from workbench.harness.meters import StepCounters
from workbench.harness.runner import needs_another_visit
from workbench.harness.suite import Suite, SuiteError, TimingSettings
from workbench.harness.suite_loader import load_suite
from workbench.harness.timing import Timing, pooled
from workbench.results import load

SUITE = """
[suite]
name = "visits"
[axes]
optimizers = ["SGD"]
implementations = ["workbench", "torch"]
backends = ["foreach"]
sizes = ["4x10k"]
repeats = {repeats}
[timing]
warmup_s = 0.01
min_steps = 6
max_steps = 60
budget_s = 0.04
interleave = true
visits = {visits}
[measure]
memory = false
launches = false
bandwidth_probe = {probe}
"""


def _suite(tmp_path: Path, visits: int, repeats: int = 1, probe: bool = False) -> Path:
    path = tmp_path / "visits.toml"
    text = SUITE.format(visits=visits, repeats=repeats, probe=json.dumps(probe))
    path.write_text(text)
    return path


def test_one_visit_keeps_the_suites_settings_and_several_share_them_out() -> None:
    t = TimingSettings(
        warmup_s=0.3, min_steps=10, max_steps=100, budget_s=0.6, target_noise=0.05,
        max_extension=3.0,
    )  # fmt: skip
    alone = visit_settings(t, 0, 1)
    assert alone == {
        "warmup_s": 0.3, "min_steps": 10, "max_steps": 100, "budget_s": 0.6,
        "target_noise": 0.05, "max_extension": 3.0,
    }  # fmt: skip
    first, later = visit_settings(t, 0, 3), visit_settings(t, 2, 3)
    # every visit the same share, none extending: each weighs alike in the pooled samples
    for v in (first, later):
        assert v["budget_s"] == pytest.approx(0.2)
        assert (v["min_steps"], v["max_steps"]) == (4, 34)
        assert v["target_noise"] is None and v["max_extension"] == 1.0
    assert first["warmup_s"] == 0.3 and later["warmup_s"] == pytest.approx(0.1)


def test_pooled_keeps_every_visits_samples_in_order() -> None:
    a = Timing(first_call_s=5.0, samples_s=[1.0, 1.1], other_cpu=0.01)
    a.counters = StepCounters(steps=2, minor_faults=4, ctx_switches=1)
    b = Timing(first_call_s=0.2, samples_s=[2.0, 2.1, 2.2], other_cpu=0.3, extended=True)
    b.counters = StepCounters(steps=3, minor_faults=0, ctx_switches=2)
    both = pooled([a, b])
    assert both.samples_s == [1.0, 1.1, 2.0, 2.1, 2.2]
    assert both.visits() == [[1.0, 1.1], [2.0, 2.1, 2.2]]
    assert both.first_call_s == 5.0  # the first call happened in the first visit
    assert both.other_cpu == 0.3 and both.extended
    assert (both.counters.steps, both.counters.minor_faults, both.counters.ctx_switches) == (
        5,
        4,
        3,
    )
    assert Timing(first_call_s=0.0, samples_s=[1.0, 2.0]).visits() == [[1.0, 2.0]]


def test_a_run_in_visits_pools_them_into_one_row_per_case(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    suite = _suite(tmp_path, visits=3, probe=True)
    assert main(["run", str(suite), "--out", str(tmp_path / "out")]) == 0
    shown = capsys.readouterr().out
    # the passes before the last say which group they visited (the log is not a terminal)
    assert shown.count("[visit 1/3] SGD 4x10k float32: 2 cases") == 1
    assert shown.count("[visit 2/3] SGD 4x10k float32: 2 cases") == 1
    (run,) = (tmp_path / "out").iterdir()
    df = load(run)
    assert len(df) == 2 and (df["status"] == "ok").all()
    for _, row in df.iterrows():
        assert row["visits"] == 3
        medians = list(row["visit_medians_s"])
        assert len(medians) == 3 and min(medians) <= row["median_s"] <= max(medians)
        assert row["visit_spread"] == pytest.approx((max(medians) - min(medians)) / row["median_s"])
        assert row["n_samples"] == len(row["samples_s"]) >= 3 * 2  # min_steps shared out: 2 each
        assert row["probe_window_bw"] > 0  # the monitors' passes pooled too
        assert row["probe_window_ops"] > 0 and row["probe_window_ops_spread"] >= 0


def test_pooled_visits_are_not_judged_by_the_spread_of_their_passes() -> None:
    # the spread of a single window's passes judges drift; pooled visits are judged otherwise
    row = {"status": "ok", "probe_window_bw": 5e10, "probe_window_spread": 0.5, "visits": 1}
    stability.probe_checks(row, None, None)
    assert stability.PROBE_DRIFT in row["flags"]
    row = {"status": "ok", "probe_window_bw": 5e10, "probe_window_spread": 0.5, "visits": 3}
    stability.probe_checks(row, None, None)
    assert stability.PROBE_DRIFT not in row.get("flags", [])


def test_visits_with_repeats_is_refused_naming_the_key(tmp_path: Path) -> None:
    with pytest.raises(SuiteError) as e:
        load_suite(_suite(tmp_path, visits=2, repeats=2))
    assert e.value.key == "timing.visits" and "repeats" in e.value.reason
    with pytest.raises(SuiteError) as e:
        load_suite(_suite(tmp_path, visits=0))
    assert e.value.key == "timing.visits"


def test_a_case_that_fails_in_a_visit_is_not_built_again(tmp_path: Path) -> None:
    from tests import grad_factories

    suite = (
        _suite(tmp_path, visits=3)
        .read_text()
        .replace('["workbench", "torch"]', '["torch", "tests.grad_factories:failing_sgd"]')
    )
    path = tmp_path / "failing.toml"
    path.write_text(suite)
    grad_factories.BUILT["failing_sgd"] = 0
    main(["run", str(path), "--out", str(tmp_path / "out")])
    (run,) = (tmp_path / "out").iterdir()
    df = load(run).set_index("implementation")
    assert df.loc["torch", "status"] == "ok" and df.loc["torch", "visits"] == 3
    failed = df.loc["tests.grad_factories:failing_sgd"]
    assert failed["status"] == "error" and "always fails" in failed["error"]
    # built for the first visit only: once per cache-defeating copy, as many as torch's row has
    assert grad_factories.BUILT["failing_sgd"] == df.loc["torch", "working_set_copies"] > 1


def load_suite_text(override: str) -> Suite:
    """A one-group suite with one override (a latency suite's settings are all that is read)."""
    return load_suite(Path(__file__).parents[1] / "suites" / "quick.toml", [override])


def _visit(samples: dict[str, list[float] | Exception]) -> Visit:
    return Visit(
        timings={
            k: v if isinstance(v, Exception) else Timing(0.0, list(v)) for k, v in samples.items()
        }
    )


def test_a_group_gets_another_visit_while_its_pooled_median_is_vague() -> None:
    suite = load_suite_text("timing.target_noise=0.05")
    unit = [SimpleNamespace(case_id="a"), SimpleNamespace(case_id="b")]
    tight = [1.0, 1.01, 0.99, 1.0, 1.02, 0.98, 1.0, 1.01, 0.99, 1.0]
    spread = [1.0, 1.5, 0.7, 1.3, 0.8, 1.4, 0.9, 1.2, 0.6, 1.1]
    assert not needs_another_visit(unit, [_visit({"a": tight, "b": tight})] * 2, suite)
    # one vague case is enough; a failed case needs nothing more
    assert needs_another_visit(unit, [_visit({"a": tight, "b": spread})] * 2, suite)
    assert not needs_another_visit(unit, [_visit({"a": tight, "b": RuntimeError("x")})] * 2, suite)
    # target_noise = 0: the suite asked for no adaptive timing
    assert not needs_another_visit(
        unit, [_visit({"a": spread, "b": spread})] * 2, load_suite_text("timing.target_noise=0")
    )


def test_extra_visits_go_to_the_vague_groups_only_and_show_in_the_rows(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    suite = str(_suite(tmp_path, visits=2))
    extra = ["--set", "timing.extra_visits=2"]
    # a target nothing meets: two extra passes, each over the group
    assert (
        main(
            [
                "run",
                suite,
                "--out",
                str(tmp_path / "vague"),
                *extra,
                "--set",
                "timing.target_noise=1e-9",
            ]
        )
        == 0
    )
    shown = capsys.readouterr().out
    assert shown.count("[extra visit 1] SGD 4x10k float32: 2 cases") == 1
    assert shown.count("[extra visit 2] SGD 4x10k float32: 2 cases") == 1
    (run,) = (tmp_path / "vague").iterdir()
    assert (load(run)["visits"] == 4).all()
    # a target everything meets: no extra pass
    assert (
        main(
            [
                "run",
                suite,
                "--out",
                str(tmp_path / "met"),
                *extra,
                "--set",
                "timing.target_noise=10",
            ]
        )
        == 0
    )
    assert "extra visit" not in capsys.readouterr().out
    (run,) = (tmp_path / "met").iterdir()
    assert (load(run)["visits"] == 2).all()


def test_extra_visits_without_visits_is_refused_naming_the_key(tmp_path: Path) -> None:
    for visits, value in ((1, 2), (2, -1)):
        with pytest.raises(SuiteError) as e:
            load_suite(_suite(tmp_path, visits=visits), [f"timing.extra_visits={value}"])
        assert e.value.key == "timing.extra_visits"
