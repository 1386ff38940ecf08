"""Muon beyond the table-driven tests: its refusals of params, its orthogonalisation, and the one
place where it parts from torch.optim.Muon on purpose (bf16 params without Nesterov)."""

from __future__ import annotations

import pytest
import torch

from workbench.optim import Muon, _backends
from workbench.optim.muon import lr_ratio, orthogonalize


def _with_grad(*shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    p = torch.randn(shape, dtype=dtype, requires_grad=True)
    p.grad = torch.randn_like(p)
    return p


@pytest.mark.parametrize("shape", [(), (3,), (2, 3, 4), (1, 1, 1, 1)])
def test_params_that_are_not_matrices_are_refused_like_torch(shape: tuple[int, ...]) -> None:
    message = (
        r"Muon only supports 2D parameters whereas we found a parameter with size: torch\.Size"
    )
    for cls in (torch.optim.Muon, Muon):
        with pytest.raises(ValueError, match=message):
            cls([_with_grad(2, 3), torch.randn(shape, requires_grad=True)])


def test_complex_params_are_refused_before_any_update() -> None:
    real, complex_ = _with_grad(2, 3), _with_grad(2, 3, dtype=torch.complex64)
    before = real.detach().clone()
    for cls in (torch.optim.Muon, Muon):
        opt = cls([real, complex_])
        with pytest.raises(RuntimeError, match="Muon does not support complex parameters"):
            opt.step()
        assert torch.equal(real, before)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"ns_steps": 100}, "Number of steps must be less than 100"),
        ({"ns_coefficients": (1.0, 2.0)}, "Coefficients must be a tuple of exactly 3 values"),
    ],
)
def test_newton_schulz_settings_are_refused_at_the_step_like_torch(kwargs, message) -> None:
    for cls in (torch.optim.Muon, Muon):
        opt = cls([_with_grad(3, 2)], **kwargs)  # accepted here, as torch accepts them
        with pytest.raises(ValueError, match=message):
            opt.step()


@pytest.mark.parametrize("shape", [(16, 16), (24, 8), (8, 24)])
def test_orthogonalize_gives_bf16_singular_values_near_one(shape: tuple[int, int]) -> None:
    torch.manual_seed(0)
    g = torch.randn(shape, dtype=torch.float64)
    o = orthogonalize(g, (3.4445, -4.7750, 2.0315), 5, 1e-7)
    assert o.dtype == torch.bfloat16 and o.shape == g.shape
    s = torch.linalg.svdvals(o.double())
    # Keller Jordan's quintic drives them into about (0.7, 1.2), not exactly to 1
    assert s.min() > 0.5 and s.max() < 1.5


def test_orthogonalize_leaves_its_input_alone() -> None:
    g = torch.randn(4, 6).bfloat16()
    before = g.clone()
    orthogonalize(g, (3.4445, -4.7750, 2.0315), 5, 1e-7)
    assert torch.equal(g, before)


@pytest.mark.parametrize(
    ("fn", "shape", "ratio"),
    [
        (None, (8, 2), 2.0),  # sqrt(max(1, A / B))
        ("original", (2, 8), 1.0),
        ("match_rms_adamw", (9, 25), 1.0),  # 0.2 * sqrt(max(A, B))
        ("match_rms_adamw", (100, 4), 2.0),
        ("spectral_unclamped", (8, 2), 2.0),  # sqrt(A / B): as "original" for tall ones,
        ("spectral_unclamped", (2, 8), 0.5),  # below 1 for wide ones
    ],
)
def test_adjust_lr_fn(fn: str | None, shape: tuple[int, int], ratio: float) -> None:
    assert lr_ratio(fn, torch.Size(shape)) == pytest.approx(ratio)
    # and in a step: no momentum, no decay, a zero-free grad; the update is lr * ratio * O
    p = _with_grad(*shape, dtype=torch.float64)
    before = p.detach().clone()
    Muon([p], lr=0.1, momentum=0.0, weight_decay=0.0, adjust_lr_fn=fn).step()
    o = orthogonalize(p.grad, (3.4445, -4.7750, 2.0315), 5, 1e-7).double()
    torch.testing.assert_close(before - p.detach(), 0.1 * ratio * o)


def test_bf16_momentum_without_nesterov_stays_an_average() -> None:
    """torch 2.13 orthogonalises ``buf.bfloat16()``, which for a bf16 buffer is the buffer itself,
    and divides it by its norm in place: its bf16 momentum without Nesterov is renormalised at
    every step. Ours orthogonalises a copy, so the buffer is the documented average; the update
    of the first step, from the same buffer, is torch's bit for bit."""
    torch.manual_seed(0)
    ours_p = torch.randn(6, 4, dtype=torch.bfloat16, requires_grad=True)
    ref_p = ours_p.detach().clone().requires_grad_()
    ours = Muon([ours_p], nesterov=False, momentum=0.9)
    ref = torch.optim.Muon([ref_p], nesterov=False, momentum=0.9)
    grad = torch.randn(6, 4).bfloat16()
    ours_p.grad, ref_p.grad = grad.clone(), grad.clone()
    ours.step()
    ref.step()
    assert torch.equal(ours_p, ref_p)
    expected = torch.zeros_like(grad).lerp_(grad, 0.1)
    assert torch.equal(ours.state[ours_p]["momentum_buffer"], expected)
    assert not torch.equal(ref.state[ref_p]["momentum_buffer"], expected)  # torch's rescaling


def test_default_backend_falls_back_to_forloop_where_foreach_is_missing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    p = [_with_grad(3, 2)]
    opt = Muon(p)
    assert opt.resolve_backend(opt.param_groups[0], p) == "forloop"  # CPU, like torch
    # CUDA params: torch's rule says foreach, which ours has (batched Newton-Schulz) ...
    monkeypatch.setattr(_backends, "default_backend", lambda *args: "foreach")
    assert opt.resolve_backend(opt.param_groups[0], p) == "foreach"
    # ... and an optimizer without one steps per tensor
    monkeypatch.setattr(Muon, "backends", ("forloop", "compiled"))
    assert opt.resolve_backend(opt.param_groups[0], p) == "forloop"
    with pytest.raises(TypeError):
        Muon(p, foreach=True)  # as torch.optim.Muon, it takes no foreach


def test_foreach_batches_equal_shapes_into_one_chain(monkeypatch: pytest.MonkeyPatch) -> None:
    from workbench.optim import muon

    calls: list[int] = []
    real = muon.orthogonalize_batch

    def counting(updates, *args):
        calls.append(len(updates))
        return real(updates, *args)

    monkeypatch.setattr(muon, "orthogonalize_batch", counting)
    params = [_with_grad(4, 3), _with_grad(3, 4), _with_grad(4, 3), _with_grad(4, 3)]
    Muon(params, backend="foreach").step()
    assert sorted(calls) == [1, 3]
