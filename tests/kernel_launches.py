"""Every Triton kernel variant the fused backend launches, recorded from steps of the test table.

Under the interpreter (tests/conftest.py) each fused optimizer of tests/optim_table.py is stepped
on a small param with each of its table configs, again under torch.amp.GradScaler where it takes
one, once with torch's default dtype set to fp64, and once from a state_dict that torch.optim wrote
for bf16 params (torch's load_state_dict casts the floating state to the param's dtype). Each
kernel launch is recorded: the kernel, its runtime arguments' Triton types, its compile-time
values, the tensor lists `_multi_tensor.launch` was given, and the optimizer flags in force, from
which the byte model (`tensors_moved`) says what one step reads and writes.

The ahead-of-time compile tests compile exactly these variants, so no kernel's signature or flag
set is written by hand anywhere: a new fused optimizer is covered by its table entry.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import pkgutil
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import triton
import triton.language as tl
from triton.runtime.interpreter import InterpretedFunction

from tests.optim_table import OptimEntry
from workbench.optim import _kernels

# launch() fills these in per launch; a compile chooses its own (see Launch.request)
LAYOUT_KEYS = ("DTYPE", "ALIGNED", "BLOCK", "num_warps")
TL_NAMES = {tl.float32: "fp32", tl.bfloat16: "bf16", tl.float16: "fp16", tl.float64: "fp64"}


@dataclass(frozen=True)
class Launch:
    """One distinct kernel variant, as a step launched it.

    signature:  runtime parameters and their Triton types ("*fp32", "fp32", "i32"); an argument
                passed as None is a constexpr to Triton and sits in `constexprs` instead.
    constexprs: compile-time values (flags, dtypes), without the layout that launch() picks.
    dtype:      the storage dtype it ran on ("fp32", ...), or None for a kernel over scalars only.
    element_roles / scalar_roles: how many parallel tensor lists launch() was given.
    reads / writes: param-sized tensors one step reads and writes, by the optimizer's byte model
                (with GradScaler the kernel also writes the unscaled grad back; a first step reads
                no momentum buffer).
    """

    optimizer: str
    kernel: Any
    signature: tuple[tuple[str, str], ...]
    constexprs: tuple[tuple[str, Any], ...]
    dtype: str | None
    element_roles: int
    scalar_roles: int
    reads: int
    writes: int

    @property
    def kernel_name(self) -> str:
        return self.kernel.fn.__name__

    @property
    def flags(self) -> dict[str, Any]:
        return dict(self.constexprs)

    @property
    def id(self) -> str:
        on = [k for k, v in self.constexprs if v is True]
        # pointers beyond the table (a tensor lr, GradScaler's grad_scale and found_inf)
        on += [
            f"*{k}"
            for k, kind in self.signature
            if kind.startswith("*") and k not in ("meta", "lr")
        ]
        dtypes = [
            f"{k}={TL_NAMES.get(v, v)}" for k, v in self.constexprs if isinstance(v, tl.dtype)
        ]
        dtypes = [d for d in dtypes if not d.endswith("=fp32")]
        return "-".join([self.kernel_name, self.dtype or "scalars", *on, *dtypes])


@dataclass
class _Recorder:
    entry: OptimEntry
    flags: dict[str, Any]
    amp: bool
    launches: dict[tuple, Launch]
    roles: tuple[int, int] | None = None  # what the enclosing launch() call was given

    def record(self, kernel: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        mangle = triton.runtime.jit.mangle_type
        types = {name: mangle(arg) for name, arg in zip(kernel.arg_names, args, strict=False)}
        nones = {name for name, kind in types.items() if kind == "constexpr"}
        signature = tuple((k, v) for k, v in types.items() if k not in nones)
        dtype = TL_NAMES[kwargs["DTYPE"]] if "DTYPE" in kwargs else None
        # a kernel over scalars only keeps its own BLOCK: launch() does not choose it
        layout = LAYOUT_KEYS if dtype is not None else ("num_warps",)
        constexprs = dict.fromkeys(nones) | {k: v for k, v in kwargs.items() if k not in layout}
        element_roles, scalar_roles = self.roles if dtype is not None and self.roles else (0, 0)
        reads, writes = self.entry.ours.tensors_moved(**self.flags)
        writes += int(self.amp)
        reads -= int(bool(constexprs.get("FIRST_STEP")))
        key = (kernel.fn.__qualname__, signature, tuple(sorted(constexprs.items(), key=str)), dtype)
        launch = Launch(
            self.entry.name, kernel, signature, tuple(constexprs.items()), dtype,
            element_roles, scalar_roles, reads, writes,
        )  # fmt: skip
        known = self.launches.setdefault(key, launch)
        # two configs reaching one variant must agree on what it moves: the byte model and the
        # kernels' variants describe the same step
        assert (known.reads, known.writes) == (reads, writes), (known, launch)


@contextlib.contextmanager
def _recording(recorder: _Recorder) -> Iterator[None]:
    """Patch the interpreter's kernel launch and every kernel module's launch() to record."""
    run = InterpretedFunction.run

    def recording_run(kernel: Any, *args: Any, grid: Any, warmup: bool, **kwargs: Any) -> Any:
        recorder.record(kernel, args, kwargs)
        return run(kernel, *args, grid=grid, warmup=warmup, **kwargs)

    patched: list[tuple[Any, Any]] = []
    for info in pkgutil.iter_modules(_kernels.__path__):
        module = importlib.import_module(f"{_kernels.__name__}.{info.name}")
        original = getattr(module, "launch", None)
        if original is None or info.name == "_multi_tensor":
            continue

        def recording_launch(kernel, element_roles, scalar_roles, *a, _original=original, **k):  # type: ignore[no-untyped-def]
            recorder.roles = (len(element_roles), len(scalar_roles))
            try:
                return _original(kernel, element_roles, scalar_roles, *a, **k)
            finally:
                recorder.roles = None

        patched.append((module, original))
        module.launch = recording_launch
    InterpretedFunction.run = recording_run  # type: ignore[method-assign]
    previous = os.environ.get("WORKBENCH_FUSED_CPU")
    os.environ["WORKBENCH_FUSED_CPU"] = "triton"  # CPU tensors to the Triton kernels, not C
    try:
        yield
    finally:
        InterpretedFunction.run = run  # type: ignore[method-assign]
        for module, original in patched:
            module.launch = original
        if previous is None:
            del os.environ["WORKBENCH_FUSED_CPU"]
        else:
            os.environ["WORKBENCH_FUSED_CPU"] = previous


def _param(entry: OptimEntry, dtype: torch.dtype) -> torch.nn.Parameter:
    # 64 elements: a multiple of 16, so launch() takes the aligned path
    return torch.nn.Parameter(torch.randn(entry.shape((64,)), dtype=dtype))


def _steps(optimizer: torch.optim.Optimizer, param: torch.nn.Parameter, steps: int = 2) -> None:
    for _ in range(steps):  # two: a first step (state created) and a later one
        param.grad = torch.randn_like(param)
        optimizer.step()


def _fused(entry: OptimEntry, params: list[torch.Tensor], config: dict) -> Any:
    """Our optimizer on the fused backend, or None where this config refuses it (differentiable)."""
    try:
        return entry.ours(params, backend="fused", **config)
    except (ValueError, RuntimeError):
        return None


def record(entry: OptimEntry) -> list[Launch]:
    """Every distinct kernel variant this entry's fused steps launch (none without a fused one)."""
    if "fused" not in entry.ours.backends:
        return []
    launches: dict[tuple, Launch] = {}
    torch.manual_seed(0)
    amp_runs = (False, True) if entry.ours.fused_amp_scaling else (False,)
    for amp in amp_runs:
        for config in entry.configs:
            recorder = _Recorder(entry, config, amp, launches)
            param = _param(entry, torch.float32)
            optimizer = _fused(entry, [param], config)
            if optimizer is None:
                continue
            if amp:  # what GradScaler sets around step() (powers of two, no inf found)
                optimizer.grad_scale = torch.tensor(4.0)
                optimizer.found_inf = torch.tensor(0.0)
            with _recording(recorder):
                _steps(optimizer, param)
    # torch's default dtype fp64: fp64 step counters (and scalars) beside fp64 params
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        param = _param(entry, torch.float64)
        with _recording(_Recorder(entry, {}, False, launches)):
            _steps(entry.ours([param], backend="fused"), param)
    finally:
        torch.set_default_dtype(previous)
    # a state_dict from torch.optim on bf16 params: its floating state arrives in bf16
    reference = _param(entry, torch.bfloat16)
    theirs = entry.torch_cls([reference], **entry.torch_foreach(False))
    _steps(theirs, reference, steps=1)
    param = _param(entry, torch.bfloat16)
    ours = entry.ours([param], backend="fused")
    ours.load_state_dict(theirs.state_dict())
    for group in ours.param_groups:  # torch's groups carry no backend: loading cleared ours
        group["backend"] = "fused"
    with _recording(_Recorder(entry, {}, False, launches)):
        _steps(ours, param, steps=1)
    return list(launches.values())
