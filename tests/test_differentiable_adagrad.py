"""Adagrad's forloop backend with differentiable=True: gradients flow from the updated param and
sum back to param, grad, sum and lr."""

from __future__ import annotations

import torch

from workbench.optim import Adagrad

KWARGS = {"lr_decay": 0.1, "weight_decay": 0.1, "maximize": True}


def _one_step(cls: type, p, grad, state_sum, lr):
    p = p.clone()
    p.grad = grad
    opt = cls([p], lr=lr, differentiable=True, **KWARGS)
    opt.state[p].update({"step": torch.tensor(3.0), "sum": state_sum.clone()})
    opt.step()
    return p, opt.state[p]["sum"]


def _inputs() -> tuple[torch.Tensor, ...]:
    torch.manual_seed(0)
    tensors = [torch.rand(6, dtype=torch.float64, requires_grad=True) for _ in range(3)]
    return (*tensors, torch.tensor(0.3, dtype=torch.float64, requires_grad=True))


def test_adagrad_forloop_is_differentiable() -> None:
    assert torch.autograd.gradcheck(lambda *t: _one_step(Adagrad, *t), _inputs())
    # a float lr, the common case
    assert torch.autograd.gradcheck(lambda *t: _one_step(Adagrad, *t, 0.3), _inputs()[:3])


def test_adagrad_gradients_match_torch() -> None:
    """torch's differentiable Adagrad reads a tensor lr as a number (no hypergradient for it); the
    gradients for param, grad and sum are the same."""
    *tensors, lr = _inputs()
    grads = []
    for cls in (Adagrad, torch.optim.Adagrad):
        outputs = _one_step(cls, *tensors, lr.detach())
        weights = torch.Generator().manual_seed(1)
        total = sum(
            (o * torch.rand(o.shape, generator=weights, dtype=o.dtype)).sum() for o in outputs
        )
        grads.append(torch.autograd.grad(total, tensors))
    for ours, theirs in zip(*grads):
        torch.testing.assert_close(ours, theirs)
