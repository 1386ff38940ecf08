"""Step latency: a time-based warm-up, then many individually timed steps, raw samples kept.

CUDA steps are timed with events around each step (the host only waits at the end); CPU steps with
perf_counter. The first call is timed on its own, since for the compiled backend it includes the
compilation.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch


@dataclass
class Timing:
    first_call_s: float
    samples_s: list[float] = field(default_factory=list)

    @property
    def median_s(self) -> float:
        return statistics.median(self.samples_s)

    @property
    def iqr_s(self) -> float:
        q1, _, q3 = statistics.quantiles(self.samples_s, n=4)
        return q3 - q1


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(
    step: Callable[[], object],
    device: torch.device,
    *,
    warmup_s: float = 0.5,
    min_steps: int = 20,
    max_steps: int = 1000,
    budget_s: float = 2.0,
) -> Timing:
    """Time `step` until `min_steps` samples and `budget_s` seconds, or `max_steps` samples."""
    _sync(device)
    start = time.perf_counter()
    step()
    _sync(device)
    timing = Timing(first_call_s=time.perf_counter() - start)

    deadline = time.perf_counter() + warmup_s
    while time.perf_counter() < deadline:
        step()
    _sync(device)

    if device.type == "cuda":
        return _time_cuda(step, timing, min_steps, max_steps, budget_s)
    began = time.perf_counter()
    while len(timing.samples_s) < max_steps:
        t0 = time.perf_counter()
        step()
        timing.samples_s.append(time.perf_counter() - t0)
        if len(timing.samples_s) >= min_steps and time.perf_counter() - began > budget_s:
            break
    return timing


def _time_cuda(
    step: Callable[[], object], timing: Timing, min_steps: int, max_steps: int, budget_s: float
) -> Timing:
    began = time.perf_counter()
    events: list[tuple[torch.cuda.Event, torch.cuda.Event]] = []
    while len(events) < max_steps:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        step()
        end.record()
        events.append((start, end))
        if len(events) >= min_steps and time.perf_counter() - began > budget_s:
            break
    torch.cuda.synchronize()
    timing.samples_s = [s.elapsed_time(e) / 1e3 for s, e in events]
    return timing


def time_interleaved(
    steps: list[Callable[[], object]],
    device: torch.device,
    *,
    warmup_s: float = 0.5,
    min_steps: int = 20,
    max_steps: int = 1000,
    budget_s: float = 2.0,
) -> list[Timing | Exception]:
    """Time several steps side by side: rounds in which each takes one timed step, the order
    rotating from round to round, so that every step sees the same stretch of machine time.

    Timed one after the other, two implementations of one optimizer on a shared machine are
    compared across different moments of interference (seen here: the same case 8 ms in one run,
    21 ms in the next); interleaved, a burst slows them alike and their ratio holds. Each step gets
    the budget and warm-up it would get alone. A step that raises is left out of later rounds and
    its exception takes its place in the result; the others go on.
    """
    results: list[Timing | Exception] = []
    for step in steps:
        try:
            _sync(device)
            start = time.perf_counter()
            step()
            _sync(device)
            results.append(Timing(first_call_s=time.perf_counter() - start))
        except Exception as e:  # noqa: PERF203 - one failing step must not end the others
            results.append(e)
    active = [i for i, r in enumerate(results) if isinstance(r, Timing)]

    def run(i: int) -> bool:
        try:
            steps[i]()
            return True
        except Exception as e:
            results[i] = e
            active.remove(i)
            return False

    deadline = time.perf_counter() + warmup_s * len(active)
    while active and time.perf_counter() < deadline:
        for i in list(active):
            run(i)
    _sync(device)

    cuda = device.type == "cuda"
    events: dict[int, list[tuple[torch.cuda.Event, torch.cuda.Event]]] = {i: [] for i in active}
    began, rounds = time.perf_counter(), 0
    while active and rounds < max_steps:
        shift = rounds % len(active)
        for i in active[shift:] + active[:shift]:
            if cuda:
                start, end = (
                    torch.cuda.Event(enable_timing=True),
                    torch.cuda.Event(enable_timing=True),
                )
                start.record()
                if run(i):
                    end.record()
                    events[i].append((start, end))
                continue
            t0 = time.perf_counter()
            if run(i):
                results[i].samples_s.append(time.perf_counter() - t0)  # type: ignore[union-attr]
        rounds += 1
        if rounds >= min_steps and time.perf_counter() - began > budget_s * max(1, len(active)):
            break
    if cuda:
        torch.cuda.synchronize(device)
        for i in active:
            results[i].samples_s = [s.elapsed_time(e) / 1e3 for s, e in events[i]]  # type: ignore[union-attr]
    return results
