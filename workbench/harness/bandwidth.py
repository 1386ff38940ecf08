"""Streaming-bandwidth probe: the roofline an optimizer step is held against.

An optimizer step is a streaming kernel: it reads param, grad and state once and writes param and
state once, with a few flops per element, so its ceiling is memory bandwidth, not compute. The
probe measures that ceiling over buffers far larger than the last-level cache, on the same device,
in the same run, with two streams and takes the faster:
- a copy, `dst.copy_(src)` (one read stream, one write stream), and
- an in-place update, `dst.add_(src)` (two read streams, one written back in place): the access
  pattern of an optimizer step itself. On CPUs a copy's stores first read each destination line
  (write-allocate), traffic no byte count sees; an in-place update has read its line already. On
  this project's 2-core EPYC VM the in-place update moved 1.5x the bytes per second of the copy
  (87 vs 58 GB/s in one process), and the fused optimizer steps reached more than the copy: a
  copy-only probe would flatter every fraction.
A read-only reduction would overstate the ceiling (no write-back traffic).
Bytes counted are bytes read + bytes written (2 x buffer size for the copy, 3 x for the update),
the same convention as the optimizers' minimal traffic per element, so `achieved / stream` is a
fraction of the ceiling.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch

from . import cache

MiB = 1 << 20
_CUDA_BYTES = 256 * MiB  # well above H100/H200 L2 (50 MiB) and A100's (40 MiB)
_CPU_MIN_BYTES = 64 * MiB
_CPU_MAX_BYTES = 1024 * MiB  # keep the probe quick and small even on many-socket boxes


def achieved_bandwidth(minimal_bytes: float, median_s: float) -> float:
    """Bytes/s of a step that must move `minimal_bytes` and took `median_s` seconds."""
    if median_s <= 0:
        raise ValueError(f"median_s must be positive, got {median_s}")
    return minimal_bytes / median_s


def stream_bandwidth(
    device: torch.device | str, nbytes: int | None = None, reps: int = 20, min_s: float = 1.0
) -> float:
    """Streaming bandwidth on `device`, in bytes/s (read + written): the faster of a copy and an
    in-place update (see the module docstring), each the median of at least `reps` passes (and
    `min_s` seconds on CPU).

    `nbytes` is each buffer's size; by default 256 MiB on CUDA and, on CPU, twice the cache this
    process gets (at least 64 MiB; see workbench.harness.cache), so the two buffers span four
    caches.
    The median, as the steps it is held against are timed: on a shared VM the best pass catches
    bursts no step sees (one run's best in-place pass read 149 GB/s where steps and later
    medians read 60-75; STREAM's best-of assumes a machine of one's own). The passes span
    `min_s` because a burst of interference can outlast 20 copies of 64 MiB (on a shared 2-core
    VM one copy probe read 44 GB/s where the others read 74): every ratio to the probe in the
    run would inherit it.
    """
    device = torch.device(device)
    # the default size shares the in-window monitor's buffers: allocating and faulting in two new
    # buffers of four caches for each probe (two per group) cost 1.8 s per buffer on a slow day
    # of this project's VM, several minutes of a quick run
    src, dst = shared_buffers(device) if nbytes is None else _stream_buffers(device, nbytes)
    numel = src.numel()
    passes = (
        (2 * numel * 4, lambda: dst.copy_(src)),
        (3 * numel * 4, lambda: dst.add_(src)),  # (dst grows by 1.5 a pass: no inf, no denormal)
    )
    best_rate = 0.0
    for moved, one_pass in passes:
        if device.type == "cuda":
            seconds = _median_cuda_s(one_pass, device, _WARMUP, reps)
        else:
            seconds = _median_cpu_s(one_pass, _WARMUP, reps, min_s / len(passes))
        best_rate = max(best_rate, moved / seconds)
    return best_rate


_WARMUP = 3


def _median_cpu_s(one_pass: Callable[[], object], warmup: int, reps: int, min_s: float) -> float:
    for _ in range(warmup):
        one_pass()
    seconds: list[float] = []
    start = time.perf_counter()
    while len(seconds) < reps or time.perf_counter() - start < min_s:
        t0 = time.perf_counter()
        one_pass()
        seconds.append(time.perf_counter() - t0)
    return statistics.median(seconds)


def _median_cuda_s(
    one_pass: Callable[[], object], device: torch.device, warmup: int, reps: int
) -> float:
    for _ in range(warmup):
        one_pass()
    events = [
        (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
        for _ in range(reps)
    ]
    for start, end in events:
        start.record()
        one_pass()
        end.record()
    torch.cuda.synchronize(device)
    return statistics.median(start.elapsed_time(end) for start, end in events) / 1e3


def _cpu_default_bytes() -> int:
    """Each probe buffer: twice the cache this process gets (cache.cpu_cache, measured), so that
    the two buffers span four caches."""
    return min(_CPU_MAX_BYTES, max(_CPU_MIN_BYTES, 2 * cache.cpu_cache()["bytes"]))


class StreamMonitor:
    """The machine's memory bandwidth *while* a group is timed: one in-place update pass over
    buffers four times the cache, taken as one more step of the group's rotating rounds.

    On this project's VM the probe read 42-52 GB/s most of the time and 80-96 GB/s in bursts of a
    few seconds (other tenants of the host; nothing inside the VM shows it), and memory-bound steps
    move with it. A probe before and after a group can both miss a burst inside it; a pass in every
    round cannot. The buffers are allocated once per device and kept for the process.
    """

    def __init__(self, device: torch.device) -> None:
        self.src, self.dst = shared_buffers(device)
        self.bytes_per_pass = 3 * self.src.numel() * 4
        self._passes = 0

    def step(self) -> None:
        # add and subtract in turn: the values stay bounded over any number of passes, with no
        # check that would read the device
        self._passes += 1
        if self._passes % 2:
            self.dst.add_(self.src)
        else:
            self.dst.sub_(self.src)

    def window_fields(self, seconds: list[float]) -> dict[str, float]:
        """The row's reading from the passes' times: the median bandwidth, and how steady it was
        (the relative IQR of the passes)."""
        median, spread = _median_and_spread([self.bytes_per_pass / s for s in seconds])
        return {"probe_window_bw": median, "probe_window_spread": spread}


class DispatchMonitor:
    """The host's op rate *while* a group is timed: a burst of tiny in-place ops on a tensor that
    lives in cache, taken as one more step of the group's rounds (CPU only).

    A step of many small tensors (every forloop backend) is bound by how fast the host dispatches
    ops, not by memory: on this project's VM back-to-back runs moved such rows 12-26% while the
    streaming probe held still or moved the other way. This reading is theirs, as the stream
    monitor's is the memory-bound rows'. Each pass is OPS dispatches (add and subtract in turn,
    so the values never move).
    """

    OPS = 64

    def __init__(self) -> None:
        self.x = torch.zeros(16)

    def step(self) -> None:
        for _ in range(self.OPS // 2):
            self.x.add_(1.0)
            self.x.sub_(1.0)

    def window_fields(self, seconds: list[float]) -> dict[str, float]:
        """Ops per second, median over the passes, and their relative IQR."""
        median, spread = _median_and_spread([self.OPS / s for s in seconds])
        return {"probe_window_ops": median, "probe_window_ops_spread": spread}


def _median_and_spread(rates: list[float]) -> tuple[float, float]:
    if len(rates) < 2:
        return rates[0], 0.0
    q1, median, q3 = statistics.quantiles(rates, n=4, method="inclusive")
    return median, (q3 - q1) / median


_BUFFERS: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}


def shared_buffers(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The default-sized probe buffers of `device`, allocated once and kept for the process (by
    StreamMonitor and stream_bandwidth alike)."""
    key = str(device)
    if key not in _BUFFERS:
        _BUFFERS[key] = _stream_buffers(device)
    return _BUFFERS[key]


def _stream_buffers(
    device: torch.device, nbytes: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The probe's source and destination, `nbytes` each (default: four caches between them)."""
    if nbytes is None:
        nbytes = _CUDA_BYTES if device.type == "cuda" else _cpu_default_bytes()
    numel = max(1, nbytes // 4)
    # Filled, not zeros: untouched or zeroed pages can be backed by one shared zero page, which
    # reads from cache. Filling also takes the page faults outside the timed passes.
    src = torch.full((numel,), 1.5, dtype=torch.float32, device=device)
    dst = torch.full((numel,), -1.0, dtype=torch.float32, device=device)
    return src, dst
