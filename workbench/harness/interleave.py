"""Interleaved cases (``[timing] interleave = true``): the implementations and backends of one
optimizer on one size, dtype and device, built together and timed in alternating rounds
(timing.time_interleaved), so that their ratios hold on a machine shared with other work.

A group whose params, grads and state would take more than a fraction of the device's memory all
at once (the working sets of GPT-2 sized cases add up quickly) is timed one case at a time instead.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any

import torch

from .cases import Case
from .runner import check_runnable, failed_outcome, finish_case, prepare_case
from .step_protocols import class_minimal_bytes
from .suite import Suite
from .timing import time_interleaved

# at most this fraction of the device's memory for one group's workloads alive together
_MEMORY_FRACTION = 0.4

Outcome = Callable[[], dict[str, Any]]


def interleave_groups(cases: Iterable[Case]) -> list[list[Case]]:
    """Cases that compare with each other (same optimizer, size, dtype, device, flags, repeat; one
    process), in the order of their first case; sharded cases stay alone, as do groups too big to
    hold at once."""
    groups: dict[tuple[Any, ...], list[Case]] = {}
    for case in cases:
        key: tuple[Any, ...] = (
            (case.optimizer, case.size, case.dtype, case.device, case.flags, case.repeat)
            if case.world_size == 1
            else ("alone", case.case_id)
        )
        groups.setdefault(key, []).append(case)
    units: list[list[Case]] = []
    for group in groups.values():
        held = sum(class_minimal_bytes(c) for c in group)  # ~ params, grads and state, once each
        fits = held <= _MEMORY_FRACTION * _device_memory(group[0])
        units += [group] if len(group) > 1 and fits else [[c] for c in group]
    return units


def _device_memory(case: Case) -> float:
    if case.device == "cuda":
        if not torch.cuda.is_available():
            return 0.0
        return float(torch.cuda.get_device_properties(0).total_memory)
    return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def run_interleaved(
    cases: list[Case], suite: Suite, probe_bw: float | None
) -> list[tuple[Case, Outcome]]:
    """Build every case of a group, time their steps in alternating rounds, then take each one's
    memory and launch probes. Returns per case a callable giving its row or raising what went
    wrong with it (a failing case does not stop the others)."""
    outcomes: dict[str, Outcome] = {}
    prepared = []
    for case in cases:
        try:
            check_runnable(case)
            prepared.append(prepare_case(case, suite))
        except Exception as e:
            outcomes[case.case_id] = failed_outcome(e)
    if prepared:
        t = suite.timing
        timings = time_interleaved(
            [p.step for p in prepared],
            prepared[0].device,
            warmup_s=t.warmup_s,
            min_steps=t.min_steps,
            max_steps=t.max_steps,
            budget_s=t.budget_s,
        )
        for p, timing in zip(prepared, timings):
            if isinstance(timing, Exception):
                outcomes[p.case.case_id] = failed_outcome(timing)
                continue
            try:
                row = finish_case(p, timing, suite, probe_bw)
                row["interleaved_with"] = len(prepared)
                outcomes[p.case.case_id] = _returning(row)
            except Exception as e:
                outcomes[p.case.case_id] = failed_outcome(e)
    return [(case, outcomes[case.case_id]) for case in cases]


def _returning(row: dict[str, Any]) -> Outcome:
    return lambda: row
