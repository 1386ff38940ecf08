"""The latency measurement path: every single-process latency row is made here, alone or in an
interleaved group (a group of one is the same path).

Per group: build each case's workload (and its cache-defeating copies), time the steps together
(timing.time_interleaved: warm-up, rounds, adaptive stopping), re-measure once if other processes
took our CPUs meanwhile, then per case check what was timed and take the untimed probes:

- the params must be finite, and a step after timing must change them: a step that changes
  nothing (an implementation that drops its grads, a factory that returns a no-op) is a `no-op`
  row, never an `ok` row with the time of doing nothing;
- an implementation that sets ``p.grad = None`` in its step is given its grads back before every
  step (a Python assignment per param, inside the timed step) so that every timed step does the
  work; the row says so (``grads_restored``);
- the median's precision (stability.relative_noise), warm-up trend and interference become flags;
- exact state bytes, the step's peak memory and launches, as the suite asks.

A group timed in visits (``[timing] visits`` > 1; the runner makes one pass over the suite per
visit, and extra passes for the groups still noisy): ``visit_group`` times each visit and keeps
only its samples (the workloads are built afresh each time and freed after); ``measure_group``,
given them all, times nothing more and makes the rows from every visit's samples pooled
(timing.pooled), with each visit's median (``visit_medians_s``) and their range over the pooled
median (``visit_spread``).
"""

from __future__ import annotations

import math
import os
import statistics
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from . import bandwidth, cache, launches, memory, stability
from .cases import Case
from .implementations import ImplementationError
from .step_protocols import DENSE, Workload, build_workload, timed_row_fields
from .suite import Suite
from .timing import Timing, pooled, sample_fields, time_interleaved

# A working set smaller than this many times the cache (cache.cache_bytes: the GPU's L2, the CPU
# cache this process gets, measured) is replicated and the copies stepped in turn, so each timed
# step streams from memory as a real model's step would.
CACHE_MULTIPLE = 4
MAX_COPIES = 64

Outcome = Callable[[], dict[str, Any]]


class CaseFailure(Exception):
    """A case that gives no measurement: ``status`` is its row's (skipped, no-op, nan, error...)."""

    def __init__(self, status: str, message: str) -> None:
        super().__init__(message)
        self.status = status


def copies_for(working_set: int, device: torch.device) -> int:
    """How many workloads a case builds: enough that together they span CACHE_MULTIPLE caches."""
    llc = cache.cache_bytes(device)
    if 0 < working_set < CACHE_MULTIPLE * llc:
        return min(MAX_COPIES, math.ceil(CACHE_MULTIPLE * llc / working_set))
    return 1


@dataclass
class PreparedCase:
    """A case's workload (and its cache-defeating copies), ready to be timed: ``step`` takes the
    next copy's step and remembers what it returned (closure evaluations)."""

    case: Case
    device: torch.device
    workload: Workload
    copies: list[Workload]
    returned: list[int | None] = field(default_factory=list)
    grads_restored: bool = False

    def __post_init__(self) -> None:
        self._steps = [copy.step for copy in self.copies]
        self._counter = iter(range(1 << 62))
        self._first = True

    def step(self) -> None:
        index = next(self._counter) % len(self._steps)
        self.returned.append(self._steps[index]())
        if self._first:  # the first call is timed on its own: checking here costs no sample
            self._first = False
            if dropped_grads(self.workload):
                self.restore_grads_every_step()

    def restore_grads_every_step(self) -> None:
        self.grads_restored = True
        self._steps = [_restoring(copy) for copy in self.copies]
        for copy in self.copies:
            _give_grads_back(copy)

    def drop_copies(self) -> None:
        """Free the copies once timed: the probes that follow step the first one only."""
        del self.copies[1:], self._steps[1:]


def dropped_grads(workload: Workload) -> bool:
    """Whether the step took the dense grads away (set ``p.grad`` to None or another tensor)."""
    if workload.protocol != DENSE or not workload.grads:
        return False
    return any(p.grad is not g for p, g in zip(workload.params, workload.grads))


def _give_grads_back(workload: Workload) -> None:
    for p, g in zip(workload.params, workload.grads):
        p.grad = g


def _restoring(workload: Workload) -> Callable[[], int | None]:
    def step() -> int | None:
        _give_grads_back(workload)
        return workload.step()

    return step


def check_runnable(case: Case) -> None:
    """Raise CaseFailure for a case this machine cannot run (before anything is built)."""
    if case.device == "cuda" and not torch.cuda.is_available():
        raise CaseFailure("skipped", "CUDA is not available on this machine")


def prepare_case(case: Case, suite: Suite) -> PreparedCase:
    """Build the case's workload, replicated while its working set would fit the cache."""
    device = torch.device(case.device)

    def build(seed: int) -> Workload:
        return build_workload(case, device, seed, density=suite.sparse.density)

    workload = build(0)
    copies = [workload] + [
        build(seed=i) for i in range(1, copies_for(workload.working_set_bytes, device))
    ]
    return PreparedCase(case, device, workload, copies)


@dataclass
class Visit:
    """What one visit of a group timed: per case id its Timing, or what it raised, and each
    monitor's (in _monitors' order)."""

    timings: dict[str, Timing | Exception]
    monitors: list[Timing | Exception] = field(default_factory=list)
    # per case id, what its timed steps returned (closure evaluations), one entry per sample
    returned: dict[str, list[int | None]] = field(default_factory=dict)


def visit_group(
    cases: list[Case], suite: Suite, index: int, of: int, earlier: list[Visit] | None = None
) -> Visit:
    """Visit `index` (of `of`, not the last) of a group: build its workloads, time them with
    this visit's share of the budget, keep the timings and free the rest. A case that failed in
    an `earlier` visit keeps that failure and is not built again."""
    prepared, failed = _prepare_all(cases, suite, earlier or [])
    visit = Visit(timings=dict(failed))
    if prepared:
        timings = _time_group(prepared, suite, _monitors(prepared, suite), index, of)
        visit.monitors = timings[len(prepared) :]
        visit.timings.update((p.case.case_id, t) for p, t in zip(prepared, timings))
        for p, t in zip(prepared, timings):
            if isinstance(t, Timing):
                visit.returned[p.case.case_id] = p.returned[len(p.returned) - len(t.samples_s) :]
    return visit


def measure_group(
    cases: list[Case], suite: Suite, earlier: list[Visit] | None = None
) -> list[tuple[Case, Outcome]]:
    """Build every case of a group, time their steps together, then check and probe each one.
    Returns per case a callable giving its row or raising what went wrong with it (a failing case
    does not stop the others).

    `earlier`: the group's visits (visit_group). Given, nothing more is timed: the rows are made
    from their samples pooled, and the workloads built here serve the checks and probes (each
    takes one untimed first step, which finds a step that drops its grads, as timing would)."""
    earlier = earlier or []
    prepared, failed = _prepare_all(cases, suite, earlier)
    outcomes: dict[str, Outcome] = {case_id: failed_outcome(e) for case_id, e in failed}
    if prepared:
        monitors = _monitors(prepared, suite)
        if earlier:
            timings = _pooled_visits(prepared, earlier)
            timings += [_pool_monitor(earlier, i) for i in range(len(monitors))]
        else:
            timings = _time_group(prepared, suite, monitors)
        window = _window_fields(monitors, timings[len(prepared) :])
        del timings[len(prepared) :]
        for p, timing in zip(prepared, timings):
            if isinstance(timing, Exception):
                outcomes[p.case.case_id] = failed_outcome(timing)
                continue
            try:
                row = finish_case(p, timing, suite)
                row.update(window)
                if len(prepared) > 1:
                    row["interleaved_with"] = len(prepared)
                outcomes[p.case.case_id] = _returning(row)
            except Exception as e:
                outcomes[p.case.case_id] = failed_outcome(e)
    return [(case, outcomes[case.case_id]) for case in cases]


def _prepare_all(
    cases: list[Case], suite: Suite, earlier: list[Visit]
) -> tuple[list[PreparedCase], list[tuple[str, Exception]]]:
    """The cases built for timing, and those that cannot be (or failed in an earlier visit)."""
    prepared: list[PreparedCase] = []
    failed: list[tuple[str, Exception]] = []
    for case in cases:
        before = [v.timings.get(case.case_id) for v in earlier]
        error = next((t for t in before if isinstance(t, Exception)), None)
        if error is not None:
            failed.append((case.case_id, error))
            continue
        try:
            check_runnable(case)
            prepared.append(prepare_case(case, suite))
        except Exception as e:
            failed.append((case.case_id, e))
    return prepared, failed


Monitor = bandwidth.StreamMonitor | bandwidth.DispatchMonitor


def _monitors(prepared: list[PreparedCase], suite: Suite) -> list[Monitor]:
    """The machine's readings taken in the group's rounds: streaming bandwidth, and on CPU the
    host's op rate (on CUDA the rounds time device work, not the host's dispatch)."""
    if not suite.measure.bandwidth_probe:
        return []
    device = prepared[0].device
    stream = bandwidth.StreamMonitor(device)
    return [stream, bandwidth.DispatchMonitor()] if device.type == "cpu" else [stream]


def _window_fields(monitors: list[Monitor], timings: list[Timing | Exception]) -> dict[str, Any]:
    window: dict[str, Any] = {}
    for monitor, timing in zip(monitors, timings):
        if isinstance(timing, Timing) and timing.samples_s:
            window.update(monitor.window_fields(timing.samples_s))
    return window


def _pool(earlier: list[Visit], case_id: str) -> Timing | Exception:
    timings = [t for v in earlier if isinstance(t := v.timings.get(case_id), Timing)]
    if not timings:
        return CaseFailure("error", "no visit timed this case")
    return pooled(timings)


def _pool_monitor(earlier: list[Visit], index: int) -> Timing | Exception:
    timings = [v.monitors[index] for v in earlier if len(v.monitors) > index]
    timings = [t for t in timings if isinstance(t, Timing)]
    return pooled(timings) if timings else CaseFailure("error", "no visit read this monitor")


def _pooled_visits(prepared: list[PreparedCase], visits: list[Visit]) -> list[Timing | Exception]:
    """Each case's visits pooled; its workload, built for the checks and probes, takes its first
    step (untimed) and is given what the timed steps returned."""
    out = []
    for p in prepared:
        case_id = p.case.case_id
        try:
            p.step()
        except Exception as e:  # it stepped in every visit: a failure now is this row's
            out.append(e)
            continue
        p.returned[:] = [r for v in visits for r in v.returned.get(case_id, [])]
        out.append(_pool(visits, case_id))
    return out


def visit_settings(t: Any, index: int, of: int) -> dict[str, Any]:
    """time_interleaved's settings for visit `index` of `of` (`t`: the suite's TimingSettings).

    One visit: the suite's settings, adaptive stopping included. Several: the budget, minimum
    and maximum rounds are shared out equally and no visit extends, so that each visit weighs
    the same in the pooled samples (a last visit timed on until the pooled median is precise
    would outweigh the others, and more samples of one moment do not narrow a spread between
    moments). The first visit warms up fully; later ones build fresh workloads but run code that
    is warm already, and warm up for a share.
    """
    alone = of == 1
    return {
        "warmup_s": t.warmup_s if index == 0 else t.warmup_s / of,
        "min_steps": math.ceil(t.min_steps / of),
        "max_steps": math.ceil(t.max_steps / of),
        "budget_s": t.budget_s / of,
        "target_noise": (t.target_noise or None) if alone else None,
        "max_extension": t.max_extension if alone else 1.0,
    }


def _time_group(
    prepared: list[PreparedCase],
    suite: Suite,
    monitors: list[Monitor],
    index: int = 0,
    of: int = 1,
) -> list[Timing | Exception]:
    """Time the group (and the monitors, last, as more steps of its rounds) for
    visit `index` of `of`; once more if other processes took more than the suite allows of our
    CPUs (a burst usually passes; a second reading inside one is flagged by finish_case)."""
    t = suite.timing
    steps = [p.step for p in prepared] + [m.step for m in monitors]
    settings = visit_settings(t, index, of)

    # every copy of every workload takes its first step before the timed rounds
    warmup_rounds = max(len(p.copies) for p in prepared) - 1

    def attempt() -> list[Timing | Exception]:
        return time_interleaved(
            steps,
            prepared[0].device,
            riders=len(monitors),
            warmup_rounds=warmup_rounds,
            **settings,
        )

    first = attempt()
    if not _interfered(first, t.max_interference):
        return first
    for p in prepared:
        p.returned.clear()
    second = attempt()
    for before, after in zip(first, second):
        if isinstance(before, Timing) and isinstance(after, Timing):
            after.first_call_s = before.first_call_s  # the first call happened once, in `first`
            after.remeasured = True
    return second


def _interfered(timings: list[Timing | Exception], limit: float) -> bool:
    return any(
        isinstance(t, Timing) and t.other_cpu is not None and t.other_cpu > limit for t in timings
    )


def finish_case(prepared: PreparedCase, timing: Timing, suite: Suite) -> dict[str, Any]:
    """The case's row from its timing, its checks, then the memory and launch probes (untimed)."""
    workload, device = prepared.workload, prepared.device
    if not all(bool(torch.isfinite(p).all()) for p in workload.params):
        raise CaseFailure("nan", "a param became NaN or inf during the timed steps")
    samples = timing.samples_s
    nbytes = workload.minimal_bytes or 0
    row: dict[str, Any] = {
        **sample_fields(timing),
        "extended": timing.extended,
        "remeasured": timing.remeasured,
        **_visit_fields(timing),
        "other_cpu": timing.other_cpu,
        **(timing.gpu_others or {}),
        **timing.counters.row(),
        "grads_restored": prepared.grads_restored,
        "pid": os.getpid(),  # repeats run in separate processes: which one measured this row
        "working_set_copies": len(prepared.copies),
        "minimal_bytes": nbytes or None,
        **workload.row,
        **timed_row_fields(workload, prepared.returned[-len(samples) :]),
        "flags": stability.timing_flags(timing, suite.timing),
    }
    if nbytes:
        row["achieved_bw"] = nbytes / timing.median_s
    prepared.drop_copies()
    if suite.timing.noop_check:
        check_step_changes_params(prepared)
    if suite.measure.memory:
        row["state_bytes"] = memory.state_bytes(workload.optimizer)
        row["step_peak_bytes"] = memory.step_peak_bytes(_one_step(prepared), device)
    if suite.measure.launches:
        row["launches"] = launches.kernel_launches(_one_step(prepared), device)
        row["launch_unit"] = launches.launch_unit(device)  # CPU counts aten ops, not kernels
    return row


def _visit_fields(timing: Timing) -> dict[str, Any]:
    """How many visits the samples came from, each one's median and their range over the pooled
    median (None for one visit)."""
    medians = [statistics.median(v) for v in timing.visits() if v]
    spread = (max(medians) - min(medians)) / timing.median_s if len(medians) > 1 else None
    return {"visits": len(medians), "visit_medians_s": medians, "visit_spread": spread}


def _one_step(prepared: PreparedCase) -> Callable[[], int | None]:
    """The first workload's step as it was timed (with its grads given back, if they are)."""
    if prepared.grads_restored:
        return _restoring(prepared.workload)
    return prepared.workload.step


def check_step_changes_params(prepared: PreparedCase) -> None:
    """Raise CaseFailure("no-op") if a step, taken as it was timed, changes no param."""
    workload = prepared.workload
    with torch.no_grad():
        before = [p.detach().clone() for p in workload.params]
        _one_step(prepared)()
        changed = sum(not torch.equal(b, p) for b, p in zip(before, workload.params))
    del before
    if changed:
        return
    missing = sum(p.grad is None for p in workload.params)
    why = f"; {missing} of {len(workload.params)} params have no grad after it" if missing else ""
    raise CaseFailure(
        "no-op",
        f"a step after timing changed none of the {len(workload.params)} params{why}: the timed "
        "steps did no update, so their time is not the optimizer's",
    )


def case_row(case: Case, outcome: Outcome) -> dict[str, Any]:
    """The case's row: its id and axes, then what `outcome` measured, or the failure it raised.

    Every row of a run is made here, whatever measured it (a latency group here or in a worker
    process, a sharded case, a convergence case), so that a failure reads the same in all of them.
    """
    row: dict[str, Any] = {"case_id": case.case_id, **case.axes()}
    try:
        row.update(outcome())
        # a diverged convergence case returns its status, to keep its curve in the row
        row.setdefault("status", "ok")
        row.setdefault("error", None)
    except (CaseFailure, ImplementationError) as e:
        row["status"], row["error"] = e.status, str(e)
    except torch.OutOfMemoryError as e:
        row["status"], row["error"] = "oom", str(e).splitlines()[0]
    except Exception as e:  # a failing case is a row; the sweep goes on
        row["status"] = "error"
        row["error"] = f"{type(e).__name__}: {e}"
        row["traceback"] = traceback.format_exc(limit=8)
    return row


def failed_outcome(error: Exception) -> Outcome:
    """An outcome that raises `error` when its row is built (see case_row)."""

    def outcome() -> dict[str, Any]:
        raise error

    return outcome


def _returning(row: dict[str, Any]) -> Outcome:
    return lambda: row
