"""Ahead-of-time compilation of the Triton kernels for NVIDIA GPUs, on a machine without one.

`compile_for_gpu` runs Triton's whole pipeline (TTIR -> TTGIR -> LLVM IR -> PTX -> cubin, with the
`ptxas` that ships inside the triton wheel) for a chosen compute capability, so a test on a CPU-only
machine catches what the interpreter forgives (the compiled path's type rules, a kernel that
spills) and can read the machine code: whether vectors move in 16-byte accesses, how many registers
a thread needs.

Under the interpreter (`TRITON_INTERPRET=1`, which tests/conftest.py sets on a machine without a
GPU) `@triton.jit` hands out interpreter objects, and modules may define interpreter-only variants
of their jit helpers (see `_storage.py`). Compiling those would not give what a GPU runs, so
kernels that come from an interpreting process are compiled in a fresh Python process with
`TRITON_INTERPRET=0`, which imports them again by module and name; `compile_many` does a whole list
in one such process (the import of torch and triton dominates a single compile).

Written against the API triton 3.6 (the GPU boxes) and triton 3.9 (this machine) share:
`triton.compiler.ASTSource(fn, signature, constexprs)`, where the signature names every parameter
and gives "constexpr" as the type of the compile-time ones (so since triton 3.2);
`GPUTarget(backend, arch, warp_size)`; the tools in `triton.knobs.nvidia` (triton >= 3.4).
"""

from __future__ import annotations

import os
import pickle
import re
import subprocess
import sys
import tempfile
import traceback
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from triton.runtime.interpreter import InterpretedFunction
from triton.runtime.jit import JITFunction

# `ld.global.v4.b32`, `@%p1 st.global.b16`, `ld.global.L1::evict_last.v2.b64`...
_GLOBAL_ACCESS = re.compile(r"\b(?:ld|st)\.global(?:\.[\w:]+)*")
_VECTOR = re.compile(r"^v(\d+)$")
_ELEMENT_BITS = re.compile(r"^[bfsu](\d+)$")
_RESOURCE_USAGE = re.compile(r"REG:(\d+)\s+STACK:(\d+)\s+SHARED:(\d+)\s+LOCAL:(\d+)")


@dataclass(frozen=True)
class GpuBinary:
    """One kernel compiled for one compute capability, and what its machine code says about it.

    asm:         each stage Triton produced: "ttir", "ttgir", "llir", "ptx" (text), "cubin" (bytes).
    n_regs:      registers per thread, read from the cubin (`cuobjdump -res-usage`).
    stack_bytes: per-thread stack frame; ptxas spills registers there, so > 0 usually means spills.
    local_bytes: per-thread local memory the kernel itself asks for.
    """

    name: str
    cc: int
    num_warps: int
    asm: Mapping[str, str | bytes] = field(repr=False)
    n_regs: int
    stack_bytes: int
    local_bytes: int
    shared_bytes: int

    @property
    def ptx(self) -> str:
        text = self.asm["ptx"]
        assert isinstance(text, str)
        return text

    @property
    def threads(self) -> int:
        return self.num_warps * 32

    def global_accesses(self) -> Counter[str]:
        """How often each form of global-memory load and store appears in the PTX, e.g.
        `{"ld.global.v4.b32": 32, "ld.global.b64": 8, "st.global.v4.b32": 24}`."""
        return Counter(_GLOBAL_ACCESS.findall(self.ptx))

    def bytes_by_width(self, kind: str) -> Counter[int]:
        """Bytes that the global accesses of `kind` ("ld" or "st") in the PTX move, keyed by the
        width of one access: `{16: 512, 8: 64}` is 512 bytes in 16-byte accesses and 64 bytes in
        8-byte ones. Counted over the PTX text, so for a kernel without loops it is per thread."""
        moved: Counter[int] = Counter()
        for form, count in self.global_accesses().items():
            if form.startswith(kind + "."):
                width = access_width(form)
                moved[width] += width * count
        return moved


@dataclass(frozen=True)
class CompileRequest:
    """One variant of a kernel to compile; see `compile_for_gpu` for the fields."""

    kernel: Any
    signature: Mapping[str, str]
    constexprs: Mapping[str, Any]
    cc: int
    num_warps: int | None = None


class AotCompileError(RuntimeError):
    """A kernel variant did not compile; the message holds the compiler's error."""


def access_width(form: str) -> int:
    """Bytes moved by one PTX access: `ld.global.v4.b32` -> 16, `st.global.b16` -> 2."""
    lanes, bits = 1, None
    for part in form.split(".")[2:]:
        if vector := _VECTOR.match(part):
            lanes = int(vector.group(1))
        elif element := _ELEMENT_BITS.match(part):
            bits = int(element.group(1))
    if bits is None:
        raise ValueError(f"no element type in PTX access {form!r}")
    return lanes * bits // 8


def unavailable_reason() -> str | None:
    """Why this triton cannot build cubins here (no CUDA backend, ptxas or cuobjdump), or None."""
    from triton.backends import backends

    if "nvidia" not in backends:
        return f"triton {triton.__version__} has no CUDA backend (it has: {sorted(backends)})"
    knobs = getattr(triton, "knobs", None)  # triton >= 3.4
    if knobs is None:
        return f"triton {triton.__version__} is older than 3.4 (no triton.knobs)"
    for tool in ("ptxas", "cuobjdump"):
        try:
            getattr(knobs.nvidia, tool).path  # noqa: B018 (raises when the tool is missing)
        except (AttributeError, RuntimeError) as e:
            return f"triton {triton.__version__} has no usable {tool}: {e}"
    return None


def compile_for_gpu(
    kernel: Any,
    signature: Mapping[str, str],
    constexprs: Mapping[str, Any],
    cc: int,
    *,
    num_warps: int | None = None,
) -> GpuBinary:
    """Compile `kernel` for NVIDIA compute capability `cc` (80 for A100, 90 for H100) without a GPU.

    kernel:     a module-level `@triton.jit` function.
    signature:  the runtime parameters' Triton types, as a launch specializes them: "*fp32" for a
                tensor or pointer, "i32" for a Python int, "fp32" for a Python float. Launch-time
                hints (pointers divisible by 16, ints equal to 1 or divisible by 16) are left out,
                so the code is what a launch gets when none of them holds.
    constexprs: the `tl.constexpr` parameters' values (tl dtypes, bools, ints); each parameter is
                in exactly one of `signature` and `constexprs`.
    num_warps:  as the launch passes it; None is Triton's default (what a launch passing none gets).

    Raises AotCompileError when the kernel does not compile.
    """
    (result,) = compile_many([CompileRequest(kernel, signature, constexprs, cc, num_warps)])
    if isinstance(result, AotCompileError):
        raise result
    return result


def compile_many(requests: Sequence[CompileRequest]) -> list[GpuBinary | AotCompileError]:
    """Compile every request; a variant that fails gives its AotCompileError in its place.

    Kernels from an interpreting process are all compiled in one fresh process (module docstring).
    """
    if not any(isinstance(r.kernel, InterpretedFunction) for r in requests):
        return [_compile_here(r) for r in requests]
    return _compile_in_fresh_process(requests)


def _compile_here(request: CompileRequest) -> GpuBinary | AotCompileError:
    kernel = request.kernel
    if not isinstance(kernel, JITFunction):
        return AotCompileError(f"not a @triton.jit function: {kernel!r}")
    missing = set(kernel.arg_names) - set(request.signature) - set(request.constexprs)
    both = set(request.signature) & set(request.constexprs)
    if missing or both:
        return AotCompileError(
            f"{kernel.__name__}: parameters with no type or value: {sorted(missing)}, "
            f"with both: {sorted(both)}"
        )
    signature = {
        name: "constexpr" if name in request.constexprs else request.signature[name]
        for name in kernel.arg_names
    }
    source = ASTSource(fn=kernel, signature=signature, constexprs=dict(request.constexprs))
    options = {} if request.num_warps is None else {"num_warps": request.num_warps}
    try:
        compiled = triton.compile(source, target=GPUTarget("cuda", request.cc, 32), options=options)
        asm = dict(compiled.asm)
        cubin = asm["cubin"]
        assert isinstance(cubin, bytes)
        # A CompiledKernel learns its register count only when loaded onto a GPU (`n_regs` is None
        # until then), so it is read from the cubin.
        n_regs, stack, local = _resource_usage(cubin, compiled.metadata.name)
    except Exception as e:
        return AotCompileError(
            f"{kernel.__name__} for sm_{request.cc} with {dict(request.constexprs)}:\n"
            + "".join(traceback.format_exception(e))
        )
    return GpuBinary(
        name=compiled.metadata.name,
        cc=request.cc,
        num_warps=compiled.metadata.num_warps,
        asm=asm,
        n_regs=n_regs,
        stack_bytes=stack,
        local_bytes=local,
        shared_bytes=compiled.metadata.shared,
    )


def _resource_usage(cubin: bytes, name: str) -> tuple[int, int, int]:
    """(registers, stack bytes, local bytes) per thread of function `name` in `cubin`."""
    fd, path = tempfile.mkstemp(suffix=".cubin")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(cubin)
        report = subprocess.run(
            [triton.knobs.nvidia.cuobjdump.path, "-res-usage", path],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    finally:
        os.remove(path)
    # Resource usage:
    #  Function adamax_kernel:
    #   REG:40 STACK:0 SHARED:0 LOCAL:0 CONSTANT[0]:584 TEXTURE:0 SURFACE:0 SAMPLER:0
    _, _, after = report.partition(f"Function {name}:")
    usage = _RESOURCE_USAGE.search(after)
    if usage is None:
        raise RuntimeError(f"no resource usage for {name} in cuobjdump's report:\n{report}")
    regs, stack, _, local = map(int, usage.groups())
    return regs, stack, local


# ---- compiling in a fresh process ------------------------------------------------------------


def _compile_in_fresh_process(
    requests: Sequence[CompileRequest],
) -> list[GpuBinary | AotCompileError]:
    jobs = []
    for r in requests:
        fn = getattr(r.kernel, "fn", None)
        if fn is None or "<locals>" in fn.__qualname__:
            raise TypeError(f"not a module-level @triton.jit function: {r.kernel!r}")
        where = (fn.__module__, fn.__qualname__)
        jobs.append((*where, dict(r.signature), dict(r.constexprs), r.cc, r.num_warps))
    env = dict(os.environ, TRITON_INTERPRET="0")
    # the child imports the kernels' modules the way this process found them
    env["PYTHONPATH"] = os.pathsep.join(p or os.getcwd() for p in sys.path)
    with tempfile.TemporaryDirectory() as tmp:
        jobs_path, results_path = os.path.join(tmp, "jobs"), os.path.join(tmp, "results")
        with open(jobs_path, "wb") as f:
            pickle.dump(jobs, f)
        child = subprocess.run(
            [sys.executable, "-m", __name__, jobs_path, results_path],
            env=env,
            capture_output=True,
            text=True,
        )
        if child.returncode != 0 or not os.path.exists(results_path):
            raise AotCompileError(
                f"the compiling process failed (exit {child.returncode}):\n{child.stderr[-8000:]}"
            )
        with open(results_path, "rb") as f:
            results: list[GpuBinary | AotCompileError] = pickle.load(f)
    return results


def _child_main(jobs_path: str, results_path: str) -> None:
    import importlib

    assert os.environ.get("TRITON_INTERPRET") == "0"
    with open(jobs_path, "rb") as f:
        jobs = pickle.load(f)
    results: list[GpuBinary | AotCompileError] = []
    for module, qualname, signature, constexprs, cc, num_warps in jobs:
        kernel: Any = importlib.import_module(module)
        for part in qualname.split("."):
            kernel = getattr(kernel, part)
        results.append(_compile_here(CompileRequest(kernel, signature, constexprs, cc, num_warps)))
    with open(results_path, "wb") as f:
        pickle.dump(results, f)


if __name__ == "__main__":
    # Run the module's own copy (not this `__main__` one), so what is pickled back names classes the
    # parent can import.
    import importlib

    importlib.import_module(__spec__.name)._child_main(*sys.argv[1:3])
