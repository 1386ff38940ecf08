"""How far a row's median can be trusted: a confidence interval of the median, and the flags.

The interval is distribution-free: for n independent samples the order statistics x(j) and x(k),
with j and k from the Binomial(n, 1/2) quantiles, cover the true median with probability at least
`confidence` (no assumption of normal or symmetric times, whose tails are long). `noise` is its
relative half-width, (x(k) - x(j)) / (2 * median): 0.05 means the median is known to about +-5%.
It is what adaptive timing drives down (timing.time_steps) and what compare takes as a run's
noise floor. With 10 samples the 95% interval spans x(2)..x(9), nearly the whole range: a short
run of a noisy case cannot look precise.

Flags, each a reason a row's number should not be taken at face value, are the constants below;
a row is ``stable`` when its status is ok and it carries none of them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

CONFIDENCE = 0.95

# the reasons a row is not `stable`; a row is stable when it is ok and has none of them
NOISY = "noisy"  # the median's CI is wider than the target even after re-measuring
INTERFERENCE = "interference"  # other processes took CPU (or GPU) time while the row was timed
COLD = "cold"  # the second half of the samples is clearly faster than the first: still warming up
UNREPEATABLE = "unrepeatable"  # its repeats (separate processes) disagree beyond their own noise
# the machine's memory bandwidth moved while its group was timed, or was off the run's usual
PROBE_DRIFT = "probe-drift"
ABOVE_PROBE = "above-probe"  # faster than the streaming probe allows (> 1.1x): not the real step
THROTTLED = "throttled"  # the GPU's clocks were held down (power or thermal) when it was timed
STABILITY_FLAGS = (NOISY, INTERFERENCE, COLD, UNREPEATABLE, PROBE_DRIFT, ABOVE_PROBE, THROTTLED)


def median_ci(samples: Sequence[float], confidence: float = CONFIDENCE) -> tuple[float, float]:
    """A distribution-free confidence interval of the median: (x(j), x(k)).

    With too few samples for the confidence asked (n < 6 at 95%), the full range.
    """
    xs = sorted(samples)
    n = len(xs)
    if n == 0:
        return math.nan, math.nan
    # the largest j (1-based) with P(Binomial(n, 1/2) <= j - 1) <= (1 - confidence) / 2, in exact
    # integers (no scipy import for `workbench run`; n is at most a few thousand samples)
    tail, below, j = (1 - confidence) / 2 * 2**n, 0, 0
    while below + math.comb(n, j) <= tail:
        below += math.comb(n, j)
        j += 1
    j = max(j, 1)
    k = n - j + 1
    return xs[j - 1], xs[k - 1]


def relative_noise(samples: Sequence[float], confidence: float = CONFIDENCE) -> float:
    """Relative half-width of the median's confidence interval (NaN without samples)."""
    if not len(samples):
        return math.nan
    lo, hi = median_ci(samples, confidence)
    xs = sorted(samples)
    n = len(xs)
    median = xs[n // 2] if n % 2 else 0.5 * (xs[n // 2 - 1] + xs[n // 2])
    return (hi - lo) / (2 * median) if median > 0 else math.inf


# A row without a target to meet (target_noise = 0) is still called noisy above this.
DEFAULT_NOISY = 0.05
# the first half of the samples this much slower than the second (at least) reads as warming up
COLD_MARGIN = 0.10
MIN_SAMPLES_FOR_TREND = 10
# the machine's bandwidth this far off (relative): the passes inside one group (their IQR over
# their median), the group's against the run's usual, or (no window) the probes before and after
PROBE_DRIFT_LIMIT = 0.20
# an ok row above this fraction of the streaming probe is faster than its bytes allow
ABOVE_PROBE_LIMIT = 1.1


def timing_flags(timing: Any, settings: Any) -> list[str]:
    """The flags a timing earns by itself: noisy, interference, cold, throttled.

    `timing` is a timing.Timing, `settings` the suite's TimingSettings (typed loosely: this module
    is imported by the timing code).
    """
    flags = []
    if timing.noise > (settings.target_noise or DEFAULT_NOISY):
        flags.append(NOISY)
    others = timing.gpu_others or {}
    if (timing.other_cpu or 0.0) > settings.max_interference or others.get("gpu_other_processes"):
        flags.append(INTERFERENCE)
    if warming_up(timing.visits(), timing.noise):
        flags.append(COLD)
    if others.get("gpu_throttled"):
        flags.append(THROTTLED)
    return flags


def warming_up(visits: Sequence[Sequence[float]], noise: float) -> bool:
    """The first halves' median clearly above the second halves': the steps were still speeding
    up (caches, clocks, lazily built state) when timing began.

    `visits`: the samples of each visit, in the order taken (one list for a group timed at once).
    Each visit is split in halves, so that the machine's drift from one visit to the next does
    not read as a warm-up.
    """
    first: list[float] = []
    second: list[float] = []
    for samples in visits:
        half = len(samples) // 2
        first += samples[:half]
        second += samples[half:]
    if len(first) + len(second) < MIN_SAMPLES_FOR_TREND or not first:
        return False
    first.sort()
    second.sort()
    m1, m2 = first[len(first) // 2], second[len(second) // 2]
    return m1 > m2 * (1 + max(COLD_MARGIN, 2 * noise))


def probe_checks(row: dict[str, Any], before: float | None, after: float | None) -> None:
    """Put the group's probes in an ok row: its fraction of the fastest probe, and the flags
    `above-probe` (faster than streaming allows) and `probe-drift` (the machine's bandwidth moved
    while the group was timed).

    Where the row has the in-window reading (bandwidth.StreamMonitor: `probe_window_bw` and
    `probe_window_spread`), that judges drift: the passes were taken in the group's own rounds,
    while a probe before and after can both miss a burst inside it, or differ while the rounds
    themselves were steady. Without it (a sharded case), the probes before and after judge. A
    group timed in several visits is not judged by its passes' spread: they were taken in
    different passes over the suite, and differ as the machine drifted (flag_unusual_bandwidth
    judges the pooled reading against the run's).
    """
    row["probe_bw_before"], row["probe_bw_after"] = before, after
    window = row.get("probe_window_bw")
    probes = [p for p in (before, after, window) if p]
    if not probes:
        return
    ceiling = max(probes)
    if row.get("achieved_bw"):
        row["bw_fraction"] = row["achieved_bw"] / ceiling
        if row["bw_fraction"] > ABOVE_PROBE_LIMIT:
            _flag(row, ABOVE_PROBE)
    if window:
        one_visit = (row.get("visits") or 1) == 1
        if one_visit and row.get("probe_window_spread", 0.0) > PROBE_DRIFT_LIMIT:
            _flag(row, PROBE_DRIFT)
    elif before and after and min(before, after) < (1 - PROBE_DRIFT_LIMIT) * max(before, after):
        _flag(row, PROBE_DRIFT)


def flag_unusual_bandwidth(rows: list[dict[str, Any]]) -> bool:
    """Flag `probe-drift` on the ok rows whose group read a bandwidth more than PROBE_DRIFT_LIMIT
    off the run's usual (the median of its groups' readings, per device); True if any changed.

    A machine whose bandwidth comes and goes in bursts (other tenants of a host) gives steady
    groups at two levels, and a memory-bound row timed in a burst would read, steady and precise,
    far from the same row of the next run. The run's usual level is what most of its rows saw.
    """
    readings: dict[str, dict[float, None]] = {}  # per device, one reading per group (ordered)
    for row in rows:
        if row.get("status") == "ok" and row.get("probe_window_bw"):
            readings.setdefault(str(row.get("device")), {})[row["probe_window_bw"]] = None
    changed = False
    for row in rows:
        values = sorted(readings.get(str(row.get("device")), {}))
        window = row.get("probe_window_bw")
        if row.get("status") != "ok" or not window or len(values) < 3:
            continue
        usual = values[len(values) // 2]
        flags = list(row.get("flags") or [])
        if abs(window / usual - 1) > PROBE_DRIFT_LIMIT and PROBE_DRIFT not in flags:
            row["flags"] = [*flags, PROBE_DRIFT]
            finalize(row)
            changed = True
    return changed


def finalize(row: dict[str, Any]) -> None:
    """`stable`: an ok row with no flag. Every row gets `flags` (a list) and `stable`."""
    row["flags"] = list(row.get("flags") or [])
    row["stable"] = row.get("status") == "ok" and not row["flags"]


def _flag(row: dict[str, Any], flag: str) -> None:
    flags = row.setdefault("flags", [])
    if flag not in flags:
        flags.append(flag)
