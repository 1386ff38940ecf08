"""The fused ASGD kernel compiled ahead of time for sm_80 and sm_90, with no GPU present.

See tests/kernel_aot_checks.py for what each check means; the numbers each looked at are printed
(-s or -rP). eta and mu are scalar roles: one narrow load each, besides the vectors.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
import triton.language as tl

from tests import kernel_aot_checks as aot
from workbench.optim import ASGD
from workbench.optim._kernels import _aot
from workbench.optim._kernels import asgd as asgd_module
from workbench.optim._kernels.asgd import asgd_kernel

pytestmark = pytest.mark.skipif(aot.UNAVAILABLE is not None, reason=str(aot.UNAVAILABLE))

# The runtime parameters as launch() passes them: the pointer table, two Python ints, floats.
SIGNATURE = {
    "meta": "*i64",
    "n_tensors": "i32",
    "n_chunks": "i32",
    "lambd": "fp32",
    "weight_decay": "fp32",
}
CONSTEXPRS = {"MAXIMIZE": False, "ETA_DTYPE": tl.float32, "MU_DTYPE": tl.float32}
# param, grad, ax (ax only once averaging has started: it is loaded in one branch)
LOADED_ROLES = 3
STORED_ROLES = 2  # param, ax

VARIANTS = aot.every_layout() + [
    aot.Variant(cc, "fp32", True, (("MAXIMIZE", True),)) for cc in aot.CCS
] + [
    # torch's default dtype set to fp64 (fp64 scalars), and eta/mu cast to the params' dtype by
    # torch's load_state_dict
    aot.Variant(90, "fp64", True, (("ETA_DTYPE", tl.float64), ("MU_DTYPE", tl.float64))),
    aot.Variant(90, "bf16", True, (("ETA_DTYPE", tl.bfloat16), ("MU_DTYPE", tl.bfloat16))),
]  # fmt: skip


@pytest.fixture(scope="module")
def built() -> dict[aot.Variant, Any]:
    requests = [v.request(asgd_kernel, SIGNATURE, CONSTEXPRS) for v in VARIANTS]
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


@pytest.mark.parametrize("variant", aot.cases(aot.every_layout()[:2]))
def test_scalar_roles_are_read_not_written(variant: aot.Variant, binary: _aot.GpuBinary) -> None:
    """eta and mu: one load each and no store (they are replaced after the launch: a program
    writing them would race with the programs of the same tensor still to read them)."""
    narrow_loads = {w: n for w, n in binary.bytes_by_width("ld").items() if w != 16}
    assert narrow_loads.get(4, 0) >= 2 * 4  # eta, mu (fp32); the table's loads are 8 bytes
    stored = sum(binary.bytes_by_width("st").values())
    assert stored == STORED_ROLES * aot.vector_bytes_per_thread(binary, variant)


def test_signature_is_what_launch_passes(monkeypatch: pytest.MonkeyPatch) -> None:
    """ASGD's default weight_decay=0 is an int: it must still launch as fp32."""
    signature, constexprs = aot.launch_signature(
        monkeypatch, asgd_module, "asgd_kernel", lambda p: ASGD(p, fused=True)
    )
    request = aot.Variant(90, "fp32", True).request(asgd_kernel, SIGNATURE, CONSTEXPRS)
    assert signature == dict(request.signature)
    assert constexprs == set(request.constexprs)
    assert torch.get_default_dtype() == torch.float32  # the scalars' dtype, ETA/MU_DTYPE above
