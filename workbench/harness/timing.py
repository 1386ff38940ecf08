"""Step latency: a time-based warm-up, then timed rounds until the median is known well enough.

One path for every latency row: ``time_interleaved`` times one or several steps in rounds, each
step once per round, the order rotating from round to round (``time_steps`` is the one-step case).
CUDA steps are timed with events around each step (the host syncs only to read them); CPU steps
with perf_counter. The first call is timed on its own, since for the compiled backend it includes
the compilation. Raw samples are kept.

Stopping is adaptive, as pyperf and asv judge a benchmark by the spread of its values rather than
by a fixed count: after ``min_steps`` rounds and ``budget_s`` per step, timing goes on while any
step's median is less precise than ``target_noise`` (the relative half-width of its 95% CI, see
stability.py), until ``max_extension`` times that budget or ``max_steps`` rounds. A row that
still misses the target is flagged ``noisy`` by the runner, not hidden.

Around every timed step, getrusage counts page faults and context switches (meters.StepCounters);
over the whole window, the CPU time other processes took (meters.Interference) is every step's.

A group timed in several visits (``[timing] visits``, runner.py) gives one Timing per visit;
``pooled`` makes them one.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from .meters import Interference, StepCounters, gpu_other_processes, usage
from .stability import median_ci, relative_noise

# how often (seconds) the adaptive phase looks at the medians' precision
_CHECK_EVERY_S = 0.05


@dataclass
class Timing:
    first_call_s: float
    samples_s: list[float] = field(default_factory=list)
    counters: StepCounters = field(default_factory=StepCounters)
    # fraction of this process's CPUs that other processes took over the timed window
    other_cpu: float | None = None
    gpu_others: dict[str, object] | None = None
    # timed past the base budget because the median was not yet precise enough
    extended: bool = False
    # timed again because other processes took our CPUs during a first attempt
    remeasured: bool = False
    # pooled from visits: each visit's number of samples, in the order they ran (else empty)
    visit_sizes: list[int] = field(default_factory=list)

    @property
    def median_s(self) -> float:
        return statistics.median(self.samples_s)

    @property
    def iqr_s(self) -> float:
        if len(self.samples_s) < 2:
            return 0.0
        q1, _, q3 = statistics.quantiles(self.samples_s, n=4)
        return q3 - q1

    @property
    def noise(self) -> float:
        return relative_noise(self.samples_s)

    def visits(self) -> list[list[float]]:
        """The samples of each visit (one list where the timing was not pooled)."""
        sizes = self.visit_sizes or [len(self.samples_s)]
        out, start = [], 0
        for n in sizes:
            out.append(self.samples_s[start : start + n])
            start += n
        return out


def pooled(visits: list[Timing]) -> Timing:
    """One Timing from a group's visits to one step, in the order they ran: every sample (each
    visit's count kept), the first visit's first call, counters summed, and the most
    interference any visit saw."""
    out = Timing(first_call_s=visits[0].first_call_s)
    for visit in visits:
        out.samples_s += visit.samples_s
        out.visit_sizes.append(len(visit.samples_s))
        out.counters.merge(visit.counters)
        out.extended |= visit.extended
        out.remeasured |= visit.remeasured
    seen = [v.other_cpu for v in visits if v.other_cpu is not None]
    out.other_cpu = max(seen) if seen else None
    gpu = [v.gpu_others for v in visits if v.gpu_others]
    if gpu:  # counts and utilisation: the most any visit saw; throttled if any visit was
        out.gpu_others = {
            key: max((g.get(key) for g in gpu if g.get(key) is not None), default=None)
            for key in gpu[-1]
        }
    return out


def sample_fields(timing: Timing) -> dict[str, Any]:
    """A row's figures of its timed samples, the same in every latency row (a case timed alone or
    interleaved, measure.finish_case; a sharded case, distributed_worker.combine): the first call,
    the median with its 95% CI and precision, the spread, and the raw samples."""
    samples = timing.samples_s
    lo, hi = median_ci(samples)
    return {
        "first_call_s": timing.first_call_s,
        "median_s": timing.median_s,
        "iqr_s": timing.iqr_s,
        "min_s": min(samples),
        "median_ci_low_s": lo,
        "median_ci_high_s": hi,
        "noise": timing.noise,
        "n_samples": len(samples),
        "samples_s": samples,
    }


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA), so that the host's clock covers it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(
    call: Callable[[], object],
    n: int,
    device: torch.device,
    *,
    before: Callable[[], object] | None = None,
) -> list[float]:
    """A fixed number of calls, each timed on its own with perf_counter between syncs, `before`
    run (untimed) ahead of each: the first call of a step, and the steps of a sharded case, whose
    ranks must agree on how many steps they take and start each one together (`before` is their
    barrier). The adaptive rounds of everything else are time_interleaved's."""
    samples = []
    for _ in range(n):
        if before is not None:
            before()
        sync(device)
        start = time.perf_counter()
        call()
        sync(device)
        samples.append(time.perf_counter() - start)
    return samples


def time_steps(
    step: Callable[[], object],
    device: torch.device,
    *,
    warmup_s: float = 0.5,
    min_steps: int = 20,
    max_steps: int = 1000,
    budget_s: float = 2.0,
    target_noise: float | None = None,
    max_extension: float = 1.0,
) -> Timing:
    """Time one step (see time_interleaved); raises what the step raises."""
    (result,) = time_interleaved(
        [step],
        device,
        warmup_s=warmup_s,
        min_steps=min_steps,
        max_steps=max_steps,
        budget_s=budget_s,
        target_noise=target_noise,
        max_extension=max_extension,
    )
    if isinstance(result, Exception):
        raise result
    return result


def time_interleaved(
    steps: list[Callable[[], object]],
    device: torch.device,
    *,
    warmup_s: float = 0.5,
    min_steps: int = 20,
    max_steps: int = 1000,
    budget_s: float = 2.0,
    target_noise: float | None = None,
    max_extension: float = 1.0,
    riders: int = 0,
    warmup_rounds: int = 0,
) -> list[Timing | Exception]:
    """Time several steps side by side: rounds in which each takes one timed step, the order
    rotating from round to round, so that every step sees the same stretch of machine time.

    Timed one after the other, two implementations of one optimizer on a shared machine are
    compared across different moments of interference (seen here: the same case 8 ms in one run,
    21 ms in the next); interleaved, a burst slows them alike and their ratio holds. Each step gets
    the budget and warm-up it would get alone. A step that raises is left out of later rounds and
    its exception takes its place in the result; the others go on.

    The last `riders` steps are monitors (bandwidth.StreamMonitor, DispatchMonitor): they take
    their step in every round, so that they read the same stretch of machine time, but earn no
    warm-up or budget of their own and do not decide when the rounds are precise enough. Counted
    as steps, each monitor once made every group's rounds a budget longer (make bench: 223 s ->
    251 s).

    The warm-up lasts `warmup_s` per step and at least `warmup_rounds` rounds after the first
    calls: a step that rotates over N copies of its workload needs N - 1 of them, or its later
    copies take their first step (state created, fresh memory faulted in) inside the timed
    rounds. That once read Adam fused at 15 ms where it steps in 7.4: with 12 copies and about
    8 rounds a visit, nearly every timed step was some copy's first.
    """
    results: list[Timing | Exception] = [_first_call(step, device) for step in steps]
    rounds = _Rounds(steps, results, device, riders)
    deadline = time.perf_counter() + warmup_s * len(rounds.budgeted)
    warm = 0
    while rounds.budgeted and (warm < warmup_rounds or time.perf_counter() < deadline):
        for i in list(rounds.active):
            rounds.run(i)
        warm += 1
    sync(device)

    interference = Interference()
    interference.start()
    began = time.perf_counter()
    limit_s = budget_s * max(1.0, max_extension)
    next_check = 0.0
    while rounds.budgeted and rounds.count < max_steps:
        rounds.timed_round()
        elapsed = time.perf_counter() - began
        n = max(1, len(rounds.budgeted))
        if rounds.count < min_steps or elapsed < budget_s * n:
            continue
        if target_noise is None or elapsed >= limit_s * n:
            break
        if elapsed >= next_check:  # sorting every sample every round would cost more than steps
            next_check = elapsed + _CHECK_EVERY_S
            if rounds.precise(target_noise):
                break
            rounds.mark_extended()
    rounds.collect()
    other = interference.stop()
    gpu = gpu_other_processes(device.index or 0) if device.type == "cuda" else None
    for i in rounds.active:
        timing = results[i]
        assert isinstance(timing, Timing)
        timing.other_cpu, timing.gpu_others = other, gpu
    return results


def _first_call(step: Callable[[], object], device: torch.device) -> Timing | Exception:
    try:
        (first_call_s,) = time_calls(step, 1, device)
        return Timing(first_call_s=first_call_s)
    except Exception as e:  # one failing step must not end the others
        return e


class _Rounds:
    """The timed rounds' bookkeeping: which steps are still running, and their samples (CUDA
    events until `collect` reads them)."""

    def __init__(
        self,
        steps: list[Callable[[], object]],
        results: list[Timing | Exception],
        device: torch.device,
        riders: int = 0,
    ) -> None:
        self.steps, self.results, self.device = steps, results, device
        self.active = [i for i, r in enumerate(results) if isinstance(r, Timing)]
        self.first_rider = len(steps) - riders
        self.count = 0
        self.cuda = device.type == "cuda"
        self.events: dict[int, list[tuple[torch.cuda.Event, torch.cuda.Event]]] = {
            i: [] for i in self.active
        }

    @property
    def budgeted(self) -> list[int]:
        """The active steps that are measured for their own sake (not monitors)."""
        return [i for i in self.active if i < self.first_rider]

    def timing(self, i: int) -> Timing:
        timing = self.results[i]
        assert isinstance(timing, Timing)
        return timing

    def run(self, i: int) -> bool:
        try:
            self.steps[i]()
            return True
        except Exception as e:
            self.results[i] = e
            self.active.remove(i)
            return False

    def timed_round(self) -> None:
        shift = self.count % max(1, len(self.active))
        for i in self.active[shift:] + self.active[:shift]:
            timing = self.timing(i)
            before = usage()
            if self.cuda:
                start = torch.cuda.Event(enable_timing=True)
                end = torch.cuda.Event(enable_timing=True)
                start.record()
                if self.run(i):
                    end.record()
                    self.events[i].append((start, end))
                    timing.counters.add(before, usage())
                continue
            t0 = time.perf_counter()
            if self.run(i):
                timing.samples_s.append(time.perf_counter() - t0)
                timing.counters.add(before, usage())
        self.count += 1

    def collect(self) -> None:
        """Turn the recorded CUDA events into samples (a sync)."""
        if not self.cuda:
            return
        torch.cuda.synchronize(self.device)
        for i in self.active:
            self.timing(i).samples_s += [s.elapsed_time(e) / 1e3 for s, e in self.events[i]]
            self.events[i] = []

    def precise(self, target_noise: float) -> bool:
        self.collect()
        return all(self.timing(i).noise <= target_noise for i in self.budgeted)

    def mark_extended(self) -> None:
        for i in self.active:
            self.timing(i).extended = True
