"""NAdam's forloop backend is differentiable: gradients reach param, grad, state and lr."""

from __future__ import annotations

import pytest
import torch

from workbench.optim import NAdam


@pytest.mark.parametrize("decoupled", [False, True], ids=["l2", "decoupled"])
def test_nadam_forloop_is_differentiable(decoupled: bool) -> None:
    def one_step(p, grad, exp_avg, exp_avg_sq, lr):
        p = p.clone()
        p.grad = grad
        opt = NAdam(
            [p], lr=lr, weight_decay=0.1, decoupled_weight_decay=decoupled, differentiable=True
        )
        opt.state[p].update(
            {
                "step": torch.tensor(3.0, dtype=torch.float64),
                "mu_product": torch.tensor(0.3, dtype=torch.float64),
                "exp_avg": exp_avg.clone(),
                "exp_avg_sq": exp_avg_sq.clone(),
            }
        )
        opt.step()
        return p, opt.state[p]["exp_avg"], opt.state[p]["exp_avg_sq"]

    torch.manual_seed(0)
    inputs = [torch.rand(6, dtype=torch.float64, requires_grad=True) for _ in range(4)]
    lr = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    # a tensor lr takes the on-device path, a float lr (the common case) the host path
    assert torch.autograd.gradcheck(one_step, (*inputs, lr))
    assert torch.autograd.gradcheck(lambda *t: one_step(*t, 0.9), tuple(inputs))
