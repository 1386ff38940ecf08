"""Launches per step, and chrome traces of a few steps, from torch.profiler.

What "a launch" is depends on the device, and the count says so through `launch_unit`:

- CUDA, "cuda_kernels": device kernels that ran during one step, as CUPTI records them. Triton
  kernels and the kernels inside a replayed CUDA graph count like any other; memcpy, memset and
  the device-side ranges of user annotations do not. This is the number the fused backend exists
  to shrink (one launch per (device, dtype) group).
- CPU, "aten_ops": top-level ATen ops the step dispatched, i.e. aten:: events with no aten::
  ancestor, and likewise the calls into the fused backend's C kernels (workbench:: ranges, one
  per (device, dtype) group, which reach their kernel without the dispatcher). That is the
  number of trips from Python into native code, the host-side cost a launch has on a GPU: a
  `_foreach_mul_` over ten tensors counts once, whatever per-tensor ops it runs inside, while the
  forloop backend's ten `mul_` calls count ten. Not kernels: CPU ops do not launch anything.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile, record_function

# Runtime and driver calls that launch a kernel; counted only when CUPTI gave no device activity.
_LAUNCH_CALLS = (
    "cudaLaunchKernel",
    "cudaLaunchKernelExC",
    "cudaLaunchCooperativeKernel",
    "cuLaunchKernel",  # Triton launches through the driver API
    "cuLaunchKernelEx",
)
# Device activity that is not a kernel, for torch versions whose events carry no activity type.
_NOT_KERNELS = ("Memcpy", "Memset", "Event Sync", "Stream Wait", "Context Sync", "Device Sync")


def launch_unit(device: torch.device | str) -> str | None:
    """What `kernel_launches` counts on `device` (a column name for the records)."""
    device = torch.device(device)
    return {"cuda": "cuda_kernels", "cpu": "aten_ops"}.get(device.type)


def kernel_launches(step: Callable[[], object], device: torch.device | str) -> int | None:
    """Launches one call of `step` makes, in the unit `launch_unit(device)` names.

    None on devices this probe does not know (mps, xpu, ...).
    """
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # kernels of earlier steps must not land in this profile
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            step()
            torch.cuda.synchronize(device)
        return _count_cuda_kernels(prof.events())
    if device.type == "cpu":
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            step()
        return _count_top_level_aten_ops(prof.events())
    return None


def _count_cuda_kernels(events: list) -> int:
    kernels = sum(1 for e in events if _is_device_kernel(e))
    if kernels:
        return kernels
    # No device activity at all: CUPTI may be unavailable (containers without profiling
    # permission). Host-side launch calls are the next best count.
    return sum(1 for e in events if e.device_type == DeviceType.CPU and e.name in _LAUNCH_CALLS)


def _is_device_kernel(event: object) -> bool:
    if getattr(event, "device_type", None) != DeviceType.CUDA:
        return False
    activity = getattr(event, "activity_type", None)  # newer torch: kineto's own classification
    if isinstance(activity, str) and activity:
        return activity == "kernel"
    if getattr(event, "is_user_annotation", False):
        return False
    return not str(event.name).startswith(_NOT_KERNELS)


# Host-side calls that count as one launch each on CPU: ATen ops, and the C kernels' ranges.
_CPU_CALLS = ("aten::", "workbench::")


def _count_top_level_aten_ops(events: list) -> int:
    count = 0
    for event in events:
        if event.device_type != DeviceType.CPU or not event.name.startswith(_CPU_CALLS):
            continue
        parent = event.cpu_parent
        while parent is not None and not parent.name.startswith(_CPU_CALLS):
            parent = parent.cpu_parent
        count += parent is None
    return count


def trace(
    step: Callable[[], object], device: torch.device | str, path: Path | str, steps: int = 3
) -> Path:
    """Write a chrome trace (chrome://tracing, Perfetto) of `steps` calls of `step` to `path`.

    Shapes, Python stacks and allocations are recorded; each step is its own labelled range.
    """
    device = torch.device(device)
    activities = [ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
        torch.cuda.synchronize(device)
    with profile(
        activities=activities, record_shapes=True, profile_memory=True, with_stack=True
    ) as prof:
        for i in range(steps):
            with record_function(f"workbench.step#{i}"):
                step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    prof.export_chrome_trace(str(path))
    return path
