"""RAdam's fused kernel compiled ahead of time for sm_80 and sm_90, with no GPU present.

See tests/kernel_aot_checks.py for what each check means: every variant builds to PTX and a cubin,
aligned launches move param, grad and state in 16-byte accesses, nothing spills and a thread fits
in 128 registers at launch()'s warps, and the signature compiled here is what a step passes. The
rho_t > 5 switch is a select on a per-program scalar: it must not cost a second pass over the
elements (the role counts below would catch one).
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
import triton.language as tl

from tests import kernel_aot_checks as aot
from workbench.optim import RAdam
from workbench.optim._kernels import _aot
from workbench.optim._kernels import radam as radam_module
from workbench.optim._kernels.radam import radam_kernel

pytestmark = pytest.mark.skipif(aot.UNAVAILABLE is not None, reason=str(aot.UNAVAILABLE))

LOADED_ROLES = 4  # param, grad, exp_avg, exp_avg_sq (the step is one scalar)
STORED_ROLES = 3  # param, exp_avg, exp_avg_sq

# The runtime parameters as launch() passes them: the int64 pointer table, Python ints and floats;
# lr is a tensor ("*fp32") when LR_IS_TENSOR.
SIGNATURE = {
    "meta": "*i64",
    "n_tensors": "i32",
    "n_chunks": "i32",
    "lr": "fp32",
    "one_minus_beta1": "fp32",
    "one_minus_beta2": "fp32",
    "log2_beta1": "fp32",
    "log2_beta2": "fp32",
    "eps": "fp32",
    "weight_decay": "fp32",
}
CONSTEXPRS = {
    "MAXIMIZE": False,
    "DECOUPLED": False,
    "LR_IS_TENSOR": False,
    "STEP_DTYPE": tl.float32,
}
FLAGS = (("MAXIMIZE", True), ("DECOUPLED", True), ("LR_IS_TENSOR", True))

VARIANTS = (
    aot.every_layout()
    + [aot.Variant(cc, "fp32", True, FLAGS) for cc in aot.CCS]
    + [aot.Variant(90, "fp64", True, (("STEP_DTYPE", tl.float64),))]  # default dtype fp64
)


def request(variant: aot.Variant) -> _aot.CompileRequest:
    lr_is_tensor = dict(variant.flags).get("LR_IS_TENSOR", False)
    signature = dict(SIGNATURE, lr="*fp32" if lr_is_tensor else "fp32")
    return variant.request(radam_kernel, signature, CONSTEXPRS)


@pytest.fixture(scope="module")
def built() -> dict[aot.Variant, Any]:
    """Every variant, compiled once (in one fresh process when the kernels are interpreted)."""
    return dict(zip(VARIANTS, _aot.compile_many([request(v) for v in VARIANTS]), strict=True))


@pytest.fixture
def binary(built: dict[aot.Variant, Any], request: pytest.FixtureRequest) -> _aot.GpuBinary:
    variant = request.node.callspec.params["variant"]
    return aot.compiled_binary(built[variant], variant)


@pytest.mark.parametrize("variant", aot.cases(VARIANTS))
def test_compiles_without_spills(variant: aot.Variant, binary: _aot.GpuBinary) -> None:
    aot.check_builds(binary, variant, STORED_ROLES)
    aot.check_registers(binary)


@pytest.mark.parametrize("variant", aot.cases(VARIANTS))
def test_each_state_element_is_stored_once(variant: aot.Variant, binary: _aot.GpuBinary) -> None:
    aot.check_accesses(binary, variant, LOADED_ROLES, STORED_ROLES)


@pytest.mark.parametrize("lr_is_tensor", [False, True], ids=["lr_float", "lr_tensor"])
def test_signature_is_what_a_step_passes(
    monkeypatch: pytest.MonkeyPatch, lr_is_tensor: bool
) -> None:
    # the defaults: weight_decay=0 is a Python int and must still launch as fp32
    lr = torch.tensor(1e-3) if lr_is_tensor else 1e-3
    signature, constexprs = aot.launch_signature(
        monkeypatch, radam_module, "radam_kernel", lambda p: RAdam(p, lr=lr, backend="fused")
    )
    expected = request(aot.Variant(90, "fp32", True, (("LR_IS_TENSOR", lr_is_tensor),)))
    assert signature == dict(expected.signature)
    assert constexprs == set(expected.constexprs)
