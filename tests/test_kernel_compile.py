"""The fused kernels compiled ahead of time for real GPUs (sm_80, sm_90), with no GPU present.

The interpreter checks the kernels' numbers; this checks what only the compiler sees: each variant
builds to PTX and a cubin, 16-byte alignment of the pointers (the ALIGNED flag) turns into 16-byte
loads and stores, and a thread's registers fit. Every variant is compiled once, in one process, by
the module fixture; the numbers each test looked at are printed (see them with -s or -rP).

A new optimizer's kernel adds its signature and variants next to Adamax's.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import pytest
import torch
import triton
import triton.language as tl

from workbench.optim import Adamax
from workbench.optim._kernels import _aot
from workbench.optim._kernels import adamax as adamax_module
from workbench.optim._kernels._multi_tensor import (
    GPU_BLOCK,
    chunk_of_program,
    launch_num_warps,
    role_pointer,
)
from workbench.optim._kernels.adamax import adamax_kernel

_UNAVAILABLE = _aot.unavailable_reason()
pytestmark = pytest.mark.skipif(_UNAVAILABLE is not None, reason=str(_UNAVAILABLE))

CCS = (80, 90)
DTYPES = {"fp32": tl.float32, "bf16": tl.bfloat16, "fp16": tl.float16, "fp64": tl.float64}
ELEMENT_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2, "fp64": 8}

# What launch() in _multi_tensor.py uses on a GPU: BLOCK = GPU_BLOCK, launch_num_warps(dtype).
TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16,
                "fp64": torch.float64}  # fmt: skip
# 128 registers per thread leaves each SM's 64K registers room for 512 threads in flight.
REGISTER_BUDGET = 128

# The runtime parameters of adamax_kernel as launch() passes them: the int64 pointer table, two
# Python ints, Python floats; lr is a tensor ("*fp32") when LR_IS_TENSOR.
ADAMAX_SIGNATURE = {
    "meta": "*i64",
    "n_tensors": "i32",
    "n_chunks": "i32",
    "lr": "fp32",
    "beta1": "fp32",
    "log2_beta1": "fp32",
    "beta2": "fp32",
    "eps": "fp32",
    "weight_decay": "fp32",
}
ADAMAX_LOADED_ROLES = 4  # param, grad, exp_avg, exp_inf (the step is one scalar)
ADAMAX_STORED_ROLES = 3  # param, exp_avg, exp_inf


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


class Variant(NamedTuple):
    kernel: str  # "adamax" or "copy"
    cc: int
    dtype: str
    aligned: bool
    maximize: bool = False
    lr_is_tensor: bool = False
    step_dtype: str = "fp32"

    @property
    def id(self) -> str:
        flags = [f"sm{self.cc}", self.dtype, "aligned" if self.aligned else "unaligned"]
        flags += ["maximize"] * self.maximize + ["lr_tensor"] * self.lr_is_tensor
        return "-".join(flags + ([f"step_{self.step_dtype}"] if self.step_dtype != "fp32" else []))

    def request(self) -> _aot.CompileRequest:
        constexprs: dict[str, Any] = {
            "DTYPE": DTYPES[self.dtype],
            "ALIGNED": self.aligned,
            "BLOCK": GPU_BLOCK,
        }
        if self.kernel == "copy":
            signature = {"meta": "*i64", "n_tensors": "i32", "n_chunks": "i32"}
            return _aot.CompileRequest(_full_chunk_copy, signature, constexprs, self.cc, 4)
        signature = dict(ADAMAX_SIGNATURE, lr="*fp32" if self.lr_is_tensor else "fp32")
        constexprs |= {
            "MAXIMIZE": self.maximize,
            "LR_IS_TENSOR": self.lr_is_tensor,
            "STEP_DTYPE": DTYPES[self.step_dtype],
        }
        num_warps = launch_num_warps(TORCH_DTYPES[self.dtype], self.aligned)
        return _aot.CompileRequest(adamax_kernel, signature, constexprs, self.cc, num_warps)


ADAMAX = [Variant("adamax", cc, d, a) for cc in CCS for d in DTYPES for a in (True, False)]
ADAMAX_FLAGS = [
    *(Variant("adamax", cc, "fp32", True, maximize=True, lr_is_tensor=True) for cc in CCS),
    Variant("adamax", 90, "fp64", True, step_dtype="fp64"),  # torch's default dtype set to fp64
]
COPY = [Variant("copy", cc, d, a) for cc in CCS for d in DTYPES for a in (True, False)]


Built = dict[Variant, "_aot.GpuBinary | _aot.AotCompileError"]


def cases(variants: list[Variant]) -> list[Any]:
    return [pytest.param(v, id=v.id) for v in variants]


@pytest.fixture(scope="module")
def built() -> Built:
    """Every variant this module looks at, compiled once (in one fresh process when the kernels
    come from the interpreter)."""
    variants = ADAMAX + ADAMAX_FLAGS + COPY
    return dict(zip(variants, _aot.compile_many([v.request() for v in variants]), strict=True))


@pytest.fixture
def binary(built: Built, request: pytest.FixtureRequest) -> _aot.GpuBinary:
    """The compiled binary of the test's `variant` parameter."""
    variant: Variant = request.node.callspec.params["variant"]
    result = built[variant]
    if isinstance(result, _aot.AotCompileError):
        raise result
    loads, stores = dict(result.bytes_by_width("ld")), dict(result.bytes_by_width("st"))
    print(
        f"{variant.id}: {result.n_regs} registers, {result.stack_bytes} B stack, "
        f"{result.num_warps} warps; bytes by access width: loads {loads} stores {stores}; "
        f"{dict(result.global_accesses())}"
    )
    return result


def vector_bytes_per_thread(binary: _aot.GpuBinary, variant: Variant) -> int:
    """Bytes of one role's vector that one thread moves: BLOCK elements over the block's threads."""
    return GPU_BLOCK // binary.threads * ELEMENT_BYTES[variant.dtype]


# ---- every variant builds ---------------------------------------------------------------------


@pytest.mark.parametrize("variant", cases(ADAMAX + ADAMAX_FLAGS + COPY))
def test_compiles_to_ptx_and_cubin(variant: Variant, binary: _aot.GpuBinary) -> None:
    assert "ptx" in binary.asm and "cubin" in binary.asm
    assert isinstance(binary.asm["cubin"], bytes) and binary.asm["cubin"][:4] == b"\x7fELF"
    assert f".target sm_{variant.cc}" in binary.ptx
    assert f".entry {binary.name}(" in binary.ptx
    if variant.kernel == "adamax":
        # each element of param, exp_avg and exp_inf is stored exactly once (whatever the widths)
        stored = sum(binary.bytes_by_width("st").values())
        assert stored == ADAMAX_STORED_ROLES * vector_bytes_per_thread(binary, variant)


@pytest.mark.parametrize("variant", cases(ADAMAX_FLAGS[:1]))
def test_lr_tensor_is_one_more_scalar_load(variant: Variant, built: Built) -> None:
    """LR_IS_TENSOR makes lr a pointer parameter, read once on the device."""
    with_tensor = built[variant]
    with_float = built[Variant("adamax", variant.cc, variant.dtype, variant.aligned)]
    assert isinstance(with_tensor, _aot.GpuBinary) and isinstance(with_float, _aot.GpuBinary)
    loads = [
        sum(n for form, n in b.global_accesses().items() if form.startswith("ld."))
        for b in (with_float, with_tensor)
    ]
    print(f"{variant.id}: global loads {loads[0]} with a float lr, {loads[1]} with a tensor lr")
    assert loads[1] == loads[0] + 1


# ---- ALIGNED is what gives 16-byte accesses ---------------------------------------------------


@pytest.mark.parametrize("variant", cases([v for v in COPY if v.aligned]))
def test_helpers_aligned_pointers_give_16_byte_accesses(
    variant: Variant, binary: _aot.GpuBinary
) -> None:
    """role_pointer's ALIGNED hint plus chunk_of_program's offsets: every byte of the vectors moves
    in 16-byte accesses (ld/st.global.v4.b32 for 32- and 16-bit types, .v2.b64 for fp64)."""
    per_thread = vector_bytes_per_thread(binary, variant)
    assert binary.bytes_by_width("ld")[16] == per_thread
    assert binary.bytes_by_width("st") == {16: per_thread}


@pytest.mark.parametrize("variant", cases([v for v in COPY if not v.aligned]))
def test_helpers_unaligned_pointers_give_element_accesses(
    variant: Variant, binary: _aot.GpuBinary
) -> None:
    """Without the hint the compiler may only assume element alignment: one element per access.
    Together with the test above, this shows the hint is what turns on the wide accesses."""
    per_thread = vector_bytes_per_thread(binary, variant)
    assert binary.bytes_by_width("st") == {ELEMENT_BYTES[variant.dtype]: per_thread}
    assert 16 not in binary.bytes_by_width("ld")


@pytest.mark.parametrize("variant", cases([v for v in ADAMAX if v.aligned]))
def test_adamax_aligned_vectors_move_in_16_byte_accesses(
    variant: Variant, binary: _aot.GpuBinary
) -> None:
    """Aligned launches (16-byte pointers, lengths a multiple of 16 elements) move every byte of
    param, grad and state in 16-byte accesses: the bounds mask is uniform per 16 elements."""
    per_thread = vector_bytes_per_thread(binary, variant)
    assert binary.bytes_by_width("ld")[16] == ADAMAX_LOADED_ROLES * per_thread
    assert binary.bytes_by_width("st") == {16: ADAMAX_STORED_ROLES * per_thread}


@pytest.mark.parametrize("variant", cases([v for v in ADAMAX if not v.aligned]))
def test_adamax_unaligned_vectors_move_one_element_per_access(
    variant: Variant, binary: _aot.GpuBinary
) -> None:
    per_thread = vector_bytes_per_thread(binary, variant)
    stored = ADAMAX_STORED_ROLES * per_thread
    assert binary.bytes_by_width("st") == {ELEMENT_BYTES[variant.dtype]: stored}
    assert 16 not in binary.bytes_by_width("ld")


# ---- registers --------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", cases([v for v in COPY if v.aligned]))
def test_helpers_fit_registers(variant: Variant, binary: _aot.GpuBinary) -> None:
    assert binary.stack_bytes == 0 and binary.local_bytes == 0
    assert binary.n_regs <= REGISTER_BUDGET


@pytest.mark.parametrize("variant", cases(ADAMAX))
def test_adamax_fits_registers(variant: Variant, binary: _aot.GpuBinary) -> None:
    """At launch()'s BLOCK and warps, no variant spills and each leaves room for 2 blocks/SM."""
    assert binary.stack_bytes == 0 and binary.local_bytes == 0, "spills"
    assert binary.n_regs <= REGISTER_BUDGET


# ---- the signature above is what a launch passes ----------------------------------------------


class _RecordingKernel:
    """Stands in for the kernel: records what launch() passes instead of running it."""

    def __init__(self) -> None:
        self.calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = []

    def __getitem__(self, grid: tuple[int, ...]) -> Any:
        return lambda *args, **kwargs: self.calls.append((args, kwargs))


def _launch_signature(monkeypatch: pytest.MonkeyPatch, **hyper: Any) -> tuple[dict, set]:
    """(runtime parameter types, constexpr names) of the launch one Adamax step makes."""
    mangle_type = getattr(triton.runtime.jit, "mangle_type", None)
    if mangle_type is None:
        pytest.skip(f"triton {triton.__version__} has no triton.runtime.jit.mangle_type")
    recorder = _RecordingKernel()
    monkeypatch.setattr(adamax_module, "adamax_kernel", recorder)
    device = "cuda" if torch.cuda.is_available() else "cpu"  # CPU: under the interpreter
    param = torch.nn.Parameter(torch.randn(10, device=device))
    param.grad = torch.randn(10, device=device)
    Adamax([param], backend="fused", **hyper).step()
    ((args, constexprs),) = recorder.calls
    names = adamax_kernel.arg_names
    # num_warps is a launch option (passed on a GPU), not one of the kernel's constexprs
    return {name: mangle_type(arg) for name, arg in zip(names, args, strict=False)}, set(
        constexprs
    ) - {"num_warps"}


@pytest.mark.parametrize("lr_is_tensor", [False, True], ids=["lr_float", "lr_tensor"])
def test_signature_is_what_launch_passes(
    monkeypatch: pytest.MonkeyPatch, lr_is_tensor: bool
) -> None:
    lr = torch.tensor(1e-3) if lr_is_tensor else 1e-3
    signature, constexprs = _launch_signature(
        monkeypatch, lr=lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01
    )
    request = Variant("adamax", 90, "fp32", True, lr_is_tensor=lr_is_tensor).request()
    assert signature == dict(request.signature)
    assert constexprs == set(request.constexprs)


def test_signature_with_default_hyperparameters(monkeypatch: pytest.MonkeyPatch) -> None:
    """Adamax's default weight_decay=0 is a Python int; it must still launch as fp32, or every
    default-configured run would compile a second variant of the kernel."""
    signature, _ = _launch_signature(monkeypatch)
    assert signature == ADAMAX_SIGNATURE
