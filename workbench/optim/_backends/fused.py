"""The fused backend: one kernel call per (device, dtype) group, C on CPU, Triton elsewhere.

An optimizer with an UpdateSpec gets its fused update from `update(spec)`: nothing about the
backend is written in its own file. The C kernel advances the step counts itself, in the same
pass (a separate `_foreach_add_` over many 0-dim CPU tensors costs a good part of a small step);
on the Triton path they are advanced here, before the launch, so the kernel reads this step's
count on the device. Either way a step call counts once per param.
"""

from __future__ import annotations

import importlib
from functools import cache
from typing import Any

import torch
from torch import Tensor

from .._kernels import cpu as cpu_kernels
from .._spec import UpdateFn, UpdateSpec


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


def _c_scalar_rows(
    rows: list[list[Tensor]],
) -> tuple[list[list[Tensor]], list[tuple[list[Tensor], list[Tensor]]]]:
    """The scalar rows as the C kernels take them: all fp32 or all fp64 within a row.

    0-dim state is fp32 (fp64 under that default dtype), or the param's dtype after torch's
    load_state_dict: fp16/bf16, or a mix in one group. Those rows go through fp64 copies, exact
    both ways: read as they are, each new value rounded once to the row's dtype when copied
    back, as the forloop's fill_ or copy_ rounds it. Returns (rows, [(original, copy)])."""
    kernel_rows, narrowed = [], []
    for row in rows:
        dtypes = {t.dtype for t in row}
        if len(dtypes) <= 1 and dtypes <= {torch.float32, torch.float64}:
            kernel_rows.append(row)
            continue
        wide = [t.to(torch.float64) for t in row]
        kernel_rows.append(wide)
        narrowed.append((row, wide))
    return kernel_rows, narrowed


def update(spec: UpdateSpec) -> UpdateFn:
    """The fused update function for `spec`, with the signature every backend's has."""
    kernel = spec.kernel
    if kernel is None:
        raise ValueError("update(spec): the spec names no fused kernel")
    n_roles = len(spec.roles)
    defines = spec.c_defines()
    triton_rows = [spec.scalars.index(name) for name in spec.triton_scalars]
    lazy_rows = [spec.roles.index(name) for name in spec.lazy]
    passed = (*spec.hyper, *spec.flags)

    def call(element: list[list[Tensor]], scalars: list[list[Tensor]], keywords: dict) -> None:
        """One kernel call over these lists: C on CPU tensors, else Triton."""
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
            kernel_scalars, narrowed = _c_scalar_rows(scalars)
            cpu_kernels.launch(kernel, rows, kernel_scalars, hyper, flags, defines)
            for original, wide in narrowed:
                torch._foreach_copy_(original, wide)
            return
        if spec.has_step and not spec.triton_counts_steps:
            _count_step(scalars[-1], keywords.get("found_inf") if spec.amp else None)
        hyper = {name: keywords[name] for name in passed if name in keywords}
        if spec.amp:  # None when no GradScaler drives the step
            hyper |= {name: keywords.get(name) for name in ("grad_scale", "found_inf")}
        _triton_step(kernel)(*element, *(scalars[i] for i in triton_rows), **hyper)
        if spec.triton_finish is not None:
            spec.triton_finish(dict(zip(spec.scalars, scalars)), keywords)

    def fused(*tensor_lists: list[Tensor], **keywords: Any) -> None:
        element, scalars = list(tensor_lists[:n_roles]), list(tensor_lists[n_roles:])
        if not lazy_rows or not element[lazy_rows[0]]:
            # no lazy state, or none kept under these flags (SGD without momentum)
            call(element, scalars, {**keywords, "first_step": False} if lazy_rows else keywords)
            return
        # State made at a param's first step (SGD's momentum buffer) is None until then: the
        # kernel writes it without reading it, a variant of its own (flag `first_step`). One
        # call when all params start together, two only while some join later.
        created = element[lazy_rows[0]]
        new = [i for i, t in enumerate(created) if t is None]
        if new:
            found_inf = keywords.get("found_inf") if spec.amp else None
            if found_inf is not None and bool(found_inf):
                # a skipped first step leaves no state behind (torch's fused SGD leaves an
                # uninitialized buffer); knowing it costs a host sync, at a first step only
                return
            for row in lazy_rows:
                for i in new:
                    element[row][i] = torch.empty_like(element[1][i])
        starting = set(new)
        old = [i for i in range(len(created)) if i not in starting]
        for first_step, part in ((True, new), (False, old)):
            if not part:
                continue
            if len(part) == len(element[0]):
                call(element, scalars, {**keywords, "first_step": first_step})
            else:
                sliced = [[role[i] for i in part] if role else role for role in element]
                rows = [[row[i] for i in part] for row in scalars]
                call(sliced, rows, {**keywords, "first_step": first_step})

    fused.__name__ = f"_{kernel}_fused"
    fused.__qualname__ = fused.__name__
    return fused
