"""Rprop's forloop is differentiable: hypergradients flow through a step."""

from __future__ import annotations

import torch

from workbench.optim import Rprop


def test_rprop_forloop_is_differentiable() -> None:
    """Gradients flow from the updated param and state back to param, grad, prev and step_size.

    The update is piecewise linear (signs pick the factors): the values are kept away from the
    kinks (signs flip at 0, step sizes clamp at step_sizes), so finite differences see one piece.
    """

    def one_step(p, grad, prev, step_size):
        p = p.clone()
        p.grad = grad
        opt = Rprop([p], etas=(0.4, 1.3), step_sizes=(1e-3, 5.0), differentiable=True)
        opt.state[p].update(
            {"step": torch.tensor(3.0), "prev": prev.clone(), "step_size": step_size.clone()}
        )
        opt.step()
        return p, opt.state[p]["prev"], opt.state[p]["step_size"]

    torch.manual_seed(0)
    p, grad, prev = (torch.randn(8, dtype=torch.float64) for _ in range(3))
    # away from 0, where a sign flips (the sign-0 case, a kink, cannot be checked numerically)
    grad, prev = (t.sign() * (t.abs() + 0.1) for t in (grad, prev))
    step_size = torch.rand(8, dtype=torch.float64) + 0.1
    inputs = [t.requires_grad_() for t in (p, grad, prev, step_size)]
    assert torch.autograd.gradcheck(one_step, tuple(inputs))
