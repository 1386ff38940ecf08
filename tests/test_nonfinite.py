"""Non-finite gradients: every backend gives what the forloop gives.

A gradient with a NaN, a +inf and a -inf in each tensor, at positions that move every step, so
that later steps meet inf and NaN in the state and the params too. Params and every state tensor
must have NaN where the forloop has NaN, the same inf where it has inf, and close finite values.
The forloop itself is torch.optim's forloop (tests/test_parity.py).
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from tests.conftest import FUSED_CPU_PATHS
from tests.optim_table import TABLE, OptimEntry, config_id

ENTRIES = [e for e in TABLE if e.side_by_side is None and not e.matrices_only]
ENTRIES = [e for e in ENTRIES if e.name != "Adafactor"]

# Per optimizer, the configs besides the default (its table entry's nonfinite_configs), and the
# backends not exact on non-finite values, with why (its nonfinite_skips).
CASES = [
    pytest.param(entry, config, id=f"{entry.name}-{config_id(config)}")
    for entry in ENTRIES
    for config in [{}, *entry.nonfinite_configs]
]
STEPS = 3


def _run(entry: OptimEntry, backend: str, config: dict[str, Any]) -> list[torch.Tensor]:
    """Params and every state tensor after STEPS steps on gradients with NaN, +inf and -inf."""
    torch.manual_seed(0)
    params = [torch.randn(37), torch.randn(5, 3)]
    opt = entry.ours(params, backend=backend, **config)
    gen = torch.Generator().manual_seed(1)
    for step in range(STEPS):
        for p in params:
            grad = torch.randn(p.shape, generator=gen)
            flat = grad.view(-1)
            flat[step], flat[step + 4], flat[step + 8] = float("nan"), float("inf"), -float("inf")
            p.grad = grad
        opt.step()
    state = [v for p in params for _, v in sorted(opt.state[p].items()) if torch.is_tensor(v)]
    return [p.detach() for p in params] + state


def _assert_same(expected: list[torch.Tensor], actual: list[torch.Tensor]) -> None:
    assert len(actual) == len(expected)
    for i, (e, a) in enumerate(zip(expected, actual, strict=True)):
        assert torch.equal(e.isnan(), a.isnan()), f"tensor {i}: NaN positions differ"
        assert torch.equal(e == torch.inf, a == torch.inf), f"tensor {i}: +inf positions differ"
        assert torch.equal(e == -torch.inf, a == -torch.inf), f"tensor {i}: -inf positions differ"
        finite = e.isfinite()
        torch.testing.assert_close(a[finite], e[finite], msg=lambda m, i=i: f"tensor {i}: {m}")


def _check(entry: OptimEntry, backend: str, config: dict[str, Any]) -> None:
    if backend not in entry.ours.backends:
        pytest.skip(f"{entry.name} has no {backend} backend")
    if backend in entry.nonfinite_skips:
        pytest.skip(entry.nonfinite_skips[backend])
    _assert_same(_run(entry, "forloop", config), _run(entry, backend, config))


@pytest.mark.parametrize(("entry", "config"), CASES)
def test_foreach_matches_forloop(entry: OptimEntry, config: dict[str, Any]) -> None:
    _check(entry, "foreach", config)


@pytest.mark.parametrize("path", FUSED_CPU_PATHS)
@pytest.mark.parametrize(("entry", "config"), CASES)
def test_fused_matches_forloop(entry: OptimEntry, config: dict[str, Any], path: str) -> None:
    # `path` only picks the kernel: the autouse fixture in conftest.py reads its mark
    _check(entry, "fused", config)


@pytest.mark.compile
@pytest.mark.parametrize("entry", ENTRIES, ids=lambda e: e.name)
def test_compiled_matches_forloop(entry: OptimEntry) -> None:
    _check(entry, "compiled", {})
