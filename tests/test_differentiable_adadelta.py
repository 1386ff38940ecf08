"""Adadelta's forloop is differentiable: hypergradients flow through a step."""

from __future__ import annotations

import torch

from workbench.optim import Adadelta


def test_adadelta_forloop_is_differentiable() -> None:
    """Gradients flow from the updated param and state back to param, grad, state and lr."""

    def one_step(p, grad, square_avg, acc_delta, lr):
        p = p.clone()
        p.grad = grad
        opt = Adadelta([p], lr=lr, rho=0.8, weight_decay=0.1, differentiable=True)
        opt.state[p].update(
            {"step": torch.tensor(3.0, dtype=torch.float64), "square_avg": square_avg.clone(),
             "acc_delta": acc_delta.clone()}
        )  # fmt: skip
        opt.step()
        return p, opt.state[p]["square_avg"], opt.state[p]["acc_delta"]

    torch.manual_seed(0)
    p, grad = (torch.randn(6, dtype=torch.float64, requires_grad=True) for _ in range(2))
    # the running averages of squares are positive
    square_avg, acc_delta = (torch.rand(6, dtype=torch.float64, requires_grad=True) for _ in "ab")
    inputs = (p, grad, square_avg, acc_delta)
    lr = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(one_step, (*inputs, lr))
    # and a float lr, the common case
    assert torch.autograd.gradcheck(lambda *t: one_step(*t, 0.9), inputs)
