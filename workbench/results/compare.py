"""Compare two runs case by case: what got slower, what got faster, and whether it is beyond noise.

Cases are matched by their axes (optimizer, implementation, backend, size, dtype, device, problem,
flag_*), never by case_id alone, and the repeats of a case are pooled: their raw samples are
concatenated. A case is a regression (or, mirrored, an improvement) only when three things hold:

- significance: the difference is unlikely under noise alone (Holm-corrected p < alpha);
- size: the median moved by more than `threshold` (a ratio above 1 + threshold, or below
  1 / (1 + threshold) for an improvement, so that a change and its undoing are symmetric);
- the noise floor: the change is larger than the noise the two runs measured in themselves, the
  relative half-widths of the two medians' 95% confidence intervals added (a ratio above
  1 + floor or below 1 / (1 + floor): to first order, the two intervals do not overlap).

Significance alone is not enough: with hundreds of samples a 1% drift between two runs (another
process, the clock of the day) is "significant". Size alone is not enough: with a handful of
samples a 10% gap is often noise. And a rank test on pooled samples treats every sample as
independent, while samples of one process share its state (memory placement, clocks, the other
processes of the moment): two back-to-back runs of one commit can differ far beyond what their
pooled samples say. The noise floor asks for a change the runs' own intervals cannot explain.

The noise of a side (`base_noise`, `new_noise`) is, where the rows record it, their `noise`
column (workbench.harness.stability.relative_noise, measured per row; the largest over the
case's repeats), else relative_noise of the pooled samples; with several repeats, at least half
the relative spread of the repeats' medians (repeats that disagree are noise the run measured).
A side with fewer than 2 samples has an unknown (infinite) noise.

Verdicts of a case ok in both runs:

- regression / improvement: all three of the above;
- inconclusive: beyond the threshold but not significant or not beyond the noise floor; or the
  noise floor exceeds the threshold (a threshold-sized change could not have been seen, whatever
  the change); or beyond the threshold while a side's rows are marked unstable (`stable` False
  or a flag such as interference: the number is not to be taken at face value). `note` says why;
- same: within the threshold, with a noise floor below it.

The machine's own move (metric="time"): rows record the memory bandwidth a streaming probe read in
the rounds of their group (`probe_window_bw`), and on CPU the host's op rate (`probe_window_ops`: a
burst of tiny ops, the ceiling of forloop steps, which moved 12-26% between back-to-back runs while
the bandwidth held still). Back-to-back runs of one commit on a shared VM move as a whole by up to
~8% in step time, with the probe (measured: the run-level shift of 79 cases' times against the
probe's, r = -0.6 over four quick runs), and a single group can land in a 20% dip of the host. When
both sides have the reading, `machine_change` is base bw / new bw and `machine_ops_change` base ops
/ new ops (above 1: the machine was slower in new). A change beyond the threshold that is no longer
beyond it once either monitor's move in the same direction is taken out of it (or that the machine's
move exceeds: a probe that read a burst moves further than the steps) is inconclusive ("the machine
moved as much"): the gate cannot tell a slower build from a slower host. A machine that moved the
other way never excuses anything, and nothing is made a regression by the probe alone.

The default threshold is DEFAULT_THRESHOLD, 10%: back-to-back runs of the same commit on a 2-core
VM drift by 5-7% on many cases, a drift between processes that no run sees in its own samples, so
a 5% threshold fails identical code. Ask for less (--threshold) on a quiet, pinned machine.

metric="time" compares absolute step times (same machine). The test is Mann-Whitney U on the raw
samples, one-sided in each direction: a regression gate asks "is new slower?", not "is new
different?", and an improvement is the mirror question. Rank-based, so the long right tail of
timing samples (preemption, page faults) does not swamp it the way it would a t-test.

metric="ratio" compares `vs_torch_best` (summary.with_ratios: torch.optim's fastest median for the
same problem / ours), measured side by side inside each run, so two runs from different machines
can be compared: a machine twice as slow slows torch and ours alike. The change is
base vs_torch / new vs_torch (above 1: we lost ground against torch). Its significance comes from
a bootstrap: the raw samples of every row behind each ratio (ours and each torch backend) are
resampled, the medians and vs_torch_best recomputed, which gives the standard error of
log(vs_torch_best) in each run; z = log(change) / hypot(se_base, se_new) and a normal p. A normal
p rather than a count of resamples beyond 1, because Holm's correction (below) needs p-values far
smaller than 1 / resamples. Seeded: the same runs always get the same verdict. Too few samples
make any bootstrap overconfident; below `MIN_BOOTSTRAP_SAMPLES` the case is not tested (and so
never a regression). A side's noise in ratio mode is that of its vs_torch_best: its case's noise
and that of the torch reference (the fastest torch row of the problem) in quadrature, two
independent medians; the reference's stability flags (prefixed "torch") count as the side's.
Ratio mode has less power than time mode: it inherits the noise of torch's medians too (a torch
reference with 16 samples and a heavy tail leaves a 1.5x loss at p ~ 0.02 before correction).

Many cases are judged at once, so p-values are Holm-corrected over the tested cases: `alpha`
bounds the chance that noise flags any case of the run, not each case (at alpha per case, noise
fails a 10-case run 7-10% of the time in simulation).

Status: a case whose rows are not all ok (error, timeout, no-op: a step that changed nothing) is
failed: "new-failure" when it was ok in base, "failed" when it failed in both, "fixed" when it
failed in base only. "missing": in base, absent from new (a case skipped in base and absent from
new lost nothing: "skipped"); "added": only in new. "skipped" rows (a peer not installed, CUDA on
a CPU box) are not failures. The gate (`workbench compare`'s exit 1) is any regression,
new-failure or missing case (missing accepted with --allow-missing); inconclusive does not fail
it, and is counted.

Exact measurements (EXACT_COLUMNS): a case's `state_bytes` (its optimizer state) and
`step_peak_bytes` (the memory one step allocates beyond it), written by measure.finish_case when
the suite measures memory, and the `final_loss` of a convergence case, do not vary between runs
of one build: they need no statistics. Where both runs hold one for a case ok in both, any
growth of the bytes, or a final loss worse than base by more than `loss_tolerance` of |base|
(DEFAULT_LOSS_TOLERANCE, relative 1e-3: a reordered reduction moves a loss by far less), is a
regression, a shrink (or a loss better by as much) an improvement, else same; over repeats each
side's largest value (the worst the run saw) counts. The figures are the columns `base_<name>`
and `new_<name>`, what changed is in `note` ("state bytes 800000 -> 1200000"), and their verdict
is `exact_verdict` (None where neither column is on both sides: an old run, memory off).
One row per case still: `timing_verdict` is the verdict of the timing test alone, and `verdict`,
the one the gate reads, is the worse (in the order of VERDICTS) of the two; so a grown state fails
the gate whatever the times did, while a shrunk one is an improvement only where the timing
verdict is same (or improvement): an inconclusive or slower case stays what it was. A case with
no step times on either side (a convergence case) has timing verdict "n/a" and is judged by its
exact verdict alone. In ratio mode torch.optim's rows stay "n/a": they are the reference.

Machines: a run's manifest records its machine's fingerprint (environment["machine"]: CPU model,
logical cores, memory in GiB, GPU name, torch version; see workbench.harness.environment). Two
runs whose fingerprints differ are refused in time mode (exit 2, naming the fields that differ:
absolute times of two machines differ by the machine; a torch upgrade counts too, it moves
torch.optim's reference and the kernels both), unless --allow-other-machine; ratio mode compares
them. Runs recorded before the fingerprint get only a printed hint where hostname, CPU or GPU
differ.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from functools import partial
from typing import Any, Literal

import numpy as np
import pandas as pd

from workbench.harness.stability import relative_noise

from .summary import problem_columns, with_ratios

Metric = Literal["time", "ratio"]

# The columns that name a case. `repeat` is not among them: repeats of a case are pooled.
CASE_AXES = (
    "optimizer", "implementation", "backend", "size", "dtype", "device", "world_size", "problem",
)  # fmt: skip
# Sort order of the report: what fails the gate first, then what needs a look, then the rest.
VERDICTS = ("regression", "new-failure", "missing", "inconclusive", "failed", "improvement")
VERDICTS += ("fixed", "added", "skipped", "same", "n/a")
# The verdicts that make `workbench compare` exit 1 ("missing" unless --allow-missing).
GATE_VERDICTS = ("regression", "new-failure", "missing")
# Back-to-back runs of one commit on a 2-core VM drift 5-7% on many cases: see the docstring.
DEFAULT_THRESHOLD = 0.10
BOOTSTRAP_RESAMPLES = 1000
MIN_BOOTSTRAP_SAMPLES = 8
# What pool_cases adds to a case's axes.
POOLED_FIELDS = ("status", "error", "samples", "noise", "flags", "unstable", "machine_bw")
POOLED_FIELDS += ("machine_ops", "exact")
# Deterministic per case (see the docstring): any change is real. Column -> how a note names it.
EXACT_COLUMNS = {
    "state_bytes": "state bytes", "step_peak_bytes": "step peak bytes", "final_loss": "final loss",
}  # fmt: skip
# The columns whose growth is a regression outright; final_loss gets `loss_tolerance`.
_BYTES = ("state_bytes", "step_peak_bytes")
DEFAULT_LOSS_TOLERANCE = 1e-3


def case_axes(*frames: pd.DataFrame) -> list[str]:
    """The axis columns present in any of the frames: flags one run lacks are None there."""
    present = {c for df in frames for c in df.columns}
    flags = sorted(c for c in present if c.startswith("flag_"))
    return [c for c in CASE_AXES if c in present] + flags


def scalar_value(value: Any) -> Any:
    """A hashable, comparable key value: NaN and None alike are None; numpy scalars are python."""
    if value is None or (not isinstance(value, (str, bytes)) and pd.isna(value)):
        return None
    return value.item() if isinstance(value, np.generic) else value


# Axes added after runs were recorded: an old run's rows hold their value implicitly.
_AXIS_DEFAULTS = {"world_size": 1}


def _axis_value(row: dict[str, Any], axis: str) -> Any:
    value = scalar_value(row.get(axis))
    return _AXIS_DEFAULTS.get(axis) if value is None else value


def pool_cases(df: pd.DataFrame, axes: list[str]) -> pd.DataFrame:
    """One row per case: its axes, pooled ok samples, one status for all its repeats, its noise
    (see _side_noise), the union of its ok rows' flags and whether any ok row is unstable."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for row in df.to_dict("records"):
        groups.setdefault(tuple(_axis_value(row, a) for a in axes), []).append(row)
    out = [{**dict(zip(axes, key)), **_pool(rows)} for key, rows in groups.items()]
    return pd.DataFrame(out, columns=[*axes, *POOLED_FIELDS])


def _pool(rows: list[dict[str, Any]]) -> dict[str, Any]:
    ok = [r for r in rows if r.get("status", "ok") == "ok"]
    bad = [
        f"{r['status']}: {r.get('error')}"
        for r in rows
        if r.get("status", "ok") not in ("ok", "skipped")
    ]
    chunks = [c for c in map(_row_samples, ok) if len(c)]
    samples = np.concatenate(chunks) if chunks else np.empty(0)
    flags = sorted({f for r in ok for f in _flag_list(r.get("flags"))})
    return {
        "status": "failed" if bad else "ok" if ok else "skipped",
        "error": bad[0] if bad else None,
        "samples": samples,
        "noise": _side_noise(ok, chunks, samples),
        "flags": flags,
        "unstable": any(_row_unstable(r) for r in ok),
        "machine_bw": _machine_reading(ok, "probe_window_bw"),
        "machine_ops": _machine_reading(ok, "probe_window_ops"),
        "exact": _exact_values(ok),
    }


def _exact_values(ok: list[dict[str, Any]]) -> dict[str, float]:
    """Each EXACT_COLUMNS column the case's ok rows hold: the largest over its repeats (the worst
    the run saw; repeats of one build agree anyway). Absent where no row recorded it."""
    out = {}
    for column in EXACT_COLUMNS:
        values = [v for r in ok if (v := _finite(r.get(column))) is not None]
        if values:
            out[column] = max(values)
    return out


def _machine_reading(ok: list[dict[str, Any]], column: str) -> float:
    """What a monitor read in the group's rounds (`probe_window_bw`: streaming bandwidth;
    `probe_window_ops`: the host's op rate), the median over the case's repeats; NaN where no
    row recorded it (probe off, a sharded case, an old run)."""
    readings = [v for r in ok if (v := _finite(r.get(column))) and v > 0]
    return float(np.median(readings)) if readings else math.nan


def _row_samples(row: dict[str, Any]) -> np.ndarray:
    # a row without raw samples still has its median: a test on it has no power
    samples = row.get("samples_s")
    chunk = np.asarray(samples if samples is not None else [row.get("median_s")], dtype=float)
    return chunk[np.isfinite(chunk)]


def _side_noise(ok: list[dict[str, Any]], chunks: list[np.ndarray], samples: np.ndarray) -> float:
    """A case's relative noise in one run: what its rows measured, else what its samples say, and
    at least what its repeats' disagreement says."""
    recorded = [v for r in ok if (v := _finite(r.get("noise"))) is not None]
    # the rows' own figure, from the samples each was timed with, is what the harness trusted;
    # pooling repeats would shrink it as if they were independent, which they are not
    noise = max(recorded) if recorded else _pooled_noise(samples)
    if len(chunks) > 1:  # repeats are separate processes: their spread is noise between runs
        medians = [float(np.median(c)) for c in chunks]
        noise = max(noise, 0.5 * (max(medians) - min(medians)) / float(np.median(medians)))
    return noise


def _pooled_noise(samples: np.ndarray) -> float:
    # one number says nothing about its own noise: unknown is infinite, never precise
    return relative_noise(samples.tolist()) if len(samples) >= 2 else math.inf


def _finite(value: Any) -> float | None:
    value = scalar_value(value)
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def _flag_list(value: Any) -> list[str]:
    """A `flags` cell as names: parquet gives numpy arrays, old rows None or NaN."""
    if isinstance(value, str):
        return [f.strip() for f in value.split(",") if f.strip()]
    if isinstance(value, Iterable):
        return [str(f) for f in value if f is not None and str(f)]
    return []


def _row_unstable(row: dict[str, Any]) -> bool:
    """An ok row marked not stable, or carrying a flag. Unknown (an old run) is stable."""
    stable = row.get("stable")
    return (isinstance(stable, (bool, np.bool_)) and not stable) or bool(
        _flag_list(row.get("flags"))
    )


def compare_runs(
    base: pd.DataFrame,
    new: pd.DataFrame,
    *,
    threshold: float = DEFAULT_THRESHOLD,
    alpha: float = 0.01,
    metric: Metric = "time",
    loss_tolerance: float = DEFAULT_LOSS_TOLERANCE,
) -> pd.DataFrame:
    """One row per case of either run: the axes, verdict, base/new medians, change, noise, p-value.

    `change` is the quantity the verdict judges, above 1 meaning slower: new/base median time
    (metric="time") or base/new vs_torch_best (metric="ratio"). `base_noise` and `new_noise` are
    each side's relative noise, `noise_floor` their sum. `p_raw` is the one-sided p-value in the
    direction of the change, `p_value` the same after Holm's correction over the cases compared.
    `note` says why a verdict is what it is. Sorted: what fails the gate first.

    Where the runs hold EXACT_COLUMNS, `exact_verdict` judges them, `timing_verdict` is the
    timing test's verdict and `verdict` the worse of the two (see the module docstring);
    `base_<column>` and `new_<column>` are present for the exact columns either run has.
    """
    if metric not in ("time", "ratio"):
        raise ValueError(f"metric must be 'time' or 'ratio', not {metric!r}")
    if threshold < 0 or not 0 < alpha < 1:
        raise ValueError(f"need threshold >= 0 and 0 < alpha < 1, got {threshold}, {alpha}")
    if not loss_tolerance >= 0:
        raise ValueError(f"need loss_tolerance >= 0, got {loss_tolerance}")
    axes = case_axes(base, new)
    pooled = {"base": pool_cases(base, axes), "new": pool_cases(new, axes)}
    test: Callable[[dict, dict], dict[str, Any]] = _test_time
    if metric == "ratio":
        test = partial(_test_ratio, sides=(_RatioSide(pooled["base"]), _RatioSide(pooled["new"])))
    by_key = {
        side: {tuple(scalar_value(r[a]) for a in axes): r for r in df.to_dict("records")}
        for side, df in pooled.items()
    }
    rows = []
    for key in {**by_key["base"], **by_key["new"]}:  # base order first, then new's additions
        b, n = by_key["base"].get(key), by_key["new"].get(key)
        row: dict[str, Any] = {**dict(zip(axes, key)), **_blank(b, n)}
        row.update(_judge_status(b, n) or test(b, n))
        if metric == "time" and row["verdict"] is None:
            row["note"] = _power_note(row, alpha)
        # ratio mode does not judge torch.optim: its rows are the reference, not ours
        if _both_ok(b, n) and (metric == "time" or b.get("implementation") != "torch"):
            row.update(_judge_exact(b, n, loss_tolerance))
        rows.append(row)
    out = pd.DataFrame(rows)
    _decide(out, threshold, alpha)
    _combine_exact(out)
    columns = [*axes, "verdict", "base_median_s", "new_median_s", "change", "noise_floor"]
    columns += ["p_value", "p_raw", "base_noise", "new_noise"]
    if metric == "time":
        columns += ["machine_change", "machine_ops_change"]
    if metric == "ratio":
        columns += ["base_vs_torch", "new_vs_torch"]
    columns += ["timing_verdict", "exact_verdict"]
    recorded = [c for c in EXACT_COLUMNS if c in base.columns or c in new.columns]
    columns += [f"{side}_{c}" for c in recorded for side in ("base", "new")]
    out = out.reindex(columns=[*columns, "n_base", "n_new", "note"])
    rank = out["verdict"].map({v: i for i, v in enumerate(VERDICTS)})
    order = np.lexsort((-out["change"].fillna(-math.inf).to_numpy(), rank.to_numpy()))
    return out.iloc[order].reset_index(drop=True)


def _blank(b: dict | None, n: dict | None) -> dict[str, Any]:
    """A row's figures before any test: what every row has, tested or not."""
    nan = math.nan
    return {
        "base_median_s": _median(b), "new_median_s": _median(n), "n_base": _count(b),
        "n_new": _count(n), "change": nan, "p_slower": nan, "p_faster": nan, "verdict": None,
        "note": "", "base_noise": nan, "new_noise": nan, "noise_floor": nan,
        "_base_flags": [], "_new_flags": [], "_base_unstable": False, "_new_unstable": False,
        "machine_change": nan, "machine_ops_change": nan, "exact_verdict": None,
        "_exact_note": "", "_no_times": False,
        **{
            f"{side}_{c}": case["exact"].get(c, nan) if case else nan
            for side, case in (("base", b), ("new", n))
            for c in EXACT_COLUMNS
        },
    }  # fmt: skip


def _both_ok(b: dict | None, n: dict | None) -> bool:
    return b is not None and n is not None and b["status"] == n["status"] == "ok"


def _judge_exact(b: dict, n: dict, loss_tolerance: float) -> dict[str, Any]:
    """The exact verdict of a case ok in both runs (None: no column on both sides) and a note
    naming each column that moved, "state bytes 800000 -> 1200000"."""
    judged, worse, better, notes = False, False, False, []
    for column, label in EXACT_COLUMNS.items():
        old, new = b["exact"].get(column), n["exact"].get(column)
        if old is None or new is None:  # one run did not measure it: nothing to judge
            continue
        judged = True
        # bytes are counted, not timed: one byte more is more; a loss may move by rounding
        slack = 0.0 if column in _BYTES else loss_tolerance * abs(old)
        if new > old + slack:
            worse = True
        elif new < old - slack:
            better = True
        else:
            continue
        notes.append(f"{label} {_exact_text(column, old)} -> {_exact_text(column, new)}")
    verdict = None if not judged else "regression" if worse else "improvement" if better else "same"
    no_times = not (len(b["samples"]) or len(n["samples"]))
    return {"exact_verdict": verdict, "_exact_note": "; ".join(notes), "_no_times": no_times}


def _exact_text(column: str, value: float) -> str:
    if column in _BYTES and float(value).is_integer():
        return str(int(value))
    return f"{value:.6g}"  # 6 digits: a move of the default tolerance, 1e-3, shows


def _combine_exact(out: pd.DataFrame) -> None:
    """In place: `timing_verdict` keeps the timing test's verdict, `verdict` becomes the worse of
    it and the exact verdict, and the note names what the exact columns did."""
    if out.empty:
        out["timing_verdict"] = out["exact_verdict"] = pd.Series(dtype=object)
        return
    out["timing_verdict"] = out["verdict"]
    rank = {v: i for i, v in enumerate(VERDICTS)}
    for i in out.index[out["exact_verdict"].notna()]:
        exact, note = out.at[i, "exact_verdict"], out.at[i, "_exact_note"]
        if out.at[i, "_no_times"]:  # nothing timed (a convergence case): the exact verdict alone
            out.loc[i, ["timing_verdict", "verdict", "note"]] = ["n/a", exact, note]
            continue
        out.at[i, "verdict"] = min(out.at[i, "verdict"], exact, key=rank.__getitem__)
        out.at[i, "note"] = "; ".join(x for x in (cell_text(out.at[i, "note"]), note) if x)


def _noise_fields(
    b: dict, n: dict, refs: tuple[dict | None, dict | None] = (None, None)
) -> dict[str, Any]:
    """Each side's noise and stability marks, and the noise floor. `refs`: ratio mode's torch
    references, whose noise and marks the side's ratio carries too."""
    out: dict[str, Any] = {}
    for side, case, ref in (("base", b, refs[0]), ("new", n, refs[1])):
        noise, flags, unstable = case["noise"], list(case["flags"]), bool(case["unstable"])
        if ref is not None:
            # the ratio's interval from two independent medians: their half-widths in quadrature
            noise = math.hypot(noise, ref["noise"])
            flags += [f"torch {f}" for f in ref["flags"]]
            unstable = unstable or bool(ref["unstable"])
        out.update({f"{side}_noise": noise, f"_{side}_flags": flags, f"_{side}_unstable": unstable})
    out["noise_floor"] = out["base_noise"] + out["new_noise"]
    return out


def _decide(out: pd.DataFrame, threshold: float, alpha: float) -> None:
    """Verdicts and notes of the tested cases, in place, with Holm's correction over them.

    Each case tested at alpha would let noise fail a 10-case run 7-10% of the time (simulated:
    lognormal samples, sigma 0.05-0.2, 10-40 samples); Holm bounds the chance that noise flags
    any case of the run by alpha, and costs little power: a real slowdown has p-values orders
    of magnitude below alpha.
    """
    if out.empty:
        out["verdict"] = pd.Series(dtype=str)
        out["p_value"] = out["p_raw"] = pd.Series(dtype=float)
        return
    tested = out["verdict"].isna()
    slower = out["change"] >= 1
    out["p_raw"] = out["p_slower"].where(slower, out["p_faster"])
    for direction in ("p_slower", "p_faster"):
        out.loc[tested, direction] = _holm(out.loc[tested, direction].to_numpy(dtype=float))
    out["p_value"] = out["p_slower"].where(slower, out["p_faster"])
    for i in out.index[tested]:
        out.loc[i, ["verdict", "note"]] = _verdict(out.loc[i].to_dict(), threshold, alpha)


def _verdict(row: dict[str, Any], threshold: float, alpha: float) -> tuple[str, str]:
    """A tested case's verdict and the reason for it (see the module docstring)."""
    change, floor, p = row["change"], row["noise_floor"], row["p_value"]
    if not (change > 0 and math.isfinite(change)):
        return "inconclusive", row["note"] or "no median to compare"
    size = abs(math.log(change))
    beyond_threshold = size > math.log1p(threshold)
    marks = _unstable_note(row)
    if beyond_threshold and marks:
        return "inconclusive", marks
    if beyond_threshold and (moved := _machine_moved(change, row, threshold)):
        return "inconclusive", moved
    # floor <= threshold makes a change beyond the threshold beyond the floor too: the floor
    # only has a say when it exceeds the threshold, and then it hides threshold-sized changes
    if floor > threshold and not size > math.log1p(floor):
        return "inconclusive", f"noise floor {percent(floor)} > threshold {percent(threshold)}"
    if not beyond_threshold:
        return "same", marks
    if not p < alpha:  # NaN (not tested) is not significant either
        shown = "not tested" if math.isnan(p) else f"not significant (p {p:.2g} >= {alpha:g})"
        return "inconclusive", row["note"] or shown
    return ("regression" if change > 1 else "improvement"), row["note"]


_MONITORS = (("machine_change", "bandwidth"), ("machine_ops_change", "op-rate"))


def _machine_moved(change: float, row: dict[str, Any], threshold: float) -> str:
    """Why a change beyond the threshold is the machine's ("" when it is not): a monitor (the
    streaming bandwidth, or the host's op rate) moved the same way, and the change over that move
    is within the threshold."""
    for column, name in _MONITORS:
        machine = row.get(column, math.nan)
        if not (machine > 0 and math.isfinite(machine)):
            continue
        same_direction = math.log(change) * math.log(machine) > 0
        # "as much or more": a probe that read a burst moves further than the steps it rode along
        beyond = abs(math.log(change)) - abs(math.log(machine)) > math.log1p(threshold)
        if same_direction and not beyond:
            way = "slower" if machine > 1 else "faster"
            return (
                f"the machine moved as much: its {name} probe read {machine:.3f}x {way} "
                f"in the new run's rounds, against this case's {change:.3f}x"
            )
    return ""


def _unstable_note(row: dict[str, Any]) -> str:
    """ "base run: noisy; new run: interference" for the sides whose rows are marked unstable."""
    parts = []
    for side in ("base", "new"):
        if row[f"_{side}_unstable"]:
            flags = ", ".join(row[f"_{side}_flags"]) or "not stable"
            parts.append(f"{side} run: {flags}")
    return "; ".join(parts)


def percent(x: float) -> str:
    if not math.isfinite(x):
        return "inf"
    return f"{x * 100:.0f}%" if x >= 0.1 else f"{x * 100:.1f}%"


def _holm(p: np.ndarray) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values (NaN stays NaN and does not count as a test)."""
    adjusted = np.full_like(p, np.nan)
    valid = np.flatnonzero(~np.isnan(p))
    order = valid[np.argsort(p[valid])]
    m = len(order)
    running = 0.0
    for i, k in enumerate(order):
        running = max(running, min(1.0, (m - i) * p[k]))
        adjusted[k] = running
    return adjusted


def _median(case: dict | None) -> float:
    return float(np.median(case["samples"])) if case and len(case["samples"]) else math.nan


def _count(case: dict | None) -> int:
    return len(case["samples"]) if case else 0


def _judge_status(b: dict | None, n: dict | None) -> dict[str, Any] | None:
    """The verdicts that need no statistics; None when both sides hold ok samples."""
    if b is None:
        return {"verdict": "added", "note": cell_text(n["error"])}
    if n is None:
        if b["status"] == "skipped":  # never measured in base: its absence loses nothing
            return {"verdict": "skipped", "note": "skipped in base, absent from new"}
        return {"verdict": "missing", "note": "absent from the new run"}
    if n["status"] == "failed":
        was_ok = b["status"] == "ok"
        return {"verdict": "new-failure" if was_ok else "failed", "note": cell_text(n["error"])}
    if b["status"] == "failed":
        return {"verdict": "fixed", "note": f"base {b['error']}"}
    if "skipped" in (b["status"], n["status"]):
        return {"verdict": "skipped"}
    if not (len(b["samples"]) and len(n["samples"])):
        return {"verdict": "inconclusive", "note": "ok rows without samples or median"}
    return None


def _power_note(row: dict[str, Any], alpha: float) -> str:
    """Say when a test could not have flagged anything: its smallest p is not below alpha."""
    n, m = row["n_base"], row["n_new"]
    # the exact rank test cannot go below 1 / C(n+m, n): with 3 + 3 samples that is 0.05
    if n and m and 1 / math.comb(n + m, n) >= alpha:
        return f"too few samples ({n}+{m}) to reach p < {alpha:g}"
    return ""


def _test_time(b: dict, n: dict) -> dict[str, Any]:
    from scipy.stats import mannwhitneyu  # here: `workbench run` should not pay scipy's import

    x, y = n["samples"], b["samples"]
    change = float(np.median(x) / np.median(y))
    # One-sided, in the direction the medians moved: "is new stochastically greater (slower)?"
    # is the regression hypothesis. The other direction's p is left at 1: it can only be large,
    # it cannot make a verdict, and Holm's adjustment of a small p depends only on smaller ones.
    slower = change >= 1
    p = float(mannwhitneyu(x, y, alternative="greater" if slower else "less").pvalue)
    out = {"change": change, "p_slower": p if slower else 1.0, "p_faster": 1.0 if slower else p}
    out["machine_change"] = b["machine_bw"] / n["machine_bw"]  # NaN unless both sides read it
    out["machine_ops_change"] = b["machine_ops"] / n["machine_ops"]
    return {**out, **_noise_fields(b, n)}


class _RatioSide:
    """One run in ratio mode: vs_torch_best per case, and bootstrap medians of its rows."""

    def __init__(self, pooled: pd.DataFrame):
        self.axes = [c for c in pooled.columns if c not in POOLED_FIELDS]
        frame = pooled.assign(
            median_s=[float(np.median(s)) if len(s) else math.nan for s in pooled["samples"]],
            status=pooled["status"].where(pooled["status"] != "failed", "error"),
        )
        # The point estimate is the summary's own figure. Pooled rows have no `repeat` column, so
        # with_ratios compares each case's pooled median with torch's pooled medians.
        rated = with_ratios(frame).to_dict("records")
        self.ratios = {self.case_key(r): r["vs_torch_best"] for r in rated}
        self.problem = problem_columns(frame)
        self.torch: dict[tuple, list[np.ndarray]] = {}
        self._reference: dict[tuple, dict] = {}  # the fastest torch case: vs_torch_best's numerator
        self._torch_boot: dict[tuple, np.ndarray] = {}  # shared by every case of a problem
        self._rng = np.random.default_rng(0)  # seeded: the same runs always get the same verdict
        torch_ok = frame[(frame["implementation"] == "torch") & (frame["status"] == "ok")]
        for row in torch_ok.to_dict("records"):
            key = self.problem_key(row)
            self.torch.setdefault(key, []).append(row["samples"])
            best = self._reference.get(key)
            if best is None or row["median_s"] < best["median_s"]:
                self._reference[key] = row

    def case_key(self, row: dict) -> tuple:
        return tuple(scalar_value(row.get(c)) for c in self.axes)

    def problem_key(self, row: dict) -> tuple:
        return tuple(scalar_value(row.get(c)) for c in self.problem)

    def vs_torch(self, row: dict) -> float:
        ratio = scalar_value(self.ratios.get(self.case_key(row)))
        return math.nan if ratio is None else float(ratio)

    def reference(self, row: dict) -> dict | None:
        """The pooled torch case whose median is the reference of this row's vs_torch_best."""
        return self._reference.get(self.problem_key(row))

    def boot_log_ratios(self, row: dict) -> np.ndarray:
        """Resampled log vs_torch_best: min over torch backends of resampled medians / ours."""
        key = self.problem_key(row)
        if key not in self._torch_boot:
            boots = [_boot_median(s, self._rng) for s in self.torch[key]]
            self._torch_boot[key] = np.min(boots, axis=0)
        return np.log(self._torch_boot[key] / _boot_median(row["samples"], self._rng))

    def smallest_sample(self, row: dict) -> int:
        return min(len(s) for s in [row["samples"], *self.torch.get(self.problem_key(row), [])])


def _boot_median(samples: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    idx = rng.integers(0, len(samples), size=(BOOTSTRAP_RESAMPLES, len(samples)))
    return np.median(samples[idx], axis=1)


def _test_ratio(b: dict, n: dict, *, sides: tuple[_RatioSide, _RatioSide]) -> dict[str, Any]:
    from scipy.stats import norm

    base, new = sides
    base_vs, new_vs = base.vs_torch(b), new.vs_torch(n)
    out: dict[str, Any] = {"base_vs_torch": base_vs, "new_vs_torch": new_vs}
    if b["implementation"] == "torch":
        return {**out, "verdict": "n/a", "note": "torch.optim is the reference of ratio mode"}
    if math.isnan(base_vs) or math.isnan(new_vs):
        return {**out, "verdict": "n/a", "note": "no ok torch.optim row for this problem"}
    out["change"] = change = base_vs / new_vs
    out.update(_noise_fields(b, n, (base.reference(b), new.reference(n))))
    smallest = min(base.smallest_sample(b), new.smallest_sample(n))
    if smallest < MIN_BOOTSTRAP_SAMPLES:
        note = f"too few samples ({smallest} < {MIN_BOOTSTRAP_SAMPLES}) for the bootstrap"
        return {**out, "note": note}  # p stays NaN: never significant, outside Holm's family
    # the two runs are independent: the log change's variance is the sum of theirs
    se = math.hypot(base.boot_log_ratios(b).std(), new.boot_log_ratios(n).std())
    z = math.log(change) / se if se > 0 else math.copysign(math.inf, math.log(change))
    return {**out, "p_slower": float(norm.sf(z)), "p_faster": float(norm.cdf(z))}


def cell_text(value: Any) -> str:
    # a cell that went through pandas: None and NaN alike are no text
    value = scalar_value(value)
    return "" if value is None else str(value)
