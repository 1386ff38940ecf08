"""The fused RMSprop kernel compiled ahead of time for sm_80 and sm_90, with no GPU present.

See tests/kernel_aot_checks.py for what each check means; the numbers each looked at are printed
(-s or -rP). Every layout is checked in the kernel's widest form (momentum and centered: five
tensors in, four out); the narrower ones on fp32.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests import kernel_aot_checks as aot
from workbench.optim import RMSprop
from workbench.optim._kernels import _aot
from workbench.optim._kernels import rmsprop as rmsprop_module
from workbench.optim._kernels.rmsprop import rmsprop_kernel

pytestmark = pytest.mark.skipif(aot.UNAVAILABLE is not None, reason=str(aot.UNAVAILABLE))

# The runtime parameters as launch() passes them: the pointer table, two Python ints, each float
# hyperparameter as an fp32 pair (_precise.split); lr a pointer when LR_IS_TENSOR.
SIGNATURE = {
    "meta": "*i64",
    "n_tensors": "i32",
    "n_chunks": "i32",
    **{name + suffix: "fp32" for name in ("lr", "alpha", "one_minus_alpha", "eps", "weight_decay",
                                          "momentum") for suffix in ("", "_lo")},
}  # fmt: skip
CONSTEXPRS = {"MAXIMIZE": False, "HAS_MOMENTUM": False, "CENTERED": False, "LR_IS_TENSOR": False}
WIDEST = (("HAS_MOMENTUM", True), ("CENTERED", True))

VARIANTS = aot.every_layout(WIDEST) + [
    v
    for cc in aot.CCS
    for v in (
        aot.Variant(cc, "fp32", True),  # the defaults: param, grad, square_avg
        aot.Variant(cc, "fp32", True, (("HAS_MOMENTUM", True),)),
        aot.Variant(cc, "fp32", True, (("CENTERED", True),)),
        aot.Variant(cc, "fp32", True, WIDEST + (("MAXIMIZE", True), ("LR_IS_TENSOR", True))),
    )
]


def _request(variant: aot.Variant) -> _aot.CompileRequest:
    lr_type = "*fp32" if dict(variant.flags).get("LR_IS_TENSOR") else "fp32"
    return variant.request(rmsprop_kernel, dict(SIGNATURE, lr=lr_type), CONSTEXPRS)


def _roles(variant: aot.Variant) -> tuple[int, int]:
    """(element roles loaded, stored): param, grad, square_avg in, param and square_avg out, and
    each optional buffer both ways."""
    flags = dict(variant.flags)
    extra = int(flags.get("HAS_MOMENTUM", False)) + int(flags.get("CENTERED", False))
    return 3 + extra, 2 + extra


@pytest.fixture(scope="module")
def built() -> dict[aot.Variant, Any]:
    results = _aot.compile_many([_request(v) for v in VARIANTS])
    return dict(zip(VARIANTS, results, strict=True))


@pytest.fixture
def binary(built: dict[aot.Variant, Any], request: pytest.FixtureRequest) -> _aot.GpuBinary:
    variant = request.node.callspec.params["variant"]
    return aot.compiled_binary(built[variant], variant)


@pytest.mark.parametrize("variant", aot.cases(VARIANTS))
def test_builds(variant: aot.Variant, binary: _aot.GpuBinary) -> None:
    aot.check_builds(binary, variant, _roles(variant)[1])


@pytest.mark.parametrize("variant", aot.cases(VARIANTS))
def test_access_widths(variant: aot.Variant, binary: _aot.GpuBinary) -> None:
    aot.check_accesses(binary, variant, *_roles(variant))


@pytest.mark.parametrize("variant", aot.cases(VARIANTS))
def test_fits_registers(variant: aot.Variant, binary: _aot.GpuBinary) -> None:
    aot.check_registers(binary)


@pytest.mark.parametrize(
    ("kwargs", "variant"),
    [
        ({}, aot.Variant(90, "fp32", True)),  # defaults: weight_decay=0 and momentum=0 are ints
        ({"momentum": 0.5, "centered": True}, aot.Variant(90, "fp32", True, WIDEST)),
    ],
    ids=["defaults", "momentum-centered"],
)
def test_signature_is_what_launch_passes(
    monkeypatch: pytest.MonkeyPatch, kwargs: dict, variant: aot.Variant
) -> None:
    signature, constexprs = aot.launch_signature(
        monkeypatch, rmsprop_module, "rmsprop_kernel", lambda p: RMSprop(p, fused=True, **kwargs)
    )
    request = _request(variant)
    assert signature == dict(request.signature)
    assert constexprs == set(request.constexprs)
