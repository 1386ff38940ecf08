"""The fused Adam / AdamW kernel compiled ahead of time for sm_80 and sm_90, with no GPU present.

See tests/kernel_aot_checks.py for what each check means; the numbers each looked at are printed
(-s or -rP). AdamW is the DECOUPLED variant of the same kernel.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
import triton.language as tl

from tests import kernel_aot_checks as aot
from workbench.optim import Adam, AdamW
from workbench.optim._kernels import _aot
from workbench.optim._kernels import adam as adam_module
from workbench.optim._kernels.adam import adam_kernel

pytestmark = pytest.mark.skipif(aot.UNAVAILABLE is not None, reason=str(aot.UNAVAILABLE))

# The runtime parameters as launch() passes them: the pointer table, two Python ints, floats; lr
# is a pointer when LR_IS_TENSOR, and grad_scale / found_inf are pointers under GradScaler, else
# None (which Triton makes a constexpr).
SIGNATURE = {
    "meta": "*i64",
    "n_tensors": "i32",
    "n_chunks": "i32",
    "lr": "fp32",
    "one_minus_beta1": "fp32",
    "one_minus_beta2": "fp32",
    "log_beta1": "fp32",
    "log_beta2": "fp32",
    "eps": "fp32",
    "weight_decay": "fp32",
}
CONSTEXPRS = {
    "grad_scale": None,
    "found_inf": None,
    "MAXIMIZE": False,
    "DECOUPLED": False,
    "AMSGRAD": False,
    "LR_IS_TENSOR": False,
    "STEP_DTYPE": tl.float32,
}
AMP = (("AMP", True),)  # not a kernel parameter: grad_scale and found_inf given (see `request`)
AMSGRAD = (("AMSGRAD", True),)

VARIANTS = (
    aot.every_layout()
    + aot.every_layout(AMSGRAD)
    + [aot.Variant(cc, "fp32", True, (("DECOUPLED", True),)) for cc in aot.CCS]
    + [
        aot.Variant(cc, "fp32", True, (("MAXIMIZE", True), ("LR_IS_TENSOR", True)))
        for cc in aot.CCS
    ]
    + [aot.Variant(cc, d, True, AMP + AMSGRAD) for cc in aot.CCS for d in ("fp32", "bf16")]
    + [aot.Variant(90, "fp32", False, AMP)]
    + [aot.Variant(90, "fp64", True, (("STEP_DTYPE", tl.float64),))]  # default dtype fp64
)


def request(variant: aot.Variant) -> _aot.CompileRequest:
    flags = dict(variant.flags)
    signature, constexprs = dict(SIGNATURE), dict(CONSTEXPRS)
    if flags.pop("AMP", False):
        signature |= {"grad_scale": "*fp32", "found_inf": "*fp32"}
        del constexprs["grad_scale"], constexprs["found_inf"]
    if flags.get("LR_IS_TENSOR"):
        signature["lr"] = "*fp32"
    kernel_variant = variant._replace(flags=tuple(flags.items()))
    return kernel_variant.request(adam_kernel, signature, constexprs)


def roles(variant: aot.Variant) -> tuple[int, int]:
    """(roles loaded, roles stored) element by element."""
    flags = dict(variant.flags)
    loaded, stored = 4, 3  # param, grad, exp_avg, exp_avg_sq; param, exp_avg, exp_avg_sq
    if flags.get("AMSGRAD"):
        loaded, stored = loaded + 1, stored + 1  # max_exp_avg_sq
    if flags.get("AMP"):
        stored += 1  # the unscaled grad
    return loaded, stored


@pytest.fixture(scope="module")
def built() -> dict[aot.Variant, Any]:
    return dict(zip(VARIANTS, _aot.compile_many([request(v) for v in VARIANTS]), strict=True))


@pytest.fixture
def binary(built: dict[aot.Variant, Any], request: pytest.FixtureRequest) -> _aot.GpuBinary:
    variant = request.node.callspec.params["variant"]
    return aot.compiled_binary(built[variant], variant)


@pytest.mark.parametrize("variant", aot.cases(VARIANTS))
def test_builds(variant: aot.Variant, binary: _aot.GpuBinary) -> None:
    aot.check_builds(binary, variant, roles(variant)[1])


@pytest.mark.parametrize("variant", aot.cases(VARIANTS))
def test_access_widths(variant: aot.Variant, binary: _aot.GpuBinary) -> None:
    aot.check_accesses(binary, variant, *roles(variant))


@pytest.mark.parametrize("variant", aot.cases(VARIANTS))
def test_fits_registers(variant: aot.Variant, binary: _aot.GpuBinary) -> None:
    aot.check_registers(binary)


def _expected(**flags: Any) -> tuple[dict[str, str], set[str]]:
    variant = aot.Variant(90, "fp32", True, tuple(flags.items()))
    compiled = request(variant)
    return dict(compiled.signature), set(compiled.constexprs)


def _with_amp(opt: torch.optim.Optimizer) -> torch.optim.Optimizer:
    # what torch.amp.GradScaler sets around step() on optimizers with _step_supports_amp_scaling
    opt.grad_scale = torch.tensor(4.0)  # type: ignore[attr-defined]
    opt.found_inf = torch.tensor(0.0)  # type: ignore[attr-defined]
    return opt


@pytest.mark.parametrize(
    ("make", "flags"),
    [
        # Adam's default weight_decay=0 is an int: it must still launch as fp32
        (lambda p: Adam(p, fused=True), {}),
        (lambda p: Adam(p, lr=torch.tensor(0.01), amsgrad=True, maximize=True, fused=True),
         {"LR_IS_TENSOR": True, "AMSGRAD": True, "MAXIMIZE": True}),
        (lambda p: AdamW(p, fused=True), {"DECOUPLED": True}),
        (lambda p: _with_amp(Adam(p, fused=True)), {"AMP": True}),
    ],
    ids=["Adam", "Adam-lr_tensor-amsgrad-maximize", "AdamW", "Adam-GradScaler"],
)  # fmt: skip
def test_signature_is_what_launch_passes(
    monkeypatch: pytest.MonkeyPatch, make: Any, flags: dict[str, Any]
) -> None:
    signature, constexprs = aot.launch_signature(monkeypatch, adam_module, "adam_kernel", make)
    # a None argument (no GradScaler) is passed in place but compiled as a constexpr
    nones = {name for name, kind in signature.items() if kind == "constexpr"}
    expected_signature, expected_constexprs = _expected(**flags)
    assert {k: v for k, v in signature.items() if k not in nones} == expected_signature
    assert constexprs | nones == expected_constexprs
