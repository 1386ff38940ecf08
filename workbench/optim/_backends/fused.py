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


def update(spec: UpdateSpec) -> UpdateFn:
    """The fused update function for `spec`, with the signature every backend's has."""
    kernel = spec.kernel
    if kernel is None:
        raise ValueError("update(spec): the spec names no fused kernel")
    n_roles = len(spec.roles)
    defines = spec.c_defines()
    triton_rows = [spec.scalars.index(name) for name in spec.triton_scalars]

    def fused(*tensor_lists: list[Tensor], **keywords: Any) -> None:
        element, scalars = tensor_lists[:n_roles], tensor_lists[n_roles:]
        params = element[0]
        if cpu_kernels.runs_on(params[0].device, kernel):
            cpu_kernels.launch(
                kernel, element, scalars, spec.c_hyper(keywords), spec.c_flags(keywords), defines
            )
            return
        if spec.has_step and not spec.triton_counts_steps:
            torch._foreach_add_(scalars[spec.scalars.index("step")], 1.0)
        hyper = {name: keywords[name] for name in (*spec.hyper, *spec.flags) if name in keywords}
        _triton_step(kernel)(*element, *(scalars[i] for i in triton_rows), **hyper)

    fused.__name__ = f"_{kernel}_fused"
    fused.__qualname__ = fused.__name__
    return fused
