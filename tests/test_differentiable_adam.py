"""Adam's forloop (AdamW's too: the same function) is differentiable: hypergradients flow through
a step, on the host path (float hyperparameters) and on the device path (tensor lr and betas)."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from workbench.optim import Adam, AdamW

CASES = [
    pytest.param(Adam, {"weight_decay": 0.1}, id="Adam-l2"),
    pytest.param(Adam, {"weight_decay": 0.1, "amsgrad": True, "maximize": True}, id="Adam-amsgrad"),
    pytest.param(AdamW, {"weight_decay": 0.1}, id="AdamW"),
    pytest.param(AdamW, {"weight_decay": 0.1, "amsgrad": True}, id="AdamW-amsgrad"),
]


@pytest.mark.parametrize(("cls", "config"), CASES)
def test_adam_forloop_is_differentiable(cls: type[Adam], config: dict[str, Any]) -> None:
    """Gradients flow from the updated param and state back to param, grad, state, lr and betas."""
    amsgrad = config.get("amsgrad", False)
    names = ("exp_avg", "exp_avg_sq") + (("max_exp_avg_sq",) if amsgrad else ())

    def one_step(p, grad, *rest):
        states, (lr, beta1, beta2) = rest[: len(names)], rest[len(names) :]
        p = p.clone()
        p.grad = grad
        opt = cls([p], lr=lr, betas=(beta1, beta2), differentiable=True, **config)
        opt.state[p]["step"] = torch.tensor(3.0, dtype=torch.float64)
        opt.state[p].update({n: s.clone() for n, s in zip(names, states)})
        opt.step()
        return (p, *(opt.state[p][n] for n in names))

    torch.manual_seed(0)
    p, grad = (torch.randn(6, dtype=torch.float64, requires_grad=True) for _ in range(2))
    # second moments are positive; the running maximum starts below some of them and above others
    states = [torch.randn(6, dtype=torch.float64).requires_grad_()]
    states += [torch.rand(6, dtype=torch.float64).add(0.1).requires_grad_() for _ in names[1:]]
    inputs = (p, grad, *states)
    hyper = [torch.tensor(v, dtype=torch.float64, requires_grad=True) for v in (0.3, 0.8, 0.9)]
    assert torch.autograd.gradcheck(one_step, (*inputs, *hyper))
    # and float hyperparameters, the common case (the bias corrections computed on the host)
    assert torch.autograd.gradcheck(lambda *t: one_step(*t, 0.9, 0.8, 0.9), inputs)
