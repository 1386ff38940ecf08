"""RAdam's forloop backend is differentiable, on both sides of the rho_t > 5 switch."""

from __future__ import annotations

import pytest
import torch

from workbench.optim import RAdam


# the step is incremented first: 3 -> step 4 (rho_t 3.998, where r_t is NaN), 9 -> 10 (rho_t 9.98)
@pytest.mark.parametrize("step", [3.0, 9.0], ids=["unrectified", "rectified"])
@pytest.mark.parametrize("decoupled", [False, True], ids=["l2", "decoupled"])
def test_radam_forloop_is_differentiable(step: float, decoupled: bool) -> None:
    def one_step(p, grad, exp_avg, exp_avg_sq, lr):
        p = p.clone()
        p.grad = grad
        opt = RAdam(
            [p], lr=lr, weight_decay=0.1, decoupled_weight_decay=decoupled, differentiable=True
        )
        opt.state[p].update(
            {
                "step": torch.tensor(step, dtype=torch.float64),
                "exp_avg": exp_avg.clone(),
                "exp_avg_sq": exp_avg_sq.clone(),
            }
        )
        opt.step()
        return p, opt.state[p]["exp_avg"], opt.state[p]["exp_avg_sq"]

    torch.manual_seed(0)
    inputs = [torch.rand(6, dtype=torch.float64, requires_grad=True) for _ in range(4)]
    lr = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    # a tensor lr takes the on-device path (a select), a float lr the host path (a branch)
    assert torch.autograd.gradcheck(one_step, (*inputs, lr))
    assert torch.autograd.gradcheck(lambda *t: one_step(*t, 0.9), tuple(inputs))
