"""How much cache a step's data could live in: what sizes the cache-defeating copies and the
streaming probe's buffers.

A step is timed on data that streams from memory, as a real model's step does (measure.copies_for
replicates a small working set until the copies span CACHE_MULTIPLE caches). What matters is the
cache *this process* gets, and on a VM that is not what sysfs says: this project's 2-vCPU VM
reports a 480 MiB L3 (the host socket's, shared with its other tenants), yet an in-place update
over a 256 MiB working set already runs at memory speed: 75-78 GB/s up to 64 MiB, 43-47 at 128 MiB,
37-40 from 256 MiB up, in three measurements. Sized from sysfs, every 10M-param case built 1.9 GB
of copies and every probe pass moved 3 GB: much of a quick run's time went there.

So on CPU the cache is measured, once per process: the in-place update `dst.add_(src)` over
working sets from 8 MiB up to twice the sysfs size, taken in rounds across the sizes (a burst of
the host's bandwidth lands on every size alike, not on one), each size's median pass. The cache
is the largest working set that still ran clearly faster than the largest one (CACHED_MARGIN);
the largest size is the memory's speed. CUDA devices report their L2 exactly.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import torch

MiB = 1 << 20
# the working sets measured: 8 MiB doubling up to twice sysfs's last-level cache, within these
_SMALLEST, _LARGEST = 8 * MiB, 2048 * MiB
_FALLBACK = 32 * MiB  # no sysfs cache information
# a size this much faster than the largest reads from cache, at least partly
CACHED_MARGIN = 0.15
_ROUNDS, _MIN_ROUND_S = 5, 0.02

_measured: dict[str, Any] | None = None


def cache_bytes(device: torch.device) -> int:
    """The cache a working set could live in on `device`: GPU L2, or the CPU's as measured."""
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).L2_cache_size)
    return int(cpu_cache()["bytes"])


def cpu_cache() -> dict[str, Any]:
    """The CPU cache this process gets, measured on first use (about a second), as the manifest
    records it: ``bytes``, the sysfs figure, and the reading (GB/s) per working-set size."""
    global _measured
    if _measured is None:
        _measured = _measure_cpu_cache()
    return _measured


def _measure_cpu_cache() -> dict[str, Any]:
    sysfs = last_level_cache_bytes()
    largest = min(_LARGEST, max(2 * (sysfs or _FALLBACK), 4 * _SMALLEST))
    sizes = [_SMALLEST]
    while sizes[-1] * 2 <= largest:
        sizes.append(sizes[-1] * 2)
    # one pair of buffers of the largest size; each working set is a prefix of both. Filled (not
    # zeros: a zeroed page can be the shared zero page), which also takes the page faults now.
    half = sizes[-1] // 8  # float32 elements per buffer: the two buffers make the working set
    src = torch.full((half,), 1.5)
    dst = torch.full((half,), -1.0)
    passes: dict[int, list[float]] = {size: [] for size in sizes}
    for _ in range(_ROUNDS):
        for size in sizes:
            n = size // 8
            a, b = src[:n], dst[:n]
            b.add_(a)  # brings this size's data to where the others' passes left it
            start = time.perf_counter()
            count = 0
            while count < 2 or time.perf_counter() - start < _MIN_ROUND_S:
                t0 = time.perf_counter()
                (b.sub_ if count % 2 else b.add_)(a)  # values stay bounded
                passes[size].append(time.perf_counter() - t0)
                count += 1
    del src, dst
    rates = {size: 3 * (size // 2) / statistics.median(passes[size]) for size in sizes}
    return {
        "bytes": cached_size(rates),
        "method": "measured",
        "sysfs_last_level_bytes": sysfs,
        "readings_gb_s": {f"{s // MiB} MiB": round(rate / 1e9, 1) for s, rate in rates.items()},
    }


def cached_size(rates: dict[int, float]) -> int:
    """From the in-place update's rate per working-set size (bytes/s): the largest size that ran
    more than CACHED_MARGIN faster than the largest one did (that one is the memory's speed), or
    the smallest size where none did."""
    sizes = sorted(rates)
    memory = rates[sizes[-1]]
    cached = [size for size in sizes[:-1] if rates[size] > (1 + CACHED_MARGIN) * memory]
    return max(cached, default=sizes[0])


def last_level_cache_bytes() -> int | None:
    """Total size of the highest-level CPU cache across the machine (all instances), as sysfs
    reports it, or None. Each cache instance is counted once, by the set of CPUs that share it."""
    root = Path("/sys/devices/system/cpu")
    best_level = -1
    instances: dict[str, int] = {}  # shared_cpu_list -> size: one entry per cache instance
    for index in root.glob("cpu[0-9]*/cache/index[0-9]*"):
        try:
            level = int((index / "level").read_text())
            if (index / "type").read_text().strip() == "Instruction":
                continue
            size = _parse_size((index / "size").read_text().strip())
            shared = (index / "shared_cpu_list").read_text().strip()
        except (OSError, ValueError):
            continue
        if level > best_level:
            best_level, instances = level, {}
        if level == best_level:
            instances[shared] = size
    return sum(instances.values()) or None


def _parse_size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    if text and text[-1].upper() in units:
        return int(text[:-1]) * units[text[-1].upper()]
    return int(text)
