"""The fused backend on CPU: C kernels (OpenMP), one call per (device, dtype) group.

On CUDA the fused backend launches Triton kernels (``_kernels/<name>.py``). On CPU, an optimizer
that has ``cpu/<name>.c`` runs it instead: one parallel region over all its tensors, every
element read and written once, the per-tensor step counters advanced in the same call. Where
there is no C compiler, or with ``WORKBENCH_FUSED_CPU=triton``, CPU tensors go to the Triton
kernels as before, which only run under ``TRITON_INTERPRET=1`` (how CI checks those kernels).
"""

from __future__ import annotations

import ctypes
import os
from array import array
from collections.abc import Sequence
from functools import cache

import torch
from torch import Tensor
from torch.autograd.graph import increment_version

from .._layout import flat_dense
from .build import SOURCE_DIR, compiler, load

_SUFFIXES = {torch.float32: "f32", torch.float64: "f64", torch.bfloat16: "bf16",
             torch.float16: "f16"}  # fmt: skip
_STEP_DTYPES = {torch.float32: 0, torch.float64: 1}  # WB_STEP_F32 / WB_STEP_F64

_kernel_fn = ctypes.CFUNCTYPE(
    None,
    ctypes.POINTER(ctypes.c_int64),
    ctypes.c_int64,
    ctypes.POINTER(ctypes.c_double),
    ctypes.POINTER(ctypes.c_int64),
    ctypes.c_int,
)
_functions: dict[tuple[str, torch.dtype, tuple[str, ...]], ctypes._CFuncPtr] = {}


def _profiling() -> bool:
    """Whether a torch.profiler session is recording: a record_function nobody records still
    costs microseconds per call. (torch keeps the flag privately; if it goes, always record.)"""
    return getattr(torch.autograd.profiler, "_is_profiler_enabled", True)


@cache
def has_kernel(kernel: str) -> bool:
    return (SOURCE_DIR / f"{kernel}.c").is_file()


def runs_on(device: torch.device, kernel: str) -> bool:
    """Whether the fused backend updates tensors on `device` with the C kernel `kernel`."""
    return (
        device.type == "cpu"
        and os.environ.get("WORKBENCH_FUSED_CPU", "native") != "triton"
        and has_kernel(kernel)
        and compiler() is not None
    )


def grad_scaler_scale(grad_scale: Tensor | None, found_inf: Tensor | None) -> float | None:
    """torch.amp.GradScaler's inputs as the C kernels take them (read on the host: CPU tensors,
    no sync): None when found_inf says the whole step is skipped (nothing written, no step
    counted), else the scale to unscale the grads by, 0.0 for none."""
    if found_inf is not None and found_inf.item():
        return None
    return 0.0 if grad_scale is None else grad_scale.item()


def _function(kernel: str, dtype: torch.dtype, defines: tuple[str, ...]) -> ctypes._CFuncPtr:
    fn = _functions.get((kernel, dtype, defines))
    if fn is None:
        suffix = _SUFFIXES.get(dtype)
        if suffix is None:
            raise TypeError(f"fused {kernel} on CPU: no kernel for dtype {dtype}")
        library = load(kernel, suffix, defines)
        fn = _kernel_fn((f"{kernel}_{suffix}", library))
        _functions[(kernel, dtype, defines)] = fn
    return fn


def launch(
    kernel: str,
    element_roles: Sequence[Sequence[Tensor]],
    scalar_roles: Sequence[Sequence[Tensor]],
    hyper: Sequence[float],
    flags: Sequence[int],
    defines: tuple[str, ...] = (),
) -> None:
    """Run C kernel `kernel` over the parallel tensor lists of one (cpu, dtype) group.

    element_roles: param, grad and state lists, all of one dtype and shape tensor by tensor.
    scalar_roles:  lists of per-param 0-dim fp32/fp64 tensors the kernel reads and advances
                   (the step counters, other 0-dim state), or none.
    hyper, flags:  the kernel's float hyperparameters and integer flags, in its order; each
                   scalar role's dtype is appended to the flags here.
    defines:       macros the kernel is compiled with: its UpdateSpec's names for those orders.
    Tensors that are not one dense block go through contiguous copies written back afterwards.
    """
    roles = element_roles
    n = len(roles[0])
    write_back: list[tuple[Tensor, Tensor]] = []
    # (contiguous everywhere is the usual case, and far cheaper to check than flat_dense)
    if not all(t.is_contiguous() for role in roles for t in role):
        roles = [list(role) for role in element_roles]  # (the caller's lists stay as they are)
        # one copy per tensor, written back once: a list may stand in for another (a row the
        # kernel does not read, filled with the params)
        copies: dict[int, Tensor] = {}
        for i in range(n):
            if roles[0][i].numel() and not flat_dense([role[i] for role in roles]):
                for role in roles:
                    original = role[i]
                    copy = copies.get(id(original))
                    if copy is None:
                        copy = copies[id(original)] = original.contiguous()
                        write_back.append((original, copy))
                    role[i] = copy
    scalar_flags = []
    for row in scalar_roles:
        dtypes = {s.dtype for s in row}
        if len(dtypes) != 1 or not dtypes <= _STEP_DTYPES.keys():
            raise TypeError(
                f"fused {kernel} on CPU: per-param scalars (step counters) must all be float32 or "
                f"all float64, got {sorted(map(str, dtypes))}"
            )
        scalar_flags.append(_STEP_DTYPES[dtypes.pop()])
    table = array("q", [t.data_ptr() for role in roles for t in role])
    for row in scalar_roles:
        table.extend([s.data_ptr() for s in row])
    table.extend([t.numel() for t in roles[0]])
    all_flags = [int(f) for f in flags] + scalar_flags
    function = _function(kernel, roles[0][0].dtype, defines)
    args = (
        ctypes.cast(table.buffer_info()[0], ctypes.POINTER(ctypes.c_int64)),
        n,
        (ctypes.c_double * len(hyper))(*hyper),
        (ctypes.c_int64 * len(all_flags))(*all_flags),
        torch.get_num_threads(),
    )
    if _profiling():
        # a named range: traces show the call, and the harness counts it as one launch
        with torch.profiler.record_function(f"workbench::fused_{kernel}"):
            function(*args)
    else:
        function(*args)
    for original, copy in write_back:
        original.copy_(copy)
    # Writes through raw pointers are invisible to autograd: count them, as an in-place op would,
    # so a graph that saved a param before this step refuses to backward through it.
    increment_version(element_roles[0])
