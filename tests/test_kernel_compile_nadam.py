"""NAdam's fused kernels compiled ahead of time for sm_80 and sm_90, with no GPU present.

See tests/kernel_aot_checks.py for what each check means: every variant builds to PTX and a cubin,
aligned launches move param, grad and state in 16-byte accesses, nothing spills and a thread fits
in 128 registers at launch()'s warps, and the signatures compiled here are what a step passes.
Both kernels are covered: the element kernel and the small one that advances step and mu_product.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
import triton.language as tl

from tests import kernel_aot_checks as aot
from workbench.optim import NAdam
from workbench.optim._kernels import _aot
from workbench.optim._kernels import nadam as nadam_module
from workbench.optim._kernels.nadam import SCALAR_BLOCK, nadam_kernel, nadam_scalars_kernel

pytestmark = pytest.mark.skipif(aot.UNAVAILABLE is not None, reason=str(aot.UNAVAILABLE))

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
CONSTEXPRS = {
    "MAXIMIZE": False,
    "DECOUPLED": False,
    "LR_IS_TENSOR": False,
    "STEP_DTYPE": tl.float32,
    "MU_DTYPE": tl.float32,
}
SCALARS_SIGNATURE = {"meta": "*i64", "n_tensors": "i32", "beta1": "fp32", "md_log2_096": "fp32"}
FLAGS = (("MAXIMIZE", True), ("DECOUPLED", True), ("LR_IS_TENSOR", True))
FP64_STEP = (("STEP_DTYPE", tl.float64), ("MU_DTYPE", tl.float64))  # torch's default dtype fp64

ELEMENT = (
    aot.every_layout()
    + [aot.Variant(cc, "fp32", True, FLAGS) for cc in aot.CCS]
    + [aot.Variant(90, "fp64", True, FP64_STEP)]
)
# The scalars kernel has no element roles: its variants differ in target and step dtype only.
SCALARS = [aot.Variant(cc, "fp32", True, s) for cc in aot.CCS for s in ((), FP64_STEP)]


def element_request(variant: aot.Variant) -> _aot.CompileRequest:
    lr_is_tensor = dict(variant.flags).get("LR_IS_TENSOR", False)
    signature = dict(SIGNATURE, lr="*fp32" if lr_is_tensor else "fp32")
    return variant.request(nadam_kernel, signature, CONSTEXPRS)


def scalars_request(variant: aot.Variant) -> _aot.CompileRequest:
    step_dtype = dict(variant.flags).get("STEP_DTYPE", tl.float32)
    constexprs = {"STEP_DTYPE": step_dtype, "MU_DTYPE": step_dtype, "BLOCK": SCALAR_BLOCK}
    return _aot.CompileRequest(nadam_scalars_kernel, SCALARS_SIGNATURE, constexprs, variant.cc)


@pytest.fixture(scope="module")
def built() -> dict[tuple[str, aot.Variant], Any]:
    """Every variant of both kernels, compiled once (in one fresh process when interpreted)."""
    keys = [("element", v) for v in ELEMENT] + [("scalars", v) for v in SCALARS]
    requests = [element_request(v) for v in ELEMENT] + [scalars_request(v) for v in SCALARS]
    return dict(zip(keys, _aot.compile_many(requests), strict=True))


def _binary(built: dict, kernel: str, request: pytest.FixtureRequest) -> _aot.GpuBinary:
    variant = request.node.callspec.params["variant"]
    return aot.compiled_binary(built[kernel, variant], variant)


@pytest.fixture
def binary(built: dict, request: pytest.FixtureRequest) -> _aot.GpuBinary:
    return _binary(built, "element", request)


@pytest.fixture
def scalars_binary(built: dict, request: pytest.FixtureRequest) -> _aot.GpuBinary:
    return _binary(built, "scalars", request)


@pytest.mark.parametrize("variant", aot.cases(ELEMENT))
def test_compiles_without_spills(variant: aot.Variant, binary: _aot.GpuBinary) -> None:
    aot.check_builds(binary, variant, STORED_ROLES)
    aot.check_registers(binary)


@pytest.mark.parametrize("variant", aot.cases(SCALARS))
def test_scalars_kernel_compiles_without_spills(
    variant: aot.Variant, scalars_binary: _aot.GpuBinary
) -> None:
    assert scalars_binary.asm["cubin"][:4] == b"\x7fELF"
    assert f".target sm_{variant.cc}" in scalars_binary.ptx
    aot.check_registers(scalars_binary)


@pytest.mark.parametrize("variant", aot.cases(ELEMENT))
def test_each_state_element_is_stored_once(variant: aot.Variant, binary: _aot.GpuBinary) -> None:
    aot.check_accesses(binary, variant, LOADED_ROLES, STORED_ROLES)


@pytest.mark.parametrize("lr_is_tensor", [False, True], ids=["lr_float", "lr_tensor"])
def test_signatures_are_what_a_step_passes(
    monkeypatch: pytest.MonkeyPatch, lr_is_tensor: bool
) -> None:
    # the defaults: weight_decay=0 is a Python int and must still launch as fp32
    lr = torch.tensor(1e-3) if lr_is_tensor else 2e-3

    def make(params: list[torch.Tensor]) -> NAdam:
        return NAdam(params, lr=lr, backend="fused")

    fp32 = aot.Variant(90, "fp32", True, (("LR_IS_TENSOR", lr_is_tensor),))
    for kernel, expected in (
        ("nadam_kernel", element_request(fp32)),
        ("nadam_scalars_kernel", scalars_request(fp32)),
    ):
        with monkeypatch.context() as patch:
            signature, constexprs = aot.launch_signature(patch, nadam_module, kernel, make)
        assert signature == dict(expected.signature), kernel
        assert constexprs == set(expected.constexprs), kernel
