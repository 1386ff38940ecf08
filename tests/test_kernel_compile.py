"""The shared multi-tensor helpers, compiled ahead of time for sm_80 and sm_90 with no GPU present.

The interpreter checks the kernels' numbers; the compiler alone shows what the machine code does.
This file checks the helpers every fused kernel is built on (`chunk_of_program`, `role_pointer`)
through a kernel that is nothing but them: a chunk-by-chunk copy with no mask. Their 16-byte
alignment hint (ALIGNED) must turn into 16-byte loads and stores, and without it accesses must be
one element wide. Each optimizer's own kernels are checked in tests/test_kernel_aot.py; the
numbers each test looked at are printed (-s or -rP).
"""

from __future__ import annotations

from typing import Any

import pytest
import triton
import triton.language as tl

from tests import kernel_aot_checks as aot
from workbench.optim._kernels import _aot
from workbench.optim._kernels._multi_tensor import chunk_of_program, role_pointer

pytestmark = pytest.mark.skipif(aot.UNAVAILABLE is not None, reason=str(aot.UNAVAILABLE))


@triton.jit
def _full_chunk_copy(
    meta, n_tensors, n_chunks, DTYPE: tl.constexpr, ALIGNED: tl.constexpr, BLOCK: tl.constexpr
):
    """Role 0 copied into role 1, chunk by chunk, with no mask: the accesses an optimizer kernel
    makes on a full chunk, through the shared helpers alone."""
    t, offsets, _ = chunk_of_program(meta, 2, n_tensors, n_chunks, BLOCK, ALIGNED)
    source = role_pointer(meta, 0, n_tensors, t, DTYPE, ALIGNED) + offsets
    target = role_pointer(meta, 1, n_tensors, t, DTYPE, ALIGNED) + offsets
    tl.store(target, tl.load(source))


SIGNATURE = {"meta": "*i64", "n_tensors": "i32", "n_chunks": "i32"}
VARIANTS = aot.every_layout()


@pytest.fixture(scope="module")
def built() -> dict[aot.Variant, Any]:
    requests = [v.request(_full_chunk_copy, SIGNATURE, {}) for v in VARIANTS]
    return dict(zip(VARIANTS, _aot.compile_many(requests), strict=True))


@pytest.fixture
def binary(built: dict[aot.Variant, Any], request: pytest.FixtureRequest) -> _aot.GpuBinary:
    variant = request.node.callspec.params["variant"]
    return aot.compiled_binary(built[variant], variant)


@pytest.mark.parametrize("variant", aot.cases(VARIANTS))
def test_compiles_to_ptx_and_cubin(variant: aot.Variant, binary: _aot.GpuBinary) -> None:
    assert "ptx" in binary.asm
    aot.check_builds(binary, variant, stored_roles=1)


@pytest.mark.parametrize("variant", aot.cases([v for v in VARIANTS if v.aligned]))
def test_aligned_pointers_give_16_byte_accesses(
    variant: aot.Variant, binary: _aot.GpuBinary
) -> None:
    """The ALIGNED hint plus the chunk offsets: every byte of the vectors moves in 16-byte
    accesses (ld/st.global.v4.b32 for 32- and 16-bit types, .v2.b64 for fp64)."""
    per_thread = aot.vector_bytes_per_thread(binary, variant)
    assert binary.bytes_by_width("ld")[16] == per_thread
    assert binary.bytes_by_width("st") == {16: per_thread}


@pytest.mark.parametrize("variant", aot.cases([v for v in VARIANTS if not v.aligned]))
def test_unaligned_pointers_give_element_accesses(
    variant: aot.Variant, binary: _aot.GpuBinary
) -> None:
    """Without the hint the compiler may only assume element alignment: one element per access.
    Together with the test above, this shows the hint is what turns on the wide accesses."""
    aot.check_accesses(binary, variant, loaded_roles=1, stored_roles=1)


@pytest.mark.parametrize("variant", aot.cases([v for v in VARIANTS if v.aligned]))
def test_fits_registers(variant: aot.Variant, binary: _aot.GpuBinary) -> None:
    aot.check_registers(binary)
