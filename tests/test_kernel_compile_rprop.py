"""The fused Rprop kernel compiled ahead of time for sm_80 and sm_90, with no GPU present.

See tests/kernel_aot_checks.py for what each check means; the numbers each looked at are printed
(-s or -rP).
"""

from __future__ import annotations

from typing import Any

import pytest

from tests import kernel_aot_checks as aot
from workbench.optim import Rprop
from workbench.optim._kernels import _aot
from workbench.optim._kernels import rprop as rprop_module
from workbench.optim._kernels.rprop import rprop_kernel

pytestmark = pytest.mark.skipif(aot.UNAVAILABLE is not None, reason=str(aot.UNAVAILABLE))

# The runtime parameters as launch() passes them: the pointer table, two Python ints, floats.
SIGNATURE = {
    "meta": "*i64",
    "n_tensors": "i32",
    "n_chunks": "i32",
    "etaminus": "fp32",
    "etaplus": "fp32",
    "step_size_min": "fp32",
    "step_size_max": "fp32",
}
CONSTEXPRS = {"MAXIMIZE": False}
LOADED_ROLES = 4  # param, grad, prev, step_size
STORED_ROLES = 3  # param, prev, step_size

VARIANTS = aot.every_layout() + [
    aot.Variant(cc, "fp32", True, (("MAXIMIZE", True),)) for cc in aot.CCS
]


@pytest.fixture(scope="module")
def built() -> dict[aot.Variant, Any]:
    requests = [v.request(rprop_kernel, SIGNATURE, CONSTEXPRS) for v in VARIANTS]
    return dict(zip(VARIANTS, _aot.compile_many(requests), strict=True))


@pytest.fixture
def binary(built: dict[aot.Variant, Any], request: pytest.FixtureRequest) -> _aot.GpuBinary:
    variant = request.node.callspec.params["variant"]
    return aot.compiled_binary(built[variant], variant)


@pytest.mark.parametrize("variant", aot.cases(VARIANTS))
def test_builds(variant: aot.Variant, binary: _aot.GpuBinary) -> None:
    aot.check_builds(binary, variant, STORED_ROLES)


@pytest.mark.parametrize("variant", aot.cases(VARIANTS))
def test_access_widths(variant: aot.Variant, binary: _aot.GpuBinary) -> None:
    aot.check_accesses(binary, variant, LOADED_ROLES, STORED_ROLES)


@pytest.mark.parametrize("variant", aot.cases(VARIANTS))
def test_fits_registers(variant: aot.Variant, binary: _aot.GpuBinary) -> None:
    aot.check_registers(binary)


def test_signature_is_what_launch_passes(monkeypatch: pytest.MonkeyPatch) -> None:
    """The default step_sizes=(1e-6, 50) holds an int: it must still launch as fp32."""
    signature, constexprs = aot.launch_signature(
        monkeypatch, rprop_module, "rprop_kernel", lambda p: Rprop(p, fused=True)
    )
    request = aot.Variant(90, "fp32", True).request(rprop_kernel, SIGNATURE, CONSTEXPRS)
    assert signature == dict(request.signature)
    assert constexprs == set(request.constexprs)
