"""NAdam's fused kernels compiled ahead of time for sm_80 and sm_90, with no GPU present.

As tests/test_kernel_compile.py does for Adamax: every variant builds to PTX and a cubin, aligned
launches move param, grad and state in 16-byte accesses, nothing spills and a thread fits in 128
registers at launch()'s warps, and the signatures compiled here are what a step passes. Both
kernels are covered: the element kernel and the small one that advances step and mu_product.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import pytest
import torch
import triton
import triton.language as tl

from workbench.optim import NAdam
from workbench.optim._kernels import _aot
from workbench.optim._kernels import nadam as nadam_module
from workbench.optim._kernels._multi_tensor import GPU_BLOCK, launch_num_warps
from workbench.optim._kernels.nadam import SCALAR_BLOCK, nadam_kernel, nadam_scalars_kernel

_UNAVAILABLE = _aot.unavailable_reason()
pytestmark = pytest.mark.skipif(_UNAVAILABLE is not None, reason=str(_UNAVAILABLE))

CCS = (80, 90)
DTYPES = {"fp32": tl.float32, "bf16": tl.bfloat16, "fp16": tl.float16, "fp64": tl.float64}
TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16,
                "fp64": torch.float64}  # fmt: skip
ELEMENT_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2, "fp64": 8}
REGISTER_BUDGET = 128
LOADED_ROLES = 4  # param, grad, exp_avg, exp_avg_sq (step and mu_product are scalars)
STORED_ROLES = 3  # param, exp_avg, exp_avg_sq

# The runtime parameters as launch() passes them: the int64 pointer table, Python ints and floats;
# lr is a tensor ("*fp32") when LR_IS_TENSOR.
SIGNATURE = {
    "meta": "*i64",
    "n_tensors": "i32",
    "n_chunks": "i32",
    "lr": "fp32",
    "beta1": "fp32",
    "one_minus_beta1": "fp32",
    "one_minus_beta2": "fp32",
    "log2_beta2": "fp32",
    "md_log2_096": "fp32",
    "eps": "fp32",
    "weight_decay": "fp32",
}
SCALARS_SIGNATURE = {"meta": "*i64", "n_tensors": "i32", "beta1": "fp32", "md_log2_096": "fp32"}


class Variant(NamedTuple):
    kernel: str  # "nadam" or "scalars"
    cc: int
    dtype: str = "fp32"
    aligned: bool = True
    maximize: bool = False
    decoupled: bool = False
    lr_is_tensor: bool = False
    step_dtype: str = "fp32"

    @property
    def id(self) -> str:
        if self.kernel == "scalars":
            return f"scalars-sm{self.cc}-step_{self.step_dtype}"
        flags = [f"sm{self.cc}", self.dtype, "aligned" if self.aligned else "unaligned"]
        flags += ["maximize"] * self.maximize + ["decoupled"] * self.decoupled
        flags += ["lr_tensor"] * self.lr_is_tensor
        return "-".join(flags + ([f"step_{self.step_dtype}"] if self.step_dtype != "fp32" else []))

    def request(self) -> _aot.CompileRequest:
        scalar = DTYPES[self.step_dtype]
        if self.kernel == "scalars":
            constexprs = {"STEP_DTYPE": scalar, "MU_DTYPE": scalar, "BLOCK": SCALAR_BLOCK}
            return _aot.CompileRequest(nadam_scalars_kernel, SCALARS_SIGNATURE, constexprs, self.cc)
        signature = dict(SIGNATURE, lr="*fp32" if self.lr_is_tensor else "fp32")
        constexprs: dict[str, Any] = {
            "MAXIMIZE": self.maximize,
            "DECOUPLED": self.decoupled,
            "LR_IS_TENSOR": self.lr_is_tensor,
            "STEP_DTYPE": scalar,
            "MU_DTYPE": scalar,
            "DTYPE": DTYPES[self.dtype],
            "ALIGNED": self.aligned,
            "BLOCK": GPU_BLOCK,
        }
        num_warps = launch_num_warps(TORCH_DTYPES[self.dtype], self.aligned)
        return _aot.CompileRequest(nadam_kernel, signature, constexprs, self.cc, num_warps)


BASE = [Variant("nadam", cc, d, a) for cc in CCS for d in DTYPES for a in (True, False)]
FLAGS = [
    *(Variant("nadam", cc, maximize=True, decoupled=True, lr_is_tensor=True) for cc in CCS),
    Variant("nadam", 90, "fp64", step_dtype="fp64"),  # torch's default dtype set to fp64
]
SCALARS = [Variant("scalars", cc, step_dtype=s) for cc in CCS for s in ("fp32", "fp64")]
ELEMENT = BASE + FLAGS


@pytest.fixture(scope="module")
def built() -> dict[Variant, Any]:
    """Every variant, compiled once (in one fresh process when the kernels are interpreted)."""
    variants = ELEMENT + SCALARS
    return dict(zip(variants, _aot.compile_many([v.request() for v in variants]), strict=True))


@pytest.fixture
def binary(built: dict[Variant, Any], request: pytest.FixtureRequest) -> _aot.GpuBinary:
    variant: Variant = request.node.callspec.params["variant"]
    result = built[variant]
    if isinstance(result, _aot.AotCompileError):
        raise result
    loads, stores = dict(result.bytes_by_width("ld")), dict(result.bytes_by_width("st"))
    print(
        f"{variant.id}: {result.n_regs} registers, {result.stack_bytes} B stack, "
        f"{result.num_warps} warps; bytes by access width: loads {loads} stores {stores}"
    )
    return result


def cases(variants: list[Variant]) -> list[Any]:
    return [pytest.param(v, id=v.id) for v in variants]


def per_thread(binary: _aot.GpuBinary, variant: Variant) -> int:
    """Bytes of one role's vector that one thread moves."""
    return GPU_BLOCK // binary.threads * ELEMENT_BYTES[variant.dtype]


@pytest.mark.parametrize("variant", cases(ELEMENT + SCALARS))
def test_compiles_without_spills(variant: Variant, binary: _aot.GpuBinary) -> None:
    assert binary.asm["cubin"][:4] == b"\x7fELF"
    assert f".target sm_{variant.cc}" in binary.ptx
    assert binary.stack_bytes == 0 and binary.local_bytes == 0, "spills"
    assert binary.n_regs <= REGISTER_BUDGET


@pytest.mark.parametrize("variant", cases(ELEMENT))
def test_each_state_element_is_stored_once(variant: Variant, binary: _aot.GpuBinary) -> None:
    stored = binary.bytes_by_width("st")
    assert sum(stored.values()) == STORED_ROLES * per_thread(binary, variant)
    if variant.aligned:
        assert binary.bytes_by_width("ld")[16] == LOADED_ROLES * per_thread(binary, variant)
        assert set(stored) == {16}
    else:
        assert set(stored) == {ELEMENT_BYTES[variant.dtype]}
        assert 16 not in binary.bytes_by_width("ld")


# ---- the signatures above are what a step passes ----------------------------------------------


class _RecordingKernel:
    """Stands in for a kernel: records what the launch passes instead of running it."""

    def __init__(self) -> None:
        self.calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = []

    def __getitem__(self, grid: tuple[int, ...]) -> Any:
        return lambda *args, **kwargs: self.calls.append((args, kwargs))


def _signature(kernel: Any, call: tuple[tuple[Any, ...], dict[str, Any]]) -> tuple[dict, set]:
    args, constexprs = call
    mangle = triton.runtime.jit.mangle_type
    names = set(constexprs) - {"num_warps"}  # a launch option on a GPU, not a constexpr
    return {n: mangle(a) for n, a in zip(kernel.arg_names, args, strict=False)}, names


@pytest.mark.parametrize("lr_is_tensor", [False, True], ids=["lr_float", "lr_tensor"])
def test_signatures_are_what_a_step_passes(
    monkeypatch: pytest.MonkeyPatch, lr_is_tensor: bool
) -> None:
    if getattr(triton.runtime.jit, "mangle_type", None) is None:
        pytest.skip(f"triton {triton.__version__} has no triton.runtime.jit.mangle_type")
    recorders = {"nadam_kernel": _RecordingKernel(), "nadam_scalars_kernel": _RecordingKernel()}
    for name, recorder in recorders.items():
        monkeypatch.setattr(nadam_module, name, recorder)
    device = "cuda" if torch.cuda.is_available() else "cpu"  # CPU: under the interpreter
    param = torch.nn.Parameter(torch.randn(10, device=device))
    param.grad = torch.randn(10, device=device)
    # the defaults: weight_decay=0 is a Python int and must still launch as fp32
    lr = torch.tensor(1e-3) if lr_is_tensor else 2e-3
    NAdam([param], lr=lr, backend="fused").step()

    (call,) = recorders["nadam_kernel"].calls
    request = Variant("nadam", 90, lr_is_tensor=lr_is_tensor).request()
    assert _signature(nadam_kernel, call) == (dict(request.signature), set(request.constexprs))
    (call,) = recorders["nadam_scalars_kernel"].calls
    request = Variant("scalars", 90).request()
    assert _signature(nadam_scalars_kernel, call) == (
        dict(request.signature),
        set(request.constexprs),
    )
