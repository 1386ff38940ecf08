"""Interleaved cases (``[timing] interleave = true``): the implementations and backends of one
optimizer on one size, dtype and device, built together and timed in alternating rounds
(measure.measure_group, timing.time_interleaved), so that their ratios hold on a machine shared
with other work.

A group whose workloads would take more than a fraction of the device's memory all at once is
timed one case at a time instead. What a case holds counts every copy it builds: a small working
set is replicated up to CACHE_MULTIPLE caches (measure.copies_for), and the no-op check clones the
params once. (Counting one copy let a 10M-param Adam group reach 7.5 GB RSS on a 24 GB box.)
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

import torch

from .cases import Case
from .measure import copies_for
from .step_protocols import class_minimal_bytes

# at most this fraction of the device's memory for one group's workloads alive together
_MEMORY_FRACTION = 0.4


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
        held = sum(held_bytes(c) for c in group)
        fits = held <= _MEMORY_FRACTION * _device_memory(group[0])
        units += [group] if len(group) > 1 and fits else [[c] for c in group]
    return units


def _device_memory(case: Case) -> float:
    if case.device == "cuda":
        if not torch.cuda.is_available():
            return 0.0
        return float(torch.cuda.get_device_properties(0).total_memory)
    return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def held_bytes(case: Case) -> int:
    """What a case holds while its group is timed: its working set (params, grads, state: its
    traffic floor is about that) times the copies it builds, plus the no-op check's clone."""
    working_set = class_minimal_bytes(case)
    device = torch.device(case.device)
    copies = copies_for(working_set, device) if _device_memory(case) else 1
    param_bytes = case.numel * torch.empty((), dtype=getattr(torch, case.dtype)).element_size()
    return working_set * copies + param_bytes
