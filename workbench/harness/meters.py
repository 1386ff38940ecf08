"""What else happened while a row was timed: its page faults and context switches, and the CPU
(or GPU) time other processes took.

Page faults and context switches come from getrusage around each timed step (about a
microsecond each), summed per case: a step that page-faults its temporaries every time, or is
preempted, says so in its row (the allocator's mmap threshold showed up as 9,737 faults per step).

Interference is the busy time of this process's CPUs (/proc/stat, their `cpuN` lines) minus this
process's own CPU time, over the timed window, as a fraction of those CPUs' capacity: 0.5 on two
CPUs means another process took one core's worth. Steal time (a hypervisor running other guests)
counts: it is time the step did not get. On CUDA the other processes are those NVML lists on the
device with their utilisation; without NVML the GPU side is unknown (None), never zero.
"""

from __future__ import annotations

import contextlib
import os
import resource
import time
from dataclasses import dataclass

_HZ = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
# /proc/stat cpu columns: user nice system idle iowait irq softirq steal (guest is inside user)
_BUSY_COLUMNS = (0, 1, 2, 5, 6, 7)


@dataclass
class StepCounters:
    """Minor page faults and context switches summed over a case's timed steps."""

    steps: int = 0
    minor_faults: int = 0
    ctx_switches: int = 0

    def add(self, before: resource.struct_rusage, after: resource.struct_rusage) -> None:
        self.steps += 1
        self.minor_faults += after.ru_minflt - before.ru_minflt
        self.ctx_switches += (after.ru_nvcsw - before.ru_nvcsw) + (
            after.ru_nivcsw - before.ru_nivcsw
        )

    def merge(self, other: StepCounters) -> None:
        self.steps += other.steps
        self.minor_faults += other.minor_faults
        self.ctx_switches += other.ctx_switches

    def row(self) -> dict[str, float | None]:
        if not self.steps:
            return {"minor_faults_per_step": None, "ctx_switches_per_step": None}
        return {
            "minor_faults_per_step": self.minor_faults / self.steps,
            "ctx_switches_per_step": self.ctx_switches / self.steps,
        }


def usage() -> resource.struct_rusage:
    return resource.getrusage(resource.RUSAGE_SELF)


def _own_cpu_s() -> float:
    # our threads and any children we waited for (compile workers, if any ran)
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _busy_s(cpus: set[int]) -> float | None:
    """Busy seconds of the given CPUs since boot, or None where /proc/stat is not readable."""
    try:
        with open("/proc/stat") as f:
            lines = f.readlines()
    except OSError:
        return None
    total = 0
    for line in lines:
        name, *fields = line.split()
        if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus:
            total += sum(int(fields[i]) for i in _BUSY_COLUMNS if i < len(fields))
    return total / _HZ


def _affinity() -> set[int]:
    try:
        return set(os.sched_getaffinity(0))
    except AttributeError:
        return set(range(os.cpu_count() or 1))


class Interference:
    """Other processes' share of this process's CPUs over a window: ``start()``, then ``stop()``.

    /proc/stat ticks at 100 Hz: over a window of 0.3 s on 2 CPUs one tick is 1.7% of capacity, so
    shares below a few percent are rounding, and the flag's limit is well above that.
    """

    def __init__(self) -> None:
        self.cpus = _affinity()
        self._start: tuple[float, float, float | None] | None = None

    def start(self) -> None:
        self._start = (time.perf_counter(), _own_cpu_s(), _busy_s(self.cpus))

    def stop(self) -> float | None:
        """The fraction of the CPUs' capacity that other processes took; None if unknown."""
        if self._start is None:
            return None
        wall0, own0, busy0 = self._start
        busy1 = _busy_s(self.cpus)
        wall = time.perf_counter() - wall0
        if busy0 is None or busy1 is None or wall <= 0:
            return None
        others = (busy1 - busy0) - (_own_cpu_s() - own0)
        return min(1.0, max(0.0, others / (wall * len(self.cpus))))


# NVML clock event reasons that slow the clocks below what was asked: software power cap,
# hardware slowdown, software and hardware thermal slowdown, power brake
_THROTTLE_MASK = 0x4 | 0x8 | 0x20 | 0x40 | 0x80


def _clock_event_reasons(pynvml: object, handle: object) -> int | None:
    for name in (
        "nvmlDeviceGetCurrentClocksEventReasons",
        "nvmlDeviceGetCurrentClocksThrottleReasons",
    ):
        query = getattr(pynvml, name, None)
        if query is not None:
            try:
                return int(query(handle))
            except Exception:
                return None
    return None


def gpu_other_processes(device_index: int = 0) -> dict[str, object] | None:
    """Other processes on the GPU right now (NVML): their count, the device's utilisation, and
    whether its clocks are held down (power or thermal: the row is flagged `throttled`).

    None where NVML is not there to ask (no pynvml, no driver): unknown, not "none".
    """
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:
        return None
    try:
        handle = pynvml.nvmlDeviceGetHandleByIndex(device_index)
        procs = pynvml.nvmlDeviceGetComputeRunningProcesses(handle)
        others = [p for p in procs if p.pid != os.getpid()]
        util = pynvml.nvmlDeviceGetUtilizationRates(handle).gpu
        reasons = _clock_event_reasons(pynvml, handle)
        return {
            "gpu_other_processes": len(others),
            "gpu_utilization": float(util),
            "gpu_throttled": None if reasons is None else bool(reasons & _THROTTLE_MASK),
        }
    except Exception:
        return None
    finally:
        with contextlib.suppress(Exception):
            pynvml.nvmlShutdown()
