"""What the ahead-of-time compile tests check on any fused optimizer kernel (no GPU needed).

The kernels follow one pattern (one program per chunk, element roles through `role_pointer`,
per-tensor scalars as scalar roles), so one set of checks serves them all: tests/test_kernel_aot.py
runs them on every variant the table's steps launch, tests/test_kernel_compile.py on the shared
helpers. Every variant of one file is compiled in one fresh process (`_aot.compile_many`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import pytest
import torch
import triton.language as tl

from workbench.optim._kernels import _aot
from workbench.optim._kernels._multi_tensor import GPU_BLOCK, launch_num_warps

UNAVAILABLE = _aot.unavailable_reason()
CCS = (80, 90)
DTYPES = {"fp32": tl.float32, "bf16": tl.bfloat16, "fp16": tl.float16, "fp64": tl.float64}
TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16,
                "fp64": torch.float64}  # fmt: skip
ELEMENT_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2, "fp64": 8}
# 128 registers per thread leaves each SM's 64K registers room for 512 threads in flight.
REGISTER_BUDGET = 128


class Variant(NamedTuple):
    """One compiled form of a kernel: target, storage dtype, alignment. (The kernel's own flags
    are the recorded launch's: tests/kernel_launches.py.)"""

    cc: int
    dtype: str
    aligned: bool

    @property
    def id(self) -> str:
        return "-".join([f"sm{self.cc}", self.dtype, "aligned" if self.aligned else "unaligned"])

    def request(
        self, kernel: Any, signature: Mapping[str, str], constexprs: Mapping[str, Any]
    ) -> _aot.CompileRequest:
        """What launch() compiles on a GPU: BLOCK = GPU_BLOCK, launch_num_warps(dtype, aligned),
        with the kernel's own compile-time values `constexprs`."""
        values = {**constexprs}
        values |= {"DTYPE": DTYPES[self.dtype], "ALIGNED": self.aligned, "BLOCK": GPU_BLOCK}
        warps = launch_num_warps(TORCH_DTYPES[self.dtype], self.aligned)
        return _aot.CompileRequest(kernel, dict(signature), values, self.cc, warps)


def every_layout() -> list[Variant]:
    """Both targets, every storage dtype, aligned and not."""
    return [Variant(cc, d, a) for cc in CCS for d in DTYPES for a in (True, False)]


def cases(variants: list[Variant]) -> list[Any]:
    return [pytest.param(v, id=v.id) for v in variants]


def compiled_binary(result: Any, variant: Variant) -> _aot.GpuBinary:
    """The binary, or the compile error raised; prints what the checks look at (-s or -rP)."""
    if isinstance(result, _aot.AotCompileError):
        raise result
    loads, stores = dict(result.bytes_by_width("ld")), dict(result.bytes_by_width("st"))
    print(
        f"{variant.id}: {result.n_regs} registers, {result.stack_bytes} B stack, "
        f"{result.num_warps} warps; bytes by access width: loads {loads} stores {stores}"
    )
    return result


def vector_bytes_per_thread(binary: _aot.GpuBinary, variant: Variant) -> int:
    """Bytes of one role's vector that one thread moves: BLOCK elements over the block's threads."""
    return GPU_BLOCK // binary.threads * ELEMENT_BYTES[variant.dtype]


def check_builds(binary: _aot.GpuBinary, variant: Variant, stored_roles: int) -> None:
    """PTX and a cubin for the target; each element of each stored role is stored exactly once."""
    assert isinstance(binary.asm["cubin"], bytes) and binary.asm["cubin"][:4] == b"\x7fELF"
    assert f".target sm_{variant.cc}" in binary.ptx
    assert f".entry {binary.name}(" in binary.ptx
    stored = sum(binary.bytes_by_width("st").values())
    assert stored == stored_roles * vector_bytes_per_thread(binary, variant)


def check_accesses(
    binary: _aot.GpuBinary, variant: Variant, loaded_roles: int, stored_roles: int
) -> None:
    """Aligned: every byte of the vectors moves in 16-byte accesses (the scalar roles are the only
    narrower loads). Unaligned: one element per access, never 16 bytes."""
    per_thread = vector_bytes_per_thread(binary, variant)
    if variant.aligned:
        assert binary.bytes_by_width("ld")[16] == loaded_roles * per_thread
        assert binary.bytes_by_width("st") == {16: stored_roles * per_thread}
    else:
        element = ELEMENT_BYTES[variant.dtype]
        assert binary.bytes_by_width("st") == {element: stored_roles * per_thread}
        assert 16 not in binary.bytes_by_width("ld")


def check_registers(binary: _aot.GpuBinary) -> None:
    """At launch()'s BLOCK and warps: no spills, and room for 2 blocks per SM."""
    assert binary.stack_bytes == 0 and binary.local_bytes == 0, "spills"
    assert binary.n_regs <= REGISTER_BUDGET
