"""`workbench compare` and `make regress`: noise alone never fails them, a real slowdown does.

Synthetic runs are written with RunStore: lognormal step times (timing noise is right-skewed)
around fixed medians, so the truth is known: same distribution, or one case slowed. By default
the rows are an old run's (no `noise`, `stable` or `flags`); `recorded=True` or `extra` give them
the columns of a run from the trust checks on.
"""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from tests.test_runner import TINY
from workbench.cli import build_parser, main
from workbench.harness.environment import machine_id
from workbench.harness.stability import relative_noise
from workbench.results import RunStore, load
from workbench.results.compare import DEFAULT_THRESHOLD, compare_runs
from workbench.results.summary import with_ratios

REPO = Path(__file__).resolve().parents[1]

# (implementation, backend) -> median step seconds at the small size
MEDIANS = {
    ("workbench", "forloop"): 1.0e-3,
    ("workbench", "foreach"): 0.7e-3,
    ("workbench", "compiled"): 0.5e-3,
    ("torch", "forloop"): 1.1e-3,
    ("torch", "foreach"): 0.8e-3,
}
SIZES = {"10x1k": 1.0, "100x10k": 20.0}
SLOWED = ("workbench", "foreach", "100x10k")
# the torch reference of SLOWED's problem in ratio mode: the fastest torch backend at its size
REFERENCE = ("torch", "foreach", "100x10k")
AXES = ["implementation", "backend", "size"]
Key = tuple[str, str, str]
QUIET = {"sigma": 0.05}  # a noise floor of ~4% at 40 samples: a 10% change is visible


def synthetic_rows(
    seed: int,
    *,
    n: int = 40,
    sigma: float = 0.1,
    scale: float = 1.0,
    slow: dict[Key, float] | None = None,
    repeats: int = 1,
    status: dict[Key, str] | None = None,
    extra: dict[Key, dict[str, Any]] | None = None,
    recorded: bool = False,
) -> list[dict]:
    """One row per case and repeat; sigma 0.1 is an IQR of ~13% of the median, a noisy machine.

    `extra`: columns set on every row of a case; `recorded`: every row gets `noise` (from its
    samples, as the harness computes it), `stable` True and no flags, unless `extra` says else.
    """
    rng = np.random.default_rng(seed)
    rows = []
    for (impl, backend), median in MEDIANS.items():
        for size, factor in SIZES.items():
            key = (impl, backend, size)
            for repeat in range(repeats):
                samples = median * factor * scale * (slow or {}).get(key, 1.0)
                samples = samples * rng.lognormal(0.0, sigma, n)
                row = {
                    # case ids differ between runs: cases must be matched by their axes
                    "case_id": f"{seed}-{impl}-{backend}-{size}-{repeat}",
                    "optimizer": "Adamax", "implementation": impl, "backend": backend,
                    "size": size, "dtype": "float32", "device": "cpu", "repeat": repeat,
                    # a flag only some cases carry (NaN elsewhere), as in real runs
                    "flag_weight_decay": 0.1 if size == "100x10k" else None,
                    "median_s": float(np.median(samples)), "samples_s": samples.tolist(),
                    "status": "ok", "error": None,
                }  # fmt: skip
                if recorded:
                    row.update(noise=relative_noise(samples), stable=True, flags=[])
                row.update((extra or {}).get(key, {}))
                if key in (status or {}):
                    row.update(status=status[key], error="RuntimeError: boom", samples_s=None)
                rows.append(row)
    return rows


def one_case(seed: int, medians: list[float], *, n: int = 40, sigma: float = 0.02) -> list[dict]:
    """SLOWED's case alone, one repeat per median: repeats that agree or disagree, by design."""
    rng = np.random.default_rng(seed)
    rows = []
    for repeat, median in enumerate(medians):
        samples = median * rng.lognormal(0.0, sigma, n)
        rows.append({
            "optimizer": "Adamax", "implementation": SLOWED[0], "backend": SLOWED[1],
            "size": SLOWED[2], "dtype": "float32", "device": "cpu", "repeat": repeat,
            "median_s": float(np.median(samples)), "samples_s": samples.tolist(), "status": "ok",
        })  # fmt: skip
    return rows


def write_run(
    path: Path, rows: list[dict], hostname: str = "vm", machine: dict[str, Any] | None = None
) -> Path:
    """A complete run of `rows`; `machine`: the manifest's fingerprint (without: an older run's)."""
    environment: dict[str, Any] = {"hostname": hostname}
    if machine is not None:
        environment.update(machine=machine, machine_id=machine_id(machine))
    store = RunStore.create(path, {"run_id": path.name, "environment": environment}, "")
    store.rows = rows[:-1]  # append flushes every row held: one parquet write for the whole run
    store.append(rows[-1])
    store.set_status("complete")
    return path


def compare(base: Path, new: Path, *args: str) -> int:
    return main(["compare", str(base), str(new), *args])


def verdicts(base: pd.DataFrame | list[dict], new: pd.DataFrame | list[dict], **kw: Any):
    """compare_runs indexed by (implementation, backend, size)."""
    return compare_runs(pd.DataFrame(base), pd.DataFrame(new), **kw).set_index(AXES)


# --- noise alone ----------------------------------------------------------------------------


@pytest.mark.parametrize("metric", ["time", "ratio"])
def test_the_same_distribution_twice_rarely_flags_anything(metric: str) -> None:
    """False positives over 50 pairs of noisy runs (sigma 0.1, 40 samples, 10 cases each).

    alpha bounds the share of runs that noise fails at ~1% (Holm over the cases), and the noise
    floor makes it rarer still: these seeds fail 0/50 runs (time) and 1/50 (ratio); over 300
    seeds 0/300 and 1/300, where significance and the threshold alone failed 5/300 and 3/300.
    At this noise the floor is near the threshold: some cases are inconclusive, as they should be.
    """
    failing_runs, flagged_cases, judged, inconclusive = 0, 0, 0, 0
    for seed in range(50):
        result = verdicts(synthetic_rows(2 * seed), synthetic_rows(2 * seed + 1), metric=metric)
        assert not result["verdict"].isin(["added", "missing", "new-failure"]).any()
        judged += int(result["p_value"].notna().sum())
        flagged_cases += int(result["verdict"].isin(["regression", "improvement"]).sum())
        failing_runs += int((result["verdict"] == "regression").any())
        inconclusive += int((result["verdict"] == "inconclusive").sum())
    assert judged == 50 * (10 if metric == "time" else 6)  # ratio mode: torch is the reference
    assert failing_runs <= int(metric == "ratio") and flagged_cases <= 1, (
        failing_runs,
        flagged_cases,
    )
    assert inconclusive < judged  # the floor did not simply give up on every case


def test_quiet_identical_runs_are_same_over_many_cases() -> None:
    """30 pairs of runs, 10 cases each, 3 repeats with recorded noise: every case is `same`."""
    for seed in range(30):
        base = synthetic_rows(2 * seed, repeats=3, recorded=True, **QUIET)
        new = synthetic_rows(2 * seed + 1, repeats=3, recorded=True, **QUIET)
        result = verdicts(base, new)
        assert (result["verdict"] == "same").all(), result["verdict"].value_counts()
        assert (result["noise_floor"] < DEFAULT_THRESHOLD).all()
        assert (result["n_base"] == 120).all()


def test_the_same_distribution_twice_exits_0(tmp_path: Path, capsys) -> None:
    exits = []
    for seed in range(10):
        base = write_run(tmp_path / f"base{seed}", synthetic_rows(2 * seed, **QUIET))
        new = write_run(tmp_path / f"new{seed}", synthetic_rows(2 * seed + 1, **QUIET))
        exits += [compare(base, new), compare(base, new, "--metric", "ratio")]
    out = capsys.readouterr().out
    assert "10 same" in out and "6 same, 4 n/a" in out and "fails the gate" not in out
    assert set(exits) == {0}


def test_a_significant_6pc_drift_is_below_the_default_threshold(tmp_path: Path) -> None:
    """Back-to-back runs of one commit drift 5-7%: with enough samples that is 'significant'."""
    quiet = {"n": 400, "sigma": 0.02}  # enough samples that 6% is far beyond the rows' noise
    base = write_run(tmp_path / "base", synthetic_rows(0, **quiet))
    new = write_run(tmp_path / "new", synthetic_rows(1, slow={SLOWED: 1.06}, **quiet))
    result = compare_runs(load(base), load(new)).set_index(AXES)
    assert result.loc[SLOWED, "p_value"] < 1e-6
    assert result.loc[SLOWED, "noise_floor"] < 0.02
    assert result.loc[SLOWED, "verdict"] == "same"
    assert compare(base, new) == 0
    assert compare(base, new, "--threshold", "0.05") == 1  # the threshold is what let it pass


# --- a real change ------------------------------------------------------------------------------


def test_a_real_slowdown_fails_and_is_the_case_flagged(tmp_path: Path, capsys) -> None:
    base = write_run(tmp_path / "base", synthetic_rows(0, **QUIET))
    new = write_run(tmp_path / "new", synthetic_rows(1, slow={SLOWED: 1.5}, **QUIET))
    capsys.readouterr()
    assert compare(base, new) == 1
    out = capsys.readouterr().out
    first_case = next(line for line in out.splitlines() if "Adamax" in line)
    assert "foreach" in first_case and "100x10k" in first_case and "regression" in first_case
    assert "±" in first_case  # the noise floor column
    assert "fails the gate: 1 regression" in out
    result = compare_runs(load(base), load(new))
    regressions = result[result["verdict"] == "regression"]
    assert len(regressions) == 1
    assert tuple(regressions[AXES].iloc[0]) == SLOWED
    assert regressions["change"].iloc[0] == pytest.approx(1.5, rel=0.1)
    assert regressions["noise_floor"].iloc[0] < 0.1
    assert (result["verdict"].iloc[1:] == "same").all()


def test_a_real_speedup_is_an_improvement_and_passes(tmp_path: Path) -> None:
    base = write_run(tmp_path / "base", synthetic_rows(0, **QUIET))
    new = write_run(tmp_path / "new", synthetic_rows(1, slow={SLOWED: 1 / 1.5}, **QUIET))
    result = compare_runs(load(base), load(new)).set_index(AXES)
    assert result.loc[SLOWED, "verdict"] == "improvement"
    assert (result["verdict"].drop(index=[SLOWED]) == "same").all()
    assert compare(base, new) == 0


# --- beyond the threshold, within the noise: inconclusive ---------------------------------------


def test_a_1_5x_move_inside_10_noisy_samples_is_inconclusive(tmp_path: Path, capsys) -> None:
    noisy = {"n": 10, "sigma": 0.5}  # 10 samples: the median's 95% CI spans x(2)..x(9)
    base = write_run(tmp_path / "base", synthetic_rows(0, **noisy))
    new = write_run(tmp_path / "new", synthetic_rows(1, slow={SLOWED: 1.5}, **noisy))
    result = compare_runs(load(base), load(new)).set_index(AXES)
    case = result.loc[SLOWED]
    assert case["change"] > 1.3  # the move is beyond the threshold: it is not `same`
    assert case["verdict"] == "inconclusive"
    assert case["noise_floor"] > case["change"] - 1
    assert "noise floor" in case["note"] and "> threshold 10%" in case["note"]
    # at this noise a threshold-sized change cannot be seen anywhere: nothing is `same`
    assert (result["verdict"] == "inconclusive").all()
    capsys.readouterr()
    assert compare(base, new) == 0  # inconclusive does not fail the gate...
    assert "10 inconclusive" in capsys.readouterr().out  # ...but it is counted


def test_the_rows_recorded_noise_sets_the_floor() -> None:
    """Tight samples, but the rows say their medians are known to +-20% only (e.g. a noisy
    neighbour during timing): the rows' figure wins over the pooled samples'."""
    base, new = synthetic_rows(0, sigma=0.02), synthetic_rows(1, sigma=0.02, slow={SLOWED: 1.3})
    assert verdicts(base, new).loc[SLOWED, "verdict"] == "regression"
    for rows in (base, new):
        for row in rows:
            if (row["implementation"], row["backend"], row["size"]) == SLOWED:
                row["noise"] = 0.2
    case = verdicts(base, new).loc[SLOWED]
    assert case["base_noise"] == case["new_noise"] == 0.2
    assert case["verdict"] == "inconclusive" and case["note"] == "noise floor 40% > threshold 10%"


def test_the_largest_recorded_noise_of_the_repeats_counts() -> None:
    base = synthetic_rows(0, sigma=0.02, repeats=2, recorded=True)
    new = synthetic_rows(1, sigma=0.02, recorded=True)
    for row in base:
        row["noise"] = 0.01 if row["repeat"] == 0 else 0.15
    assert (verdicts(base, new)["base_noise"] == 0.15).all()


def test_repeats_that_disagree_are_noise() -> None:
    """Three tight repeats at 0.8, 1.0 and 1.2 of the median: the run does not know its median
    better than +-20%, however many samples it pooled; new, 1.15x, is inside that."""
    m = 1e-3
    new = one_case(1, [1.15 * m])
    agreeing = verdicts(one_case(0, [m, m, m]), new).loc[SLOWED]
    assert agreeing["verdict"] == "regression" and agreeing["base_noise"] < 0.02
    case = verdicts(one_case(0, [0.8 * m, m, 1.2 * m]), new).loc[SLOWED]
    assert case["p_value"] < 0.01  # the pooled rank test alone would call it a regression
    assert case["base_noise"] == pytest.approx(0.2, rel=0.05)
    assert case["verdict"] == "inconclusive" and "noise floor" in case["note"]


def test_unstable_rows_make_a_change_inconclusive(tmp_path: Path, capsys) -> None:
    flagged = {"stable": False, "flags": ["interference"]}
    base_rows = synthetic_rows(0, recorded=True, **QUIET)
    new_rows = synthetic_rows(
        1, slow={SLOWED: 1.5}, recorded=True, extra={SLOWED: flagged}, **QUIET
    )
    base, new = write_run(tmp_path / "base", base_rows), write_run(tmp_path / "new", new_rows)
    result = compare_runs(load(base), load(new)).set_index(AXES)  # flags through parquet
    assert result.loc[SLOWED, "verdict"] == "inconclusive"
    assert result.loc[SLOWED, "note"] == "new run: interference"
    assert (result["verdict"].drop(index=[SLOWED]) == "same").all()
    capsys.readouterr()
    assert compare(base, new) == 0
    assert "1 inconclusive, 9 same" in capsys.readouterr().out
    # the base side is named too; a row that is not stable without a flag says so
    marks = {SLOWED: {"stable": False, "flags": ["noisy", "cold"]}, REFERENCE: {"stable": False}}
    base_rows = synthetic_rows(0, recorded=True, extra=marks, **QUIET)
    slower = {SLOWED: 1.5, REFERENCE: 1.5}
    new_rows = synthetic_rows(1, slow=slower, recorded=True, **QUIET)
    result = verdicts(base_rows, new_rows)
    assert result.loc[SLOWED, "note"] == "base run: cold, noisy"
    assert result.loc[REFERENCE, "note"] == "base run: not stable"
    assert set(result.loc[[SLOWED, REFERENCE], "verdict"]) == {"inconclusive"}


def test_unstable_rows_without_a_change_are_same_with_the_flags_noted() -> None:
    extra = {SLOWED: {"stable": False, "flags": ["probe-drift"]}}
    base = synthetic_rows(0, recorded=True, **QUIET)
    new = synthetic_rows(1, recorded=True, extra=extra, **QUIET)
    case = verdicts(base, new).loc[SLOWED]
    assert case["verdict"] == "same" and case["note"] == "new run: probe-drift"


def _with_probe(rows: list[dict], bw: dict[Key, float] | float) -> list[dict]:
    """Every row's in-window bandwidth reading: one for the run, or per case."""
    for row in rows:
        key = (row["implementation"], row["backend"], row["size"])
        row["probe_window_bw"] = bw if isinstance(bw, float) else bw.get(key, 50e9)
    return rows


def test_a_change_the_machine_made_too_is_inconclusive() -> None:
    """New's host 1.2x slower (its probe read 50 -> 41.7 GB/s) and every case 1.2x slower with
    it: nothing is a regression. A genuine 1.5x on top of that still is."""
    slower_host = 1.2
    base = _with_probe(synthetic_rows(0, **QUIET), 50e9)
    new = _with_probe(synthetic_rows(1, scale=slower_host, **QUIET), 50e9 / slower_host)
    unprobed = synthetic_rows(1, scale=slower_host, **QUIET)
    assert set(verdicts(base, unprobed)["verdict"]) == {"regression"}  # without the probe
    result = verdicts(base, new)
    assert set(result["verdict"]) == {"inconclusive"}
    assert result["machine_change"].to_numpy() == pytest.approx(slower_host)
    assert result["note"].str.startswith("the machine moved as much").all()
    slow = {SLOWED: 1.5}
    new = _with_probe(synthetic_rows(1, scale=slower_host, slow=slow, **QUIET), 50e9 / slower_host)
    result = verdicts(base, new)
    assert result.loc[SLOWED, "verdict"] == "regression"
    assert (result["verdict"].drop(index=[SLOWED]) == "inconclusive").all()


def test_a_host_whose_op_rate_fell_excuses_a_forloop_sized_change() -> None:
    """The bandwidth held still, the host dispatched ops 1.15x slower (the forloop rows' ceiling),
    and the cases moved with it: inconclusive, named by the op-rate probe."""
    base = _with_probe(synthetic_rows(0, **QUIET), 50e9)
    new = _with_probe(synthetic_rows(1, scale=1.15, **QUIET), 50e9)
    assert set(verdicts(base, new)["verdict"]) == {"regression"}  # the bandwidth excuses nothing
    for rows, ops in ((base, 4.6e5), (new, 4.0e5)):
        for row in rows:
            row["probe_window_ops"] = ops
    result = verdicts(base, new)
    assert set(result["verdict"]) == {"inconclusive"}
    assert result["machine_ops_change"].to_numpy() == pytest.approx(1.15)
    assert result["note"].str.contains("its op-rate probe read 1.150x slower").all()


def test_a_machine_that_moved_the_other_way_excuses_nothing() -> None:
    base = _with_probe(synthetic_rows(0, **QUIET), 50e9)
    new = _with_probe(synthetic_rows(1, slow={SLOWED: 1.5}, **QUIET), {SLOWED: 60e9})
    case = verdicts(base, new).loc[SLOWED]
    assert case["machine_change"] == pytest.approx(50 / 60)
    assert case["verdict"] == "regression" and case["note"] == ""
    # one side without the reading (probe off): no machine figure, the verdict as before
    new = synthetic_rows(1, slow={SLOWED: 1.2}, **QUIET)
    case = verdicts(base, new).loc[SLOWED]
    assert math.isnan(case["machine_change"]) and case["verdict"] == "regression"


# --- ratio mode ---------------------------------------------------------------------------------


def test_ratio_mode_compares_across_machines(tmp_path: Path, capsys) -> None:
    base = write_run(tmp_path / "base", synthetic_rows(0, **QUIET), hostname="laptop")
    twice_as_slow = write_run(
        tmp_path / "new", synthetic_rows(1, scale=2.0, **QUIET), hostname="ci"
    )
    capsys.readouterr()
    assert compare(base, twice_as_slow) == 1  # absolute times: every case "regressed"
    assert "consider --metric ratio" in capsys.readouterr().out
    assert compare(base, twice_as_slow, "--metric", "ratio") == 0
    # on the slow machine, one of ours also lost 1.5x against torch: ratio mode finds it alone
    slowed = synthetic_rows(2, scale=2.0, slow={SLOWED: 1.5}, **QUIET)
    slowed_run = write_run(tmp_path / "slowed", slowed, hostname="ci")
    assert compare(base, slowed_run, "--metric", "ratio") == 1
    result = compare_runs(load(base), load(slowed_run), metric="ratio")
    (regression,) = result[result["verdict"] == "regression"].itertuples()
    assert (regression.implementation, regression.backend, regression.size) == SLOWED


def test_ratio_mode_carries_the_torch_references_noise_and_flags() -> None:
    base = synthetic_rows(0, recorded=True, **QUIET)
    new = synthetic_rows(1, slow={SLOWED: 1.5}, recorded=True, **QUIET)
    assert verdicts(base, new, metric="ratio").loc[SLOWED, "verdict"] == "regression"
    # the reference's median known to +-60% only: so is every vs_torch_best of its problem
    noisy_ref = synthetic_rows(
        1, slow={SLOWED: 1.5}, recorded=True, extra={REFERENCE: {"noise": 0.6}}, **QUIET
    )
    ratio = verdicts(base, noisy_ref, metric="ratio").loc[SLOWED]
    assert ratio["new_noise"] > 0.6 and ratio["verdict"] == "inconclusive"
    assert verdicts(base, noisy_ref).loc[SLOWED, "verdict"] == "regression"  # time: no torch in it
    flagged = {REFERENCE: {"stable": False, "flags": ["interference"]}}
    flagged_ref = synthetic_rows(1, slow={SLOWED: 1.5}, recorded=True, extra=flagged, **QUIET)
    ratio = verdicts(base, flagged_ref, metric="ratio").loc[SLOWED]
    assert ratio["verdict"] == "inconclusive" and ratio["note"] == "new run: torch interference"


def test_ratio_point_estimate_is_the_summary_figure(tmp_path: Path) -> None:
    base = load(write_run(tmp_path / "base", synthetic_rows(0)))
    result = compare_runs(base, base, metric="ratio")
    expected = with_ratios(base).set_index(AXES)["vs_torch_best"]
    got = result.set_index(AXES)["base_vs_torch"]
    pd.testing.assert_series_equal(got.sort_index(), expected.sort_index(), check_names=False)
    assert not got.isna().any()  # the NaN flag of the small size did not break the matching


# --- status: failures, missing and added cases -------------------------------------------------


def test_failed_skipped_added_and_missing_cases(tmp_path: Path, capsys) -> None:
    base = write_run(tmp_path / "base", synthetic_rows(0, **QUIET)[1:])  # lacks the first case
    statuses = {SLOWED: "error", ("torch", "forloop", "10x1k"): "skipped"}
    new_rows = synthetic_rows(1, status=statuses, **QUIET)
    new = write_run(tmp_path / "new", new_rows[:-1])  # lacks the last case
    assert compare(base, new, "--threshold", "0.1") == 1
    result = compare_runs(load(base), load(new)).set_index(AXES)
    verdict = result["verdict"]
    assert verdict[SLOWED] == "new-failure" and "boom" in result.loc[SLOWED, "note"]
    assert verdict["torch", "forloop", "10x1k"] == "skipped"
    assert verdict["workbench", "forloop", "10x1k"] == "added"
    assert verdict["torch", "foreach", "100x10k"] == "missing"
    assert (verdict.drop(index=[SLOWED]) != "new-failure").all()
    assert not verdict.isin(["regression"]).any()  # a failure is not a slowdown
    # the other way round, the failure is fixed
    back = compare_runs(load(new), load(base)).set_index(AXES)
    assert back.loc[SLOWED, "verdict"] == "fixed"
    # failing in both runs is reported, but it is not a new failure
    both = write_run(tmp_path / "both", new_rows[:-1])
    capsys.readouterr()
    assert compare(new, both) == 0
    assert "1 failed" in capsys.readouterr().out


def test_a_no_op_step_is_a_new_failure(tmp_path: Path, capsys) -> None:
    base = write_run(tmp_path / "base", synthetic_rows(0, **QUIET))
    new = write_run(tmp_path / "new", synthetic_rows(1, status={SLOWED: "no-op"}, **QUIET))
    result = compare_runs(load(base), load(new)).set_index(AXES)
    assert result.loc[SLOWED, "verdict"] == "new-failure"
    assert result.loc[SLOWED, "note"].startswith("no-op")
    capsys.readouterr()
    assert compare(base, new) == 1
    assert "fails the gate: 1 new-failure" in capsys.readouterr().out


def test_a_missing_case_fails_the_gate_unless_allowed(tmp_path: Path, capsys) -> None:
    base = write_run(tmp_path / "base", synthetic_rows(0, **QUIET))
    new = write_run(tmp_path / "new", synthetic_rows(1, **QUIET)[:-1])  # lost the last case
    result = compare_runs(load(base), load(new))
    assert list(result["verdict"]).count("missing") == 1 and result["verdict"].iloc[0] == "missing"
    capsys.readouterr()
    assert compare(base, new) == 1
    out = capsys.readouterr().out
    assert "fails the gate: 1 missing" in out and "--allow-missing" in out
    assert compare(base, new, "--allow-missing") == 0
    assert "1 missing, 9 same" in capsys.readouterr().out  # accepted, still counted
    # missing and a new failure: allowing the first does not allow the second
    broken = write_run(
        tmp_path / "broken", synthetic_rows(1, status={SLOWED: "error"}, **QUIET)[:-1]
    )
    assert compare(base, broken, "--allow-missing") == 1


@pytest.mark.skipif(
    "allow_missing" not in vars(build_parser().parse_args(["compare", "a", "b"])),
    reason="cli.py's compare parser has no --allow-missing yet",
)
def test_allow_missing_on_the_command_line(tmp_path: Path) -> None:
    base = write_run(tmp_path / "base", synthetic_rows(0, **QUIET))
    new = write_run(tmp_path / "new", synthetic_rows(1, **QUIET)[:-1])
    assert compare(base, new) == 1
    assert compare(base, new, "--allow-missing") == 0


def test_a_case_skipped_in_base_and_absent_from_new_is_not_missing() -> None:
    base = synthetic_rows(0, status={SLOWED: "skipped"}, **QUIET)
    new = [
        r
        for r in synthetic_rows(1, **QUIET)
        if (r["implementation"], r["backend"], r["size"]) != SLOWED
    ]
    result = verdicts(base, new)
    assert result.loc[SLOWED, "verdict"] == "skipped"
    assert (result["verdict"].drop(index=[SLOWED]) == "same").all()


def test_repeats_are_pooled(tmp_path: Path) -> None:
    base = write_run(tmp_path / "base", synthetic_rows(0, n=20, repeats=2, **QUIET))
    new = write_run(tmp_path / "new", synthetic_rows(1, n=40, **QUIET))
    result = compare_runs(load(base), load(new))
    assert len(result) == 10 and set(result["verdict"]) == {"same"}
    assert (result["n_base"] == 40).all() and (result["n_new"] == 40).all()


def test_an_unreadable_run_exits_2_naming_the_file(tmp_path: Path, capsys) -> None:
    good = write_run(tmp_path / "good", synthetic_rows(0))
    assert compare(good, tmp_path / "nowhere") == 2
    assert "nowhere" in capsys.readouterr().out
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "records.parquet").write_bytes(b"garbage")
    assert compare(bad, good) == 2
    out = capsys.readouterr().out
    assert "records.parquet" in out and "cannot be read as parquet" in out


def test_two_real_tiny_runs_of_the_same_code_compare_equal(tmp_path: Path, capsys) -> None:
    suite = tmp_path / "tiny.toml"
    # the probes that compare does not read (memory, launches) would only slow the test down
    tiny = TINY.format(extra_impl="", repeats=1).replace("= true", "= false")
    suite.write_text(tiny)
    runs = []
    for name in ("a", "b"):
        assert main(["run", str(suite), "--out", str(tmp_path / name)]) == 0
        (run,) = (tmp_path / name).iterdir()
        runs.append(run)
    capsys.readouterr()
    assert compare(*runs) == 0
    assert compare(*runs, "--metric", "ratio") == 0
    result = compare_runs(load(runs[0]), load(runs[1]))
    assert len(result) == 4 and not result["verdict"].isin(["added", "missing"]).any()
    assert result["noise_floor"].notna().all()  # real rows record their noise


# --- make regress: workbench regress, the one gate ----------------------------------------------


def _make(target: str, storage: Path, suite: Path, out: Path) -> subprocess.CompletedProcess:
    command = ["make", "--no-print-directory", "-C", str(REPO), "-o", ".venv/.installed", target]
    command += [f"PY={sys.executable}", f"REGRESS_STORAGE={storage}", f"REGRESS_SUITE={suite}"]
    command += [f"REGRESS_ARGS=--out {out}"]
    return subprocess.run(command, capture_output=True, text=True, timeout=300)


@pytest.mark.skipif(subprocess.run(["which", "make"], capture_output=True).returncode != 0,
                    reason="make is not installed")  # fmt: skip
def test_make_regress_is_workbench_regress(tmp_path: Path) -> None:
    from tests.test_gate import SUITE

    suite, storage, out = tmp_path / "gate.toml", tmp_path / "baselines", tmp_path / "results"
    suite.write_text(SUITE)
    first = _make("regress", storage, suite, out)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "is now the baseline" in first.stdout
    (stored,) = storage.glob("*/gate/records.parquet")
    second = _make("regress", storage, suite, out)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "against the baseline of machine" in second.stdout
    saved = _make("regress-baseline", storage, suite, out)
    assert saved.returncode == 0 and "--save-baseline" in saved.stdout
    assert len(list(out.iterdir())) == 3
    assert list(storage.glob("*/gate/records.parquet")) == [stored]
