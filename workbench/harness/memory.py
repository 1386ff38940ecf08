"""Memory probes: exact optimizer-state bytes, and the peak one step allocates above its inputs.

CUDA reads the caching allocator's counters. CPU has no such counters and RSS is useless here (the
allocator reuses pages, and RSS never falls), so the CPU peak comes from torch.profiler: with
`profile_memory=True` it records every tensor allocation and free, with its size and a timestamp.
The running sum of those events over one step is what the step held above what it started with;
its maximum is the step's peak. It is the same data `export_memory_timeline` plots (there the
categorised `MemoryProfileTimeline` starts from the live tensors' total; here from zero).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch.profiler import ProfilerActivity, profile

# The profiler's allocation events for host memory carry one of these device types.
_HOST_DEVICE_TYPES = ("cpu", "mkldnn", "ideep")


def state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes held by the storages behind `optimizer.state`, each storage counted once.

    `step` tensors count. A storage shared by several state tensors (views, tied state) counts
    once, at its full size: that is what it holds, whatever the views cover.
    """
    seen: dict[tuple[str, int], int] = {}
    for per_param in optimizer.state.values():
        for tensor in _tensors_in(per_param):
            for key, nbytes in _storages_of(tensor):
                seen[key] = nbytes
    return sum(seen.values())


def _tensors_in(value: object) -> Iterator[torch.Tensor]:
    """Tensors in a state entry; some optimizers keep lists or dicts of tensors per parameter."""
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _tensors_in(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _tensors_in(item)


def _storages_of(tensor: torch.Tensor) -> Iterator[tuple[tuple[str, int], int]]:
    if hasattr(tensor, "to_local") and hasattr(tensor, "placements"):
        # a DTensor (FSDP2 state): this rank holds its local shard, nothing more
        yield from _storages_of(tensor.to_local())
        return
    if tensor.is_sparse:  # COO has no storage of its own: its indices and values do
        yield from _storages_of(tensor._indices())
        yield from _storages_of(tensor._values())
        return
    storage = tensor.untyped_storage()
    ptr = storage.data_ptr()
    # Empty storages all have data_ptr 0; key them by identity so they never collide (0 bytes).
    key = (str(tensor.device), ptr if ptr else id(storage))
    yield key, storage.nbytes()


def step_peak_bytes(step: Callable[[], object], device: torch.device | str) -> int | None:
    """Peak bytes allocated during one call of `step`, above what was allocated before it.

    Params, grads and existing state are excluded: only what the step adds counts (temporaries,
    new state, and new tensors that replace old ones before the old ones are freed). Returns None
    on devices with neither allocator stats nor profiler memory events (mps, xpu, ...).
    """
    device = torch.device(device)
    if device.type == "cuda":
        return _cuda_step_peak(step, device)
    if device.type == "cpu":
        return _peak_from_profile(_profile_cpu_step(step), device)
    return None


def _cuda_step_peak(step: Callable[[], object], device: torch.device) -> int:
    torch.cuda.synchronize(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    step()
    torch.cuda.synchronize(device)
    return max(0, torch.cuda.max_memory_allocated(device) - before)


def _profile_cpu_step(step: Callable[[], object]) -> profile:
    # record_shapes and with_stack are not needed for the raw allocation events, but they are what
    # the memory timeline needs, so one profile serves both (and the test cross-checks the two).
    with profile(
        activities=[ProfilerActivity.CPU],
        profile_memory=True,
        record_shapes=True,
        with_stack=True,
    ) as prof:
        step()
    return prof


def _peak_from_profile(prof: profile, device: torch.device) -> int:
    """Maximum of the running sum of allocation events (frees are negative) on `device`."""
    from torch._C._profiler import _EventType

    if prof.profiler is None or prof.profiler.kineto_results is None:
        raise RuntimeError("the profiler recorded no results")
    host = device.type == "cpu"
    # Pre-order walk with children in time order gives the events in the order they happened,
    # ties included; the sort below only interleaves threads.
    stack = list(reversed(prof.profiler.kineto_results.experimental_event_tree()))
    timed: list[tuple[int, int, int]] = []
    while stack:
        node = stack.pop()
        stack.extend(reversed(node.children))
        if node.tag != _EventType.Allocation:
            continue
        event_device: torch.device = node.extra_fields.device
        if host:
            if event_device.type not in _HOST_DEVICE_TYPES:
                continue
        elif event_device.type != device.type or (
            device.index is not None and event_device.index != device.index
        ):
            continue
        timed.append((node.start_time_ns, len(timed), node.extra_fields.alloc_size))
    sizes = [size for _, _, size in sorted(timed)]

    # Frees of tensors that existed before the step (old state replaced by new) make the running
    # sum dip below zero; the peak is still measured from the level the step started at.
    running = peak = 0
    for size in sizes:
        running += size
        peak = max(peak, running)
    return peak
