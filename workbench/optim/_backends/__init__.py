"""Backend vocabulary, choice of backend, grouping by (device, dtype); the backends as modules.

A backend is a way of running one optimizer's update over a list of tensors:

- ``forloop``: one tensor at a time, plain torch ops; the reference, the only differentiable one.
- ``foreach``: ``torch._foreach_*`` ops over each (device, dtype) group.
- ``fused``: one kernel call per (device, dtype) group: Triton on CUDA (see ``_kernels``), C with
  OpenMP on CPU where the optimizer has one (``_kernels/cpu``).
- ``compiled``: ``torch.compile`` of the forloop update, with lr and step fed as tensors so that a
  scheduler changing lr never recompiles.

Every optimizer writes its update functions with one signature (tensor lists, then keyword-only
hyperparameters), so the machinery here never needs to know which optimizer it runs. Each backend
that is more than a call lives in a module of its own: `fused.py` reads the optimizer's
UpdateSpec, picks C or Triton and advances the step counts; `compiled.py` compiles the forloop
update with lr and step as tensors.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .._kernels._triton_env import triton_available, triton_interpreting
from .compiled import compiled
from .compiled import update as compiled_update

BACKENDS: tuple[str, ...] = ("forloop", "foreach", "fused", "compiled")

# Backends that keep `step` on the parameter's device: the kernel (or the compiled graph) reads it
# there, so the bias correction never forces a host sync.
DEVICE_STEP_BACKENDS = frozenset({"fused", "compiled"})

# Devices on which torch's own foreach kernels are native (what `foreach=None` picks on torch).
_NATIVE_FOREACH_DEVICES = frozenset({"cuda", "xpu", "mps", "hpu"})


def requested_backend(
    optimizer: str,
    supported: Sequence[str],
    backend: str | None,
    foreach: bool | None,
    fused: bool | None,
    differentiable: bool,
) -> str | None:
    """Validate what the constructor was asked for and turn it into one backend name (or None).

    ``None`` means "choose per step like torch does" (see :func:`default_backend`).
    """
    if backend is not None:
        if backend not in BACKENDS:
            raise ValueError(
                f"{optimizer}: backend={backend!r} is not a backend; expected one of {BACKENDS}"
            )
        if backend not in supported:
            raise ValueError(
                f"{optimizer}: backend={backend!r} is not implemented for {optimizer}; "
                f"it supports {tuple(supported)}"
            )
    if foreach and fused:
        raise RuntimeError(f"{optimizer}: `foreach` and `fused` cannot both be True")
    for flag, value, implied in (("foreach", foreach, "foreach"), ("fused", fused, "fused")):
        if value and backend is not None and backend != implied:
            raise ValueError(
                f"{optimizer}: {flag}=True contradicts backend={backend!r}; pass one of them"
            )
        if value and backend is None:
            backend = implied
    if foreach is False and backend == "foreach":
        raise ValueError(f"{optimizer}: foreach=False contradicts backend='foreach'")
    if backend is not None and backend not in supported:
        raise ValueError(
            f"{optimizer}: backend {backend!r} is not implemented; it supports {tuple(supported)}"
        )
    if differentiable and backend not in (None, "forloop"):
        raise RuntimeError(
            f"{optimizer}: differentiable=True needs the forloop backend (autograd does not run "
            f"through {backend} updates); got backend={backend!r}"
        )
    return backend


def default_backend(params: Sequence[Tensor], differentiable: bool, foreach: bool | None) -> str:
    """torch's rule for ``foreach=None``: foreach when every param is on a native foreach device."""
    if foreach is False or differentiable:
        return "forloop"
    if foreach or all(p.device.type in _NATIVE_FOREACH_DEVICES for p in params):
        return "foreach"
    return "forloop"


def common_device_and_dtype(tensors: Sequence[Tensor]) -> tuple[torch.device, torch.dtype] | None:
    """The (device, dtype) every tensor shares (the usual case), or None if they differ.

    Checked with `is_cpu` where it can: building a torch.device per tensor per step is a good
    part of a small step's cost."""
    first = tensors[0]
    device, dtype = first.device, first.dtype
    if device.type == "cpu":
        same = all(t.dtype is dtype and t.is_cpu for t in tensors)
    else:
        same = all(t.dtype is dtype and t.device == device for t in tensors)
    return (device, dtype) if same else None


def check_fused_device(
    optimizer: str,
    params: Sequence[Tensor],
    cpu_kernel: str | None = None,
    common: tuple[torch.device, torch.dtype] | None = None,
) -> None:
    """Refuse, before any step, params that neither the Triton kernel nor the optimizer's C kernel
    (`cpu_kernel`, for CPU tensors) can update. `common`: the params' shared (device, dtype),
    when the caller knows it (one check instead of one per param)."""
    from .._kernels import cpu as cpu_kernels

    kinds = {common} if common is not None else {(p.device, p.dtype) for p in params}
    for _, dtype in kinds:
        if not (dtype.is_floating_point or dtype.is_complex):
            raise RuntimeError(
                f"{optimizer}: backend='fused' needs floating-point or complex params, got {dtype}"
            )
    for device in {device for device, _ in kinds}:
        if cpu_kernel is not None and cpu_kernels.runs_on(device, cpu_kernel):
            continue
        if not triton_available():
            raise RuntimeError(
                f"{optimizer}: backend='fused' on {device} needs Triton, which is not installed "
                "(pip install triton, or use backend='foreach')"
            )
        if device.type == "cuda" or (device.type == "cpu" and triton_interpreting()):
            continue
        cpu_note = ""
        if device.type == "cpu" and cpu_kernel is not None:
            cpu_note = (
                " (its C kernel for CPU tensors needs a C compiler, cc, gcc, clang or $CC, and "
                "WORKBENCH_FUSED_CPU not set to 'triton')"
            )
        raise RuntimeError(
            f"{optimizer}: backend='fused' runs on CUDA tensors{cpu_note}, or on CPU under "
            f"TRITON_INTERPRET=1 for checking the Triton kernels; got a param on {device}"
        )


def group_by_device_and_dtype(
    tensor_lists: Sequence[Sequence[Tensor | None]],
    common: tuple[torch.device, torch.dtype] | None = None,
) -> list[list[list[Tensor | None]]]:
    """Split parallel tensor lists into buckets sharing the first list's (device, dtype).

    An empty list (state a flag turned off) stays empty in every bucket. `common`: the first
    list's shared (device, dtype) when the caller has checked it already.
    """
    if common is not None or common_device_and_dtype(tensor_lists[0]) is not None:
        return [list(tensor_lists)]  # the usual case, at a fraction of the per-tensor cost
    buckets: dict[tuple[torch.device, torch.dtype], list[list[Tensor | None]]] = {}
    for i, p in enumerate(tensor_lists[0]):
        bucket = buckets.setdefault((p.device, p.dtype), [[] for _ in tensor_lists])
        for lst, out in zip(tensor_lists, bucket):
            if lst:
                out.append(lst[i])
    return list(buckets.values())


def scalar_dtype() -> torch.dtype:
    """dtype of the `step` counter, as torch.optim keeps it."""
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32


__all__ = [
    "BACKENDS",
    "DEVICE_STEP_BACKENDS",
    "check_fused_device",
    "common_device_and_dtype",
    "compiled",
    "compiled_update",
    "default_backend",
    "group_by_device_and_dtype",
    "requested_backend",
    "scalar_dtype",
    "triton_available",
    "triton_interpreting",
]
