"""`workbench compare` and `make regress`: noise alone never fails them, a real slowdown does.

Synthetic runs are written with RunStore: lognormal step times (timing noise is right-skewed)
around fixed medians, so the truth is known: same distribution, or one case slowed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.test_runner import TINY
from workbench.cli import main
from workbench.results import RunStore, load
from workbench.results.compare import compare_runs
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
Key = tuple[str, str, str]


def synthetic_rows(
    seed: int,
    *,
    n: int = 40,
    sigma: float = 0.1,
    scale: float = 1.0,
    slow: dict[Key, float] | None = None,
    repeats: int = 1,
    status: dict[Key, str] | None = None,
) -> list[dict]:
    """One row per case and repeat; sigma 0.1 is an IQR of ~13% of the median, a noisy machine."""
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
                if key in (status or {}):
                    row.update(status=status[key], error="RuntimeError: boom", samples_s=None)
                rows.append(row)
    return rows


def write_run(path: Path, rows: list[dict], hostname: str = "vm") -> Path:
    store = RunStore.create(path, {"run_id": path.name, "environment": {"hostname": hostname}}, "")
    store.rows = rows[:-1]  # append flushes every row held: one parquet write for the whole run
    store.append(rows[-1])
    store.set_status("complete")
    return path


def compare(base: Path, new: Path, *args: str) -> int:
    return main(["compare", str(base), str(new), *args])


@pytest.mark.parametrize("metric", ["time", "ratio"])
def test_the_same_distribution_twice_rarely_flags_anything(metric: str) -> None:
    """False positives over 50 pairs of noisy runs (sigma 0.1, 40 samples, 10 cases each).

    alpha bounds the share of runs that noise fails at ~1% (Holm over the cases); these seeds
    give 2/50 (time) and 1/50 (ratio), and over 300 other seeds 5/300 and 3/300.
    """
    failing_runs, flagged_cases, judged = 0, 0, 0
    for seed in range(50):
        base = pd.DataFrame(synthetic_rows(2 * seed))
        new = pd.DataFrame(synthetic_rows(2 * seed + 1))
        result = compare_runs(base, new, metric=metric)
        assert not result["verdict"].isin(["added", "removed"]).any()
        judged += int(result["p_value"].notna().sum())
        flagged_cases += int(result["verdict"].isin(["regression", "improvement"]).sum())
        failing_runs += int((result["verdict"] == "regression").any())
    assert judged == 50 * (10 if metric == "time" else 6)  # ratio mode: torch is the reference
    assert failing_runs <= 2 and flagged_cases <= 3, (failing_runs, flagged_cases)


def test_the_same_distribution_twice_exits_0(tmp_path: Path, capsys) -> None:
    exits = []
    for seed in range(10):
        base = write_run(tmp_path / f"base{seed}", synthetic_rows(2 * seed))
        new = write_run(tmp_path / f"new{seed}", synthetic_rows(2 * seed + 1))
        exits += [compare(base, new), compare(base, new, "--metric", "ratio")]
    assert "10 same" in capsys.readouterr().out
    assert set(exits) == {0}


def test_a_real_slowdown_fails_and_is_the_case_flagged(tmp_path: Path, capsys) -> None:
    base = write_run(tmp_path / "base", synthetic_rows(0))
    new = write_run(tmp_path / "new", synthetic_rows(1, slow={SLOWED: 1.5}))
    capsys.readouterr()
    assert compare(base, new) == 1
    table = capsys.readouterr().out
    first_case = next(line for line in table.splitlines() if "Adamax" in line)
    assert "foreach" in first_case and "100x10k" in first_case and "regression" in first_case
    result = compare_runs(load(base), load(new))
    regressions = result[result["verdict"] == "regression"]
    assert len(regressions) == 1
    assert tuple(regressions[["implementation", "backend", "size"]].iloc[0]) == SLOWED
    assert regressions["change"].iloc[0] == pytest.approx(1.5, rel=0.1)
    assert (result["verdict"].iloc[1:] == "same").all()


def test_a_significant_2pc_slowdown_is_below_a_5pc_threshold(tmp_path: Path) -> None:
    quiet = {"n": 400, "sigma": 0.02}  # enough samples that 2% is far beyond noise
    base = write_run(tmp_path / "base", synthetic_rows(0, **quiet))
    new = write_run(tmp_path / "new", synthetic_rows(1, slow={SLOWED: 1.02}, **quiet))
    result = compare_runs(load(base), load(new), threshold=0.05).set_index(
        ["implementation", "backend", "size"]
    )
    assert result.loc[SLOWED, "p_value"] < 1e-6
    assert result.loc[SLOWED, "verdict"] == "same"
    assert compare(base, new, "--threshold", "0.05") == 0
    assert compare(base, new, "--threshold", "0.01") == 1  # the threshold is what let it pass


def test_ratio_mode_compares_across_machines(tmp_path: Path, capsys) -> None:
    base = write_run(tmp_path / "base", synthetic_rows(0), hostname="laptop")
    twice_as_slow = write_run(tmp_path / "new", synthetic_rows(1, scale=2.0), hostname="ci")
    capsys.readouterr()
    assert compare(base, twice_as_slow) == 1  # absolute times: every case "regressed"
    assert "consider --metric ratio" in capsys.readouterr().out
    assert compare(base, twice_as_slow, "--metric", "ratio") == 0
    # on the slow machine, one of ours also lost 1.5x against torch: ratio mode finds it alone
    slowed = synthetic_rows(2, scale=2.0, slow={SLOWED: 1.5})
    slowed_run = write_run(tmp_path / "slowed", slowed, hostname="ci")
    assert compare(base, slowed_run, "--metric", "ratio") == 1
    result = compare_runs(load(base), load(slowed_run), metric="ratio")
    (regression,) = result[result["verdict"] == "regression"].itertuples()
    assert (regression.implementation, regression.backend, regression.size) == SLOWED


def test_ratio_point_estimate_is_the_summary_figure(tmp_path: Path) -> None:
    base = load(write_run(tmp_path / "base", synthetic_rows(0)))
    result = compare_runs(base, base, metric="ratio")
    axes = ["implementation", "backend", "size"]
    expected = with_ratios(base).set_index(axes)["vs_torch_best"]
    got = result.set_index(axes)["base_vs_torch"]
    pd.testing.assert_series_equal(got.sort_index(), expected.sort_index(), check_names=False)
    assert not got.isna().any()  # the NaN flag of the small size did not break the matching


def test_failed_skipped_added_and_removed_cases(tmp_path: Path, capsys) -> None:
    base = write_run(tmp_path / "base", synthetic_rows(0)[1:])  # lacks the first case
    new_rows = synthetic_rows(1, status={SLOWED: "error", ("torch", "forloop", "10x1k"): "skipped"})
    new = write_run(tmp_path / "new", new_rows[:-1])  # lacks the last case
    assert compare(base, new) == 1
    result = compare_runs(load(base), load(new)).set_index(["implementation", "backend", "size"])
    verdicts = result["verdict"]
    assert verdicts[SLOWED] == "regression" and "boom" in result.loc[SLOWED, "note"]
    assert verdicts["torch", "forloop", "10x1k"] == "skipped"
    assert verdicts["workbench", "forloop", "10x1k"] == "added"
    assert verdicts["torch", "foreach", "100x10k"] == "removed"
    assert (verdicts.drop([SLOWED]) != "regression").all()
    # failing in both runs is reported, but it is not a new regression
    both = write_run(tmp_path / "both", new_rows[:-1])
    assert compare(new, both) == 0
    assert "failed" in capsys.readouterr().out


def test_repeats_are_pooled(tmp_path: Path) -> None:
    base = write_run(tmp_path / "base", synthetic_rows(0, n=20, repeats=2))
    new = write_run(tmp_path / "new", synthetic_rows(1, n=40))
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
    assert len(result) == 4 and not result["verdict"].isin(["added", "removed"]).any()


# --- make regress: the pytest-benchmark gate ----------------------------------------------------

TINY_BENCHMARK = """
def test_sum(benchmark):
    benchmark.pedantic(sum, args=(range(2000),), rounds=20, iterations=10)
"""


def _make(target: str, storage: Path, bench: Path) -> subprocess.CompletedProcess:
    # under `make test -n 2` this runs in an xdist worker, whose variables would make
    # pytest-benchmark think it is one too and switch itself off
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_XDIST", "PYTEST_ADD"))}
    command = ["make", "--no-print-directory", "-C", str(REPO), "-o", ".venv/.installed", target]
    command += [f"PY={sys.executable}", f"REGRESS_STORAGE={storage}", f"REGRESS_TESTS={bench}"]
    command += ["REGRESS_ARGS="]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)


def _scale_saved(path: Path, factor: float) -> None:
    """Pretend a saved baseline ran `factor` times the time it did."""
    data = json.loads(path.read_text())
    for bench in data["benchmarks"]:
        stats = bench["stats"]
        for k in ("min", "max", "mean", "median", "q1", "q3", "iqr", "stddev", "total"):
            stats[k] *= factor
    path.write_text(json.dumps(data))


@pytest.mark.skipif(subprocess.run(["which", "make"], capture_output=True).returncode != 0,
                    reason="make is not installed")  # fmt: skip
def test_make_regress_saves_a_baseline_first_then_fails_only_on_regression(tmp_path) -> None:
    bench, storage = tmp_path / "test_tiny_bench.py", tmp_path / "baselines"
    bench.write_text(TINY_BENCHMARK)
    first = _make("regress", storage, bench)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "this run becomes it" in first.stdout
    (saved,) = storage.glob("*/0001_*.json")
    # scaled far beyond any noise, so that the verdicts are certain
    _scale_saved(saved, 0.1)  # the baseline was 10x faster: now a regression
    slower = _make("regress", storage, bench)
    assert slower.returncode != 0
    assert "Performance has regressed" in slower.stdout + slower.stderr
    _scale_saved(saved, 100.0)  # the baseline was 10x slower: an improvement passes
    faster = _make("regress", storage, bench)
    assert faster.returncode == 0, faster.stdout + faster.stderr
    assert "comparing with the newest baseline" in faster.stdout
    assert len(list(storage.glob("*/*.json"))) == 1  # comparing never moves the baseline
