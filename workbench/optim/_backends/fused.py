"""The fused backend: one kernel call per (device, dtype) group, C on CPU, Triton elsewhere.

An optimizer with an UpdateSpec gets its fused update from `update(spec)`: nothing about the
backend is written in its own file. The C kernel advances the step counts itself, in the same
pass (a separate `_foreach_add_` over many 0-dim CPU tensors costs a good part of a small step);
on the Triton path they are advanced here, before the launch, so the kernel reads this step's
count on the device. Either way a step call counts once per param.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from functools import cache
from typing import Any

import torch
from torch import Tensor

from .._kernels import cpu as cpu_kernels
from .._spec import UpdateSpec

UpdateFn = Callable[..., None]


@cache
def _triton_step(kernel: str) -> UpdateFn:
    """`_kernels/<kernel>.py`'s `<kernel>_fused_step`, imported on first use (it imports triton)."""
    module = importlib.import_module(f"{__package__.rpartition('.')[0]}._kernels.{kernel}")
    return getattr(module, f"{kernel}_fused_step")


def _count_step(steps: list[Tensor], found_inf: Tensor | None) -> None:
    """One more step per param, on the device; none where GradScaler found an inf (known there
    without a host sync)."""
    if found_inf is None:
        torch._foreach_add_(steps, 1.0)
    else:
        taken = found_inf.to(steps[0].device, non_blocking=True) == 0
        torch._foreach_add_(steps, taken.to(steps[0].dtype))


def update(spec: UpdateSpec) -> UpdateFn:
    """The fused update function for `spec`, with the signature every backend's has."""
    kernel = spec.kernel
    if kernel is None:
        raise ValueError("update(spec): the spec names no fused kernel")
    n_roles = len(spec.roles)
    defines = spec.c_defines()
    triton_rows = [spec.scalars.index(name) for name in spec.triton_scalars]

    passed = (*spec.hyper, *spec.flags)

    def fused(*tensor_lists: list[Tensor], **keywords: Any) -> None:
        element, scalars = tensor_lists[:n_roles], tensor_lists[n_roles:]
        params = element[0]
        if cpu_kernels.runs_on(params[0].device, kernel):
            values = keywords
            if spec.amp:
                scale = cpu_kernels.grad_scaler_scale(
                    keywords.get("grad_scale"), keywords.get("found_inf")
                )
                if scale is None:
                    return  # GradScaler found an inf: the step is skipped and does not count
                values = {**keywords, "grad_scale": scale}
            # A list a flag turned off (amsgrad=False) arrives empty; its row of the C table is
            # filled with the params so that every row has one index. The kernel's flag says it
            # is never read.
            rows = [role if role else params for role in element]
            hyper, flags = spec.c_hyper(values), spec.c_flags(values)
            cpu_kernels.launch(kernel, rows, scalars, hyper, flags, defines)
            return
        if spec.has_step and not spec.triton_counts_steps:
            _count_step(scalars[-1], keywords.get("found_inf") if spec.amp else None)
        hyper = {name: keywords[name] for name in passed if name in keywords}
        if spec.amp:  # None when no GradScaler drives the step
            hyper |= {name: keywords.get(name) for name in ("grad_scale", "found_inf")}
        _triton_step(kernel)(*element, *(scalars[i] for i in triton_rows), **hyper)

    fused.__name__ = f"_{kernel}_fused"
    fused.__qualname__ = fused.__name__
    return fused
