"""The fused SGD kernel compiled ahead of time for sm_80 and sm_90, with no GPU present.

See tests/kernel_aot_checks.py for what each check means; the numbers each looked at are printed
(-s or -rP). Every layout is checked in the kernel's widest form: momentum, and GradScaler's
grad_scale and found_inf (which write the unscaled grad back, and mask every access on an inf).
"""

from __future__ import annotations

from typing import Any

import pytest

from tests import kernel_aot_checks as aot
from workbench.optim import SGD
from workbench.optim._kernels import _aot
from workbench.optim._kernels import sgd as sgd_module
from workbench.optim._kernels.sgd import sgd_kernel

pytestmark = pytest.mark.skipif(aot.UNAVAILABLE is not None, reason=str(aot.UNAVAILABLE))

# The runtime parameters as launch() passes them: the pointer table, two Python ints, each float
# hyperparameter as an fp32 pair (_precise.split); lr a pointer when LR_IS_TENSOR.
SIGNATURE = {
    "meta": "*i64",
    "n_tensors": "i32",
    "n_chunks": "i32",
    "lr": "fp32",
    "lr_lo": "fp32",
    "momentum": "fp32",
    "momentum_lo": "fp32",
    "one_minus_dampening": "fp32",
    "one_minus_dampening_lo": "fp32",
    "weight_decay": "fp32",
    "weight_decay_lo": "fp32",
}
FLAGS = ("MAXIMIZE", "HAS_MOMENTUM", "FIRST_STEP", "NESTEROV", "LR_IS_TENSOR", "HAS_GRAD_SCALE",
         "HAS_FOUND_INF")  # fmt: skip
AMP = (("HAS_GRAD_SCALE", True), ("HAS_FOUND_INF", True))
MOMENTUM = (("HAS_MOMENTUM", True),)
NESTEROV_MAXIMIZE_LR_TENSOR = (("NESTEROV", True), ("MAXIMIZE", True), ("LR_IS_TENSOR", True))

VARIANTS = aot.every_layout(MOMENTUM + AMP) + [
    v
    for cc in aot.CCS
    for v in (
        aot.Variant(cc, "fp32", True, MOMENTUM),  # no GradScaler: the usual launch
        aot.Variant(cc, "fp32", True, MOMENTUM + (("FIRST_STEP", True),)),
        aot.Variant(cc, "fp32", True),  # no momentum: param and grad only
        aot.Variant(cc, "bf16", True, AMP),
        aot.Variant(cc, "fp32", True, MOMENTUM + NESTEROV_MAXIMIZE_LR_TENSOR),
    )
]


def _request(variant: aot.Variant) -> _aot.CompileRequest:
    flags = dict(variant.flags)
    signature = dict(SIGNATURE, lr="*fp32" if flags.get("LR_IS_TENSOR") else "fp32")
    constexprs: dict[str, Any] = dict.fromkeys(FLAGS, False)
    # an absent grad_scale / found_inf is passed as None, which Triton makes a constexpr
    for name, flag in (("grad_scale", "HAS_GRAD_SCALE"), ("found_inf", "HAS_FOUND_INF")):
        if flags.get(flag):
            signature[name] = "*fp32"
        else:
            constexprs[name] = None
    return variant.request(sgd_kernel, signature, constexprs)


def _roles(variant: aot.Variant) -> tuple[int, int]:
    """(element roles loaded, stored): param, grad, buffer (not read at its first step), and the
    grad written back unscaled under GradScaler."""
    flags = dict(variant.flags)
    momentum = flags.get("HAS_MOMENTUM", False)
    loaded = 2 + int(momentum and not flags.get("FIRST_STEP", False))
    stored = 1 + int(momentum) + int(flags.get("HAS_GRAD_SCALE", False))
    return loaded, stored


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
    """found_inf's select keeps the bounds mask uniform per 16 elements: still 16-byte accesses."""
    aot.check_accesses(binary, variant, *_roles(variant))


@pytest.mark.parametrize("variant", aot.cases(VARIANTS))
def test_fits_registers(variant: aot.Variant, binary: _aot.GpuBinary) -> None:
    aot.check_registers(binary)


@pytest.mark.parametrize(
    ("kwargs", "variant"),
    [
        ({"momentum": 0.9}, aot.Variant(90, "fp32", True, MOMENTUM + (("FIRST_STEP", True),))),
        ({}, aot.Variant(90, "fp32", True)),  # defaults: momentum=0 and weight_decay=0 are ints
    ],
    ids=["momentum-first_step", "defaults"],
)
def test_signature_is_what_launch_passes(
    monkeypatch: pytest.MonkeyPatch, kwargs: dict, variant: aot.Variant
) -> None:
    signature, constexprs = aot.launch_signature(
        monkeypatch, sgd_module, "sgd_kernel", lambda p: SGD(p, fused=True, **kwargs)
    )
    request = _request(variant)
    none_args = {name for name, value in request.constexprs.items() if value is None}
    assert signature == dict(request.signature) | dict.fromkeys(none_args, "constexpr")
    assert constexprs == set(request.constexprs) - none_args
