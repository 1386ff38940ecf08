"""Run a suite: every case becomes one row in the run store, measured or failed, never lost.

Latency cases are measured by workbench.harness.measure (one path, for a case alone or an
interleaved group of them); sharded cases (``world_size`` > 1) by one process per rank
(distributed_worker); convergence cases by workbench.harness.convergence. Before the first case,
the process's conditions are set and recorded (conditions.control: allocator thresholds, threads,
in-process compilation). Around every latency group the streaming-bandwidth probe runs (before and
after; the probe after one group is the probe before the next), so that each row is held against
the machine as it was when the row was timed, and a resumed run probes afresh. With
``repeats`` > 1, each repeat of a group runs in a fresh process (group_worker), and rows whose
processes disagree beyond their own noise are flagged ``unrepeatable``.

Visits (``[timing] visits`` = V > 1): the run makes V passes over its latency groups, and each pass
times every group once, with 1/V of the budget; a last pass makes the rows, from the samples of all
V pooled, timing nothing more. Why: the machine's speed drifts over seconds. On this project's
2-core VM, with nothing else running in it, the streaming bandwidth moved between 34 and 84 GB/s and
an op-bound loop between 3.2 and 5.6 ms within one minute (other tenants of the host). A group timed
in one window of a few seconds is one draw of that drift, the same for all its samples, so its noise
cannot show it: across three runs the same row read 17 ms and 37 ms, each time precise to 5%. Visits
spread over the run take several draws. Rows are written in the last pass only, so a run killed
earlier times its groups again on --resume.

Extra visits (``[timing] extra_visits`` = E): after the V passes, up to E more, each over only the
groups whose pooled medians still miss ``target_noise``. Longer visits would not do: more samples of
one moment do not narrow a spread between moments. The extra passes are the run's adaptive stopping;
a row that misses the target after them is flagged ``noisy``.
"""

from __future__ import annotations

import gc
import json
from collections.abc import Callable, Iterable
from functools import partial
from pathlib import Path
from typing import Any

import torch

from workbench.results.store import RunStore, now

from . import bandwidth, cache, conditions, quiet, stability
from .cases import Case
from .convergence import ReferenceCache, run_convergence_case
from .distributed import LaunchError, launch, rank_temp_dir
from .distributed_worker import spec_for
from .group_worker import measure_in_worker
from .interleave import interleave_groups
from .measure import (
    CaseFailure,
    Outcome,
    Visit,
    case_row,
    check_runnable,
    failed_outcome,
    measure_group,
    visit_group,
)
from .meters import Interference
from .step_protocols import DENSE, class_minimal_bytes, protocol_for
from .suite import Suite
from .timing import Timing, pooled

__all__ = ["CaseFailure", "run_case", "run_cases"]

# the probe between groups: shorter than the run-level default, it runs once per group
_PROBE_REPS, _PROBE_MIN_S = 10, 0.3
LOG_FILE = "run.log"


def run_case(case: Case, suite: Suite, probe_bw: float | None) -> dict[str, Any]:
    """Measure one case alone (no store); raises CaseFailure (or anything) for the caller."""
    if case.world_size > 1:
        row = run_sharded_case(case, suite)
    else:
        ((_, outcome),) = measure_group([case], suite)
        row = outcome()
    stability.probe_checks(row, probe_bw, None)
    row.setdefault("status", "ok")
    stability.finalize(row)
    return row


def run_sharded_case(case: Case, suite: Suite) -> dict[str, Any]:
    """A case sharded over ``world_size`` ranks: one process per rank (distributed_worker), rank 0
    writes the row; a rank that fails or outlives ``[distributed] timeout_s`` ends the case."""
    check_runnable(case)
    if protocol_for(case.optimizer) != DENSE:
        raise CaseFailure("error", f"{case.optimizer}'s step protocol cannot be sharded")
    if case.device == "cuda" and case.world_size > torch.cuda.device_count():
        raise CaseFailure(
            "skipped",
            f"world_size={case.world_size} needs {case.world_size} GPUs; "
            f"{torch.cuda.device_count()} visible",
        )
    if not torch.distributed.is_available():
        raise CaseFailure("skipped", "this torch build has no torch.distributed")
    interference = Interference()
    with rank_temp_dir() as tmp:
        out = Path(tmp) / "row.json"
        spec = Path(tmp) / "spec.json"
        spec.write_text(json.dumps(spec_for(case, suite, out)))
        interference.start()  # the ranks are our children: their CPU time is ours
        try:
            launch(
                "workbench.harness.distributed_worker",
                [str(spec)],
                case.world_size,
                timeout_s=suite.distributed.timeout_s,
            )
        except LaunchError as e:
            raise CaseFailure(e.status, str(e)) from None
        row: dict[str, Any] = json.loads(out.read_text())
    row["other_cpu"] = interference.stop()
    flags = []
    if row["noise"] > (suite.timing.target_noise or stability.DEFAULT_NOISY):
        flags.append(stability.NOISY)
    if (row["other_cpu"] or 0.0) > suite.timing.max_interference:
        flags.append(stability.INTERFERENCE)
    row["flags"] = flags
    nbytes = class_minimal_bytes(case)
    row["minimal_bytes"] = nbytes or None
    row["distributed_backend"] = suite.distributed.backend
    if nbytes:
        # bytes every rank moves together per step, over the step time of the slowest rank
        row["achieved_bw"] = nbytes / row["median_s"]
    return row


def _release(device_type: str) -> None:
    gc.collect()
    if device_type == "cuda" and torch.cuda.is_available():
        torch.cuda.empty_cache()


def run_cases(
    suite: Suite,
    store: RunStore,
    cases: Iterable[Case],
    on_case_done: Callable[[Case, dict[str, Any]], None] = lambda case, row: None,
    on_visit_done: Callable[[list[Case], int, int], None] = lambda unit, index, of: None,
) -> None:
    """Run the cases the store does not hold yet, appending one row per case as it finishes.

    The suite's kind says what a case measures: step latency (a group of cases measured together
    by measure.measure_group: one case, or the interleaved implementations and backends of one
    problem) or convergence on a test problem (run_convergence_case, whose reference runs are
    shared by the cases of one run). `on_visit_done(unit, index, of)` follows each earlier
    visit of a latency group (see the module docstring); `on_case_done` each row.
    """
    store.manifest["conditions"] = {**conditions.control()}
    done = store.done_case_ids()
    pending = [case for case in cases if case.case_id not in done]
    if suite.kind == "latency" and any(case.device == "cpu" for case in pending):
        # what sizes the cache-defeating copies and the probes (measured once per process)
        store.manifest["conditions"]["cpu_cache"] = cache.cpu_cache()
    store.write_manifest()
    quiet.log_to(store.run_dir / LOG_FILE)
    references = ReferenceCache()
    latency = suite.kind == "latency"
    interleave = latency and suite.timing.interleave
    probes = _Probes(store, enabled=latency and suite.measure.bandwidth_probe)
    in_workers = latency and any(case.repeat > 0 for case in cases)
    units = interleave_groups(pending) if interleave else [[case] for case in pending]
    visits = visits_of(suite, cases)
    timed = _timing_passes(units, suite, visits, on_visit_done)
    for number, unit in enumerate(units):
        device = unit[0].device
        before = probes.before(device)
        outcomes: list[tuple[Case, Outcome]]
        # what torch's C++ side prints (the profiler's USDT lines, allocator warnings) and
        # Python warnings go to the run's log, not around the progress display
        with quiet.native_output():
            if isinstance(before, Exception):  # the probe's failure is each case's row
                outcomes = [(case, failed_outcome(before)) for case in unit]
            elif not latency:
                outcomes = [(unit[0], partial(run_convergence_case, unit[0], suite, references))]
            elif unit[0].world_size > 1:
                outcomes = [(unit[0], partial(run_sharded_case, unit[0], suite))]
            elif in_workers:
                outcomes = measure_in_worker(unit, suite, store.run_dir / LOG_FILE)
            else:
                outcomes = measure_group(unit, suite, timed.pop(number, None))
            rows = [case_row(case, outcome) for case, outcome in outcomes]
        del outcomes
        _release(device)
        after = probes.after(device) if latency else None
        for case, row in zip(unit, rows):
            if row["status"] == "ok" and latency:
                stability.probe_checks(row, _value(before), _value(after))
            stability.finalize(row)
            store.append(row)
            on_case_done(case, row)
    if in_workers:
        flag_unrepeatable(store)
    if latency and stability.flag_unusual_bandwidth(store.rows):
        store.rewrite()


def visits_of(suite: Suite, cases: Iterable[Case]) -> int:
    """The visits each group gets: the suite's, for latency groups timed in this process (repeats
    run in workers, one visit each)."""
    if suite.kind != "latency" or any(case.repeat > 0 for case in cases):
        return 1
    return suite.timing.visits


def _timing_passes(
    units: list[list[Case]],
    suite: Suite,
    visits: int,
    on_visit_done: Callable[[list[Case], int, int], None],
) -> dict[int, list[Visit]]:
    """The timing passes before the rows' pass: per unit (by its index), what each of its visits
    timed. None with one visit (the rows' pass times it). Sharded cases are timed once, in the
    rows' pass.

    After the suite's `visits` passes over every unit, up to `extra_visits` passes over the units
    that still need them (see needs_another_visit), so that those rows pool more moments of the
    machine; `on_visit_done` gets their index counted on past `visits - 1`.
    """
    earlier: dict[int, list[Visit]] = {}
    if visits == 1:
        return earlier
    numbers = [n for n, unit in enumerate(units) if unit[0].world_size == 1]
    for index in range(visits + suite.timing.extra_visits):
        if index >= visits:  # an extra pass: only the units whose medians are still vague
            numbers = [n for n in numbers if needs_another_visit(units[n], earlier[n], suite)]
        for number in numbers:
            unit = units[number]
            before = earlier.setdefault(number, [])
            with quiet.native_output():
                before.append(visit_group(unit, suite, index, visits, before))
            _release(unit[0].device)
            on_visit_done(unit, index, visits)
    return earlier


def needs_another_visit(unit: list[Case], earlier: list[Visit], suite: Suite) -> bool:
    """Whether some case of the unit misses the suite's target_noise with the samples its visits
    have pooled. A case that failed needs nothing more."""
    target = suite.timing.target_noise
    if not target:  # 0: the suite asked for no adaptive timing
        return False
    for case in unit:
        timings = [t for v in earlier if isinstance(t := v.timings.get(case.case_id), Timing)]
        if not timings or len(timings) < len(earlier) or not all(t.samples_s for t in timings):
            continue
        if pooled(timings).noise > target:  # the noise the rows' pass will compute
            return True
    return False


def _value(probe: float | Exception | None) -> float | None:
    return probe if isinstance(probe, float) else None


class _Probes:
    """The streaming probe per device, measured between groups: the reading after one group is
    the reading before the next. Every reading goes into the manifest (``probes``), and
    ``stream_bandwidth`` holds each device's median reading."""

    def __init__(self, store: RunStore, *, enabled: bool) -> None:
        self.store, self.enabled = store, enabled
        self.latest: dict[str, float | Exception | None] = {}  # after the group just measured

    def before(self, device: str) -> float | Exception | None:
        if device in self.latest:
            return self.latest.pop(device)
        return self._measure(device)

    def after(self, device: str) -> float | Exception | None:
        value = self._measure(device)
        self.latest = {device: value}  # only while no other device's group runs in between
        return value

    def _measure(self, device: str) -> float | Exception | None:
        if not self.enabled:
            return None
        try:
            value = _probe(device)
        except Exception as e:
            return e
        if value is not None:
            readings = self.store.manifest.setdefault("probes", [])
            readings.append({"device": device, "bytes_per_s": value, "at": now()})
            ours = sorted(r["bytes_per_s"] for r in readings if r["device"] == device)
            self.store.manifest.setdefault("stream_bandwidth", {})[device] = ours[len(ours) // 2]
            self.store.write_manifest()
        return value


def flag_unrepeatable(store: RunStore) -> None:
    """Across the repeats of each case (separate processes): `repeat_spread`, the range of their
    medians over the median of them, on every row; and `unrepeatable` where two repeats' median
    confidence intervals do not overlap (they disagree beyond their own noise)."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for row in store.rows:
        if row.get("status") == "ok":
            key = tuple(sorted((k, str(v)) for k, v in row.items() if _is_axis(k)))
            groups.setdefault(key, []).append(row)
    changed = False
    for rows in groups.values():
        if len(rows) < 2:
            continue
        medians = sorted(r["median_s"] for r in rows)
        spread = (medians[-1] - medians[0]) / medians[len(medians) // 2]
        disagree = max(r["median_ci_low_s"] for r in rows) > min(
            r["median_ci_high_s"] for r in rows
        )
        for r in rows:
            r["repeat_spread"] = spread
            flags = list(r.get("flags") or [])
            if disagree and stability.UNREPEATABLE not in flags:
                flags.append(stability.UNREPEATABLE)
            r["flags"] = flags
            stability.finalize(r)
        changed = True
    if changed:
        store.rewrite()


_AXES = {
    "optimizer",
    "implementation",
    "backend",
    "size",
    "dtype",
    "device",
    "problem",
    "world_size",
}


def _is_axis(column: str) -> bool:
    return column in _AXES or column.startswith("flag_")


def _probe(device: str) -> float | None:
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        return None
    return bandwidth.stream_bandwidth(dev, reps=_PROBE_REPS, min_s=_PROBE_MIN_S)
