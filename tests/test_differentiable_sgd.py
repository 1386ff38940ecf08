"""SGD's forloop backend with differentiable=True: gradients flow from the updated param and
momentum buffer back to param, grad, buffer, lr and a tensor weight decay, as they do in torch."""

from __future__ import annotations

import pytest
import torch

from workbench.optim import SGD

KWARGS = {"momentum": 0.9, "nesterov": True}


def _one_step(cls: type, p, grad, buf, lr, weight_decay):
    """(param, momentum buffer) after one differentiable step; `buf` None is a first step."""
    p = p.clone()
    p.grad = grad.clone()  # torch's SGD adds a tensor weight decay into the grad in place
    opt = cls([p], lr=lr, weight_decay=weight_decay, differentiable=True, **KWARGS)
    if buf is not None:
        opt.state[p]["momentum_buffer"] = buf.clone()
    opt.step()
    return p, opt.state[p]["momentum_buffer"]


def _inputs() -> list[torch.Tensor]:
    torch.manual_seed(0)
    tensors = [torch.rand(6, dtype=torch.float64, requires_grad=True) for _ in range(3)]
    lr = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    weight_decay = torch.tensor(0.1, dtype=torch.float64, requires_grad=True)
    return [*tensors, lr, weight_decay]


def test_sgd_forloop_is_differentiable() -> None:
    assert torch.autograd.gradcheck(lambda *t: _one_step(SGD, *t), tuple(_inputs()))
    # float lr and weight decay, the common case
    p, grad, buf, _, _ = _inputs()
    assert torch.autograd.gradcheck(lambda *t: _one_step(SGD, *t, 0.3, 0.1), (p, grad, buf))


@pytest.mark.parametrize("first_step", [True, False], ids=["first_step", "later_step"])
def test_sgd_hypergradients_match_torch(first_step: bool) -> None:
    """The same gradients as torch's differentiable SGD, including none through the first step's
    buffer (torch starts it from a detached copy of the gradient)."""
    inputs = _inputs()
    if first_step:
        inputs[2] = None
    wanted = [t for t in inputs if t is not None]
    grads = []
    for cls in (SGD, torch.optim.SGD):
        outputs = _one_step(cls, *inputs)
        weights = torch.Generator().manual_seed(1)
        total = sum(
            (o * torch.rand(o.shape, generator=weights, dtype=o.dtype)).sum() for o in outputs
        )
        grads.append(torch.autograd.grad(total, wanted, allow_unused=True))
    for ours, theirs in zip(*grads):
        if theirs is None:
            assert ours is None or not ours.any()
        else:
            torch.testing.assert_close(ours, theirs)
