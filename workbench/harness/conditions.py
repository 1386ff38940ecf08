"""The conditions every case is timed under: set once per process, recorded in the manifest.

What an earlier case leaves behind must not change what a later one measures. The cause found:
glibc malloc's *dynamic* mmap threshold. Unpinned, an allocation above the threshold is mmap'd and
page-faulted afresh on every step, and freeing one raises the threshold so that later ones come
from the heap; so per-step temporaries (100 x 400 KB for a foreach step on 100 x 100k params) were
mmap'd or not depending on what the process had allocated before. Measured here (2-core VM, torch
Adamax foreach, 100x100k fp32): 27-33 ms and 9,737 minor faults per step unpinned, 15.5-18 ms and
0 faults pinned, by `mallopt` as by the MALLOC_*_ environment variables. Pinning both thresholds
turns the dynamic behaviour off: every allocation below 32 MiB comes from the heap, every one above
is mmap'd, whatever ran before. The variables are exported too, so that processes the run starts
(ranks, repeats) start pinned.

Threads: torch's intra-op pool gets every CPU this process may run on (its affinity), OpenMP the
same; both are recorded. Inductor compiles in this process (compile_threads = 1): its worker pool
would otherwise warm up, and compile, in the background while other cases are timed.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
from typing import Any

import torch

# mallopt parameter numbers (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
# glibc refuses an mmap threshold above HEAP_MAX_SIZE / 2 (32 MiB on 64-bit)
MMAP_THRESHOLD = 32 << 20
# above any step's temporaries: freed heap memory stays mapped (and faulted in) between steps
TRIM_THRESHOLD = 1 << 30
_ENV = {
    "MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD),
    "MALLOC_TRIM_THRESHOLD_": str(TRIM_THRESHOLD),
    "TORCHINDUCTOR_COMPILE_THREADS": "1",
}

_applied: dict[str, Any] | None = None


def cpus() -> int:
    """The CPUs this process may run on (its affinity mask; os.cpu_count where there is none)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def control() -> dict[str, Any]:
    """Set the conditions in this process (idempotent); return what the manifest records."""
    global _applied
    if _applied is None:
        os.environ.update(_ENV)
        _applied = {
            "allocator": _pin_allocator(),
            "threads": _set_threads(),
            "inductor_compile_threads": _inductor_in_process(),
            "transparent_hugepages": _read("/sys/kernel/mm/transparent_hugepage/enabled"),
            "cpu_governor": _read("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor"),
        }
    return _applied


def _pin_allocator() -> dict[str, Any]:
    if not sys.platform.startswith("linux"):
        return {"pinned": False, "reason": f"mallopt is glibc's; this is {sys.platform}"}
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError) as e:  # musl has no mallopt
        return {"pinned": False, "reason": f"no mallopt: {e}"}
    ok = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )
    return {
        "pinned": ok,
        "mmap_threshold": MMAP_THRESHOLD,
        "trim_threshold": TRIM_THRESHOLD,
        **({} if ok else {"reason": "mallopt refused the thresholds"}),
    }


def _set_threads() -> dict[str, Any]:
    n = cpus()
    os.environ.setdefault("OMP_NUM_THREADS", str(n))
    torch.set_num_threads(n)
    return {
        "cpus": n,
        "torch_intra_op": torch.get_num_threads(),
        "torch_inter_op": torch.get_num_interop_threads(),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "MKL_NUM_THREADS": os.environ.get("MKL_NUM_THREADS"),
    }


def _inductor_in_process() -> int | None:
    config = sys.modules.get("torch._inductor.config")
    if config is None:
        return 1  # the environment variable above decides when it is first imported
    config.compile_threads = 1  # type: ignore[attr-defined]
    return int(config.compile_threads)  # type: ignore[attr-defined]


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None
