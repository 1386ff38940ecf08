"""RMSprop's forloop backend with differentiable=True: gradients flow from the updated param and
state back to param, grad, state and lr (centered, with momentum: every state tensor)."""

from __future__ import annotations

import torch

from workbench.optim import RMSprop

KWARGS = {"alpha": 0.9, "weight_decay": 0.1, "momentum": 0.5, "centered": True, "maximize": True}
STATE = ("square_avg", "momentum_buffer", "grad_avg")


def _one_step(cls: type, p, grad, square_avg, momentum_buffer, grad_avg, lr):
    p = p.clone()
    p.grad = grad
    opt = cls([p], lr=lr, differentiable=True, **KWARGS)
    opt.state[p]["step"] = torch.tensor(3.0)
    for name, value in zip(STATE, (square_avg, momentum_buffer, grad_avg)):
        opt.state[p][name] = value.clone()
    opt.step()
    return (p, *(opt.state[p][name] for name in STATE))


def _inputs() -> tuple[torch.Tensor, ...]:
    torch.manual_seed(0)
    p, grad, buf = (torch.rand(6, dtype=torch.float64) for _ in range(3))
    # centered: the mean square must stay above the squared mean for the root to exist
    square_avg, grad_avg = 1 + torch.rand(6, dtype=torch.float64), torch.rand(6).double() / 4
    tensors = [t.requires_grad_() for t in (p, grad, square_avg, buf, grad_avg)]
    return (*tensors, torch.tensor(0.3, dtype=torch.float64, requires_grad=True))


def test_rmsprop_forloop_is_differentiable() -> None:
    assert torch.autograd.gradcheck(lambda *t: _one_step(RMSprop, *t), _inputs())
    # a float lr, the common case
    assert torch.autograd.gradcheck(lambda *t: _one_step(RMSprop, *t, 0.3), _inputs()[:5])


def test_rmsprop_gradients_match_torch() -> None:
    """torch's differentiable RMSprop reads a tensor lr as a number (no hypergradient for it); the
    gradients for param, grad and state are the same."""
    *tensors, lr = _inputs()
    grads = []
    for cls in (RMSprop, torch.optim.RMSprop):
        outputs = _one_step(cls, *tensors, lr.detach())
        weights = torch.Generator().manual_seed(1)
        total = sum(
            (o * torch.rand(o.shape, generator=weights, dtype=o.dtype)).sum() for o in outputs
        )
        grads.append(torch.autograd.grad(total, tensors))
    for ours, theirs in zip(*grads):
        torch.testing.assert_close(ours, theirs)
