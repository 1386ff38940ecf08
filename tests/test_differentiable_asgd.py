"""ASGD's forloop is differentiable: hypergradients flow through a step."""

from __future__ import annotations

import pytest
import torch

from workbench.optim import ASGD


@pytest.mark.parametrize("capturable", [False, True], ids=["eta_on_host", "eta_on_device"])
def test_asgd_forloop_is_differentiable(capturable: bool) -> None:
    """Gradients flow from the updated param, average and eta back to param, grad, average, lr
    and (where it stays a tensor) the previous eta. mu = 0.5: the average is past t0."""

    def one_step(p, grad, ax, eta, lr):
        p = p.clone()
        p.grad = grad
        opt = ASGD(
            [p], lr=lr, lambd=0.1, t0=1, weight_decay=0.1, differentiable=True,
            capturable=capturable,
        )  # fmt: skip
        opt.state[p].update(
            {"step": torch.tensor(3.0), "eta": eta.clone(), "mu": torch.tensor(0.5),
             "ax": ax.clone()}
        )  # fmt: skip
        opt.step()
        return p, opt.state[p]["ax"], opt.state[p]["eta"]

    torch.manual_seed(0)
    inputs = [torch.randn(6, dtype=torch.float64, requires_grad=True) for _ in range(3)]
    eta = torch.tensor(0.3, dtype=torch.float64, requires_grad=capturable)
    lr = torch.tensor(0.2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(one_step, (*inputs, eta, lr))
    # and a float lr, the common case
    assert torch.autograd.gradcheck(lambda *t: one_step(*t, 0.9), (*inputs, eta))
