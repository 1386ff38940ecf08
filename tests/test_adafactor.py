"""What the table-driven tests do not reach for Adafactor: params of 3 and more dims (factored over
the last two), the step-time refusal of complex params, and torch's backend choice."""

from __future__ import annotations

import pytest
import torch

from workbench.optim import Adafactor

SHAPES = [(2, 3, 4), (1, 5, 1, 3), (6,), (4, 1), ()]


@pytest.mark.parametrize("backend", Adafactor.backends)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
def test_higher_dims_match_torch(backend: str, dtype: torch.dtype) -> None:
    if backend == "compiled":
        torch._dynamo.reset()
    torch.manual_seed(0)
    ours_params = [torch.randn(s, dtype=dtype) for s in SHAPES]
    ref_params = [p.clone() for p in ours_params]
    kwargs = {"lr": 0.3, "weight_decay": 0.1, "d": 1.2}
    ours = Adafactor(ours_params, backend=backend, **kwargs)
    ref = torch.optim.Adafactor(ref_params, foreach=backend == "foreach", **kwargs)
    for _ in range(4):
        for p, q in zip(ours_params, ref_params):
            p.grad = torch.randn_like(p)
            q.grad = p.grad.clone()
        ours.step()
        ref.step()
    for p, q in zip(ours_params, ref_params):
        torch.testing.assert_close(p, q)
        assert set(ours.state[p]) == set(ref.state[q])
        for key, value in ref.state[q].items():
            mine = ours.state[p][key]
            assert mine.shape == value.shape and mine.dtype == value.dtype, key
            torch.testing.assert_close(mine.cpu(), value, check_dtype=key != "step")


@pytest.mark.parametrize("backend", Adafactor.backends)
def test_complex_params_are_refused_before_any_update(backend: str) -> None:
    real = torch.randn(3, requires_grad=True)
    cplx = torch.randn(2, 3, dtype=torch.complex64, requires_grad=True)
    before = real.detach().clone()
    real.grad, cplx.grad = torch.ones_like(real), torch.ones_like(cplx)
    for opt in (Adafactor([real, cplx], backend=backend), torch.optim.Adafactor([cplx])):
        with pytest.raises(RuntimeError, match="Adafactor does not support complex parameters"):
            opt.step()
    assert torch.equal(real, before)


def test_backend_choice_is_torchs() -> None:
    """foreach only when asked for, whatever the device (torch keeps Adafactor's memory low)."""
    p = [torch.randn(2, 2, requires_grad=True)]
    assert Adafactor(p).resolve_backend(Adafactor(p).param_groups[0], p) == "forloop"
    opt = Adafactor(p, foreach=True)
    assert opt.resolve_backend(opt.param_groups[0], p) == "foreach"
    with pytest.raises(TypeError):
        Adafactor(p, fused=True)  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="not implemented for Adafactor"):
        Adafactor(p, backend="fused")


def test_minimal_bytes_counts_param_and_grad() -> None:
    assert Adafactor.tensors_moved() == (2, 1)
    assert Adafactor.minimal_bytes(1000, torch.float32) == 3 * 1000 * 4
