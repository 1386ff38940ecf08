"""The fused Adadelta kernel compiled ahead of time for sm_80 and sm_90, with no GPU present.

See tests/kernel_aot_checks.py for what each check means; the numbers each looked at are printed
(-s or -rP).
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
import triton.language as tl

from tests import kernel_aot_checks as aot
from workbench.optim import Adadelta
from workbench.optim._kernels import _aot
from workbench.optim._kernels import adadelta as adadelta_module
from workbench.optim._kernels.adadelta import adadelta_kernel

pytestmark = pytest.mark.skipif(aot.UNAVAILABLE is not None, reason=str(aot.UNAVAILABLE))

# The runtime parameters as launch() passes them: the pointer table, two Python ints, Python
# floats; lr is a tensor ("*fp32") when LR_IS_TENSOR.
SIGNATURE = {
    "meta": "*i64",
    "n_tensors": "i32",
    "n_chunks": "i32",
    "lr": "fp32",
    "rho": "fp32",
    "one_minus_rho": "fp32",
    "eps": "fp32",
    "weight_decay": "fp32",
}
CONSTEXPRS = {"MAXIMIZE": False, "LR_IS_TENSOR": False}
LOADED_ROLES = 4  # param, grad, square_avg, acc_delta
STORED_ROLES = 3  # param, square_avg, acc_delta

DEFAULT = aot.every_layout()
FLAGS = [
    aot.Variant(cc, "fp32", True, (("MAXIMIZE", True), ("LR_IS_TENSOR", True))) for cc in aot.CCS
]


def _signature(variant: aot.Variant) -> dict[str, str]:
    return dict(SIGNATURE, lr="*fp32" if dict(variant.flags).get("LR_IS_TENSOR") else "fp32")


@pytest.fixture(scope="module")
def built() -> dict[aot.Variant, Any]:
    variants = DEFAULT + FLAGS
    requests = [v.request(adadelta_kernel, _signature(v), CONSTEXPRS) for v in variants]
    return dict(zip(variants, _aot.compile_many(requests), strict=True))


@pytest.fixture
def binary(built: dict[aot.Variant, Any], request: pytest.FixtureRequest) -> _aot.GpuBinary:
    variant = request.node.callspec.params["variant"]
    return aot.compiled_binary(built[variant], variant)


@pytest.mark.parametrize("variant", aot.cases(DEFAULT + FLAGS))
def test_builds(variant: aot.Variant, binary: _aot.GpuBinary) -> None:
    aot.check_builds(binary, variant, STORED_ROLES)


@pytest.mark.parametrize("variant", aot.cases(DEFAULT + FLAGS))
def test_access_widths(variant: aot.Variant, binary: _aot.GpuBinary) -> None:
    aot.check_accesses(binary, variant, LOADED_ROLES, STORED_ROLES)


@pytest.mark.parametrize("variant", aot.cases(DEFAULT + FLAGS))
def test_fits_registers(variant: aot.Variant, binary: _aot.GpuBinary) -> None:
    aot.check_registers(binary)


@pytest.mark.parametrize("lr", [0.5, 1, torch.tensor(0.5)], ids=["float", "int", "tensor"])
def test_signature_is_what_launch_passes(monkeypatch: pytest.MonkeyPatch, lr: Any) -> None:
    """An int lr or weight_decay (the defaults) still launches as fp32: one compiled variant."""
    signature, constexprs = aot.launch_signature(
        monkeypatch, adadelta_module, "adadelta_kernel", lambda p: Adadelta(p, lr=lr, fused=True)
    )
    lr_is_tensor = isinstance(lr, torch.Tensor)
    variant = aot.Variant(90, "fp32", True, (("LR_IS_TENSOR", lr_is_tensor),))
    request = variant.request(adadelta_kernel, _signature(variant), CONSTEXPRS)
    assert signature == dict(request.signature)
    assert constexprs == set(request.constexprs)
    assert tl.float32 == request.constexprs["DTYPE"]
