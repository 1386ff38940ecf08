"""Ahead-of-time compilation of the Triton kernels for NVIDIA GPUs, on a machine without one.

`compile_for_gpu` runs Triton's whole pipeline (TTIR -> TTGIR -> LLVM IR -> PTX -> cubin, with the
`ptxas` that ships inside the triton wheel) for a chosen compute capability, so a test on a CPU-only
machine can catch what the interpreter forgives (type errors in the compiled path, a kernel that
spills) and read the PTX: whether the vectors move in 16-byte accesses, how many registers a thread
needs.

It works whether or not the process runs kernels through the interpreter (`TRITON_INTERPRET=1`, set
for the CPU test run by tests/conftest.py). There `@triton.jit` hands out interpreter objects,
which cannot be compiled; they are rebuilt here as real JIT functions from the same Python source,
together with the jit helpers they call.

Known to work with triton 3.9 (this machine) and written against the API that triton 3.6 (the GPU
boxes) shares with it: `ASTSource(fn, signature, constexprs)` with constexpr parameters listed in
the signature as "constexpr", `GPUTarget(backend, arch, warp_size)`, `triton.knobs.nvidia`.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
import types
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
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

    asm:         every stage Triton produced: "ttir", "ttgir", "llir", "ptx" (text), "cubin" (bytes).
    n_regs:      registers per thread, from the cubin (`cuobjdump -res-usage`).
    stack_bytes: per-thread stack frame; ptxas spills registers there, so > 0 usually means spills.
    local_bytes: per-thread local memory the kernel itself asks for.
    """

    name: str
    cc: int
    num_warps: int
    asm: Mapping[str, str | bytes]
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
        `{"ld.global.v4.b32": 32, "ld.global.b64": 12, "st.global.v4.b32": 24}`."""
        return Counter(_GLOBAL_ACCESS.findall(self.ptx))

    def access_bytes(self, kind: str) -> Counter[int]:
        """Bytes moved per thread by the global accesses of `kind` ("ld" or "st"), keyed by the width
        of one access in bytes: `{16: 512, 8: 96}` is 512 bytes in 16-byte accesses and 96 in 8-byte
        ones."""
        moved: Counter[int] = Counter()
        for form, count in self.global_accesses().items():
            if not form.startswith(kind + "."):
                continue
            width = access_width(form)
            moved[width] += width * count
        return moved


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
    """Why this triton cannot build cubins here (no CUDA backend, no ptxas or cuobjdump), or None."""
    from triton.backends import backends

    if "nvidia" not in backends:
        return f"triton {triton.__version__} has no CUDA backend (backends: {sorted(backends)})"
    for tool in ("ptxas", "cuobjdump"):
        try:
            getattr(triton.knobs.nvidia, tool).path  # noqa: B018 (raises when the tool is missing)
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

    kernel:     a `@triton.jit` function (under the interpreter too, see the module docstring).
    signature:  the runtime parameters' Triton types, as a launch would specialize them: "*fp32"
                for a tensor or pointer, "i32"/"i64" for ints, "fp32" for floats. Specialization
                hints (divisibility by 16, ints equal to 1) are left out, so the code is what a
                launch gets when none of them holds.
    constexprs: the `tl.constexpr` parameters' values (tl dtypes, bools, ints); every parameter
                must be in exactly one of `signature` and `constexprs`.
    num_warps:  as a launch would pass it; None is Triton's default, what a launch that passes
                none gets.
    """
    jit = _as_jit_function(kernel)
    missing = set(jit.arg_names) - set(signature) - set(constexprs)
    both = set(signature) & set(constexprs)
    if missing or both:
        raise ValueError(
            f"{jit.__name__}: parameters without a type or value: {sorted(missing)}, "
            f"given both: {sorted(both)}"
        )
    # Since triton 3.2 the signature names every parameter and constexprs are typed "constexpr";
    # the values go in `constexprs` keyed by name (ASTSource turns names into argument indices).
    full_signature = {
        name: "constexpr" if name in constexprs else signature[name] for name in jit.arg_names
    }
    source = ASTSource(fn=jit, signature=full_signature, constexprs=dict(constexprs))
    options = {} if num_warps is None else {"num_warps": num_warps}
    compiled = triton.compile(source, target=GPUTarget("cuda", cc, 32), options=options)
    asm = dict(compiled.asm)
    cubin = asm["cubin"]
    assert isinstance(cubin, bytes)
    # A CompiledKernel learns its register count only when loaded onto a GPU (`n_regs` stays None
    # until then), so it is read from the cubin instead.
    n_regs, stack, local = _resource_usage(cubin, compiled.metadata.name)
    return GpuBinary(
        name=compiled.metadata.name,
        cc=cc,
        num_warps=compiled.metadata.num_warps,
        asm=types.MappingProxyType(asm),
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


def _as_jit_function(kernel: Any) -> JITFunction:
    """`kernel` as a compilable JITFunction.

    Under `TRITON_INTERPRET=1`, `@triton.jit` returns the interpreter's InterpretedFunction, which
    keeps the Python function as `.fn` and the jit options as `.kwargs`. The function is rebuilt
    over a copy of its module's globals in which every jit function it can reach is rebuilt too, so
    the modules themselves (which the interpreter keeps using) are left as they are.
    """
    if isinstance(kernel, JITFunction):
        return kernel
    if not isinstance(kernel, InterpretedFunction):
        raise TypeError(f"not a @triton.jit function: {kernel!r}")
    jit = _rebuilt.get(kernel)
    if jit is not None:
        return jit
    fn = kernel.fn
    scope = dict(fn.__globals__)
    clone = types.FunctionType(fn.__code__, scope, fn.__name__, fn.__defaults__, fn.__closure__)
    clone.__kwdefaults__ = fn.__kwdefaults__
    clone.__qualname__ = fn.__qualname__
    clone.__module__ = fn.__module__
    clone.__doc__ = fn.__doc__
    jit = JITFunction(clone, **kernel.kwargs)
    _rebuilt[kernel] = jit  # before the callees: a jit function may (indirectly) call itself
    for name, value in scope.items():
        if isinstance(value, InterpretedFunction):
            scope[name] = _as_jit_function(value)
    return jit


# Interpreted jit functions (module-level, so they live as long as the process) -> their rebuilds.
_rebuilt: dict[InterpretedFunction, JITFunction] = {}
