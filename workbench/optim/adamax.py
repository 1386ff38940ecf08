r"""Adamax: Adam with the infinity norm in place of the second moment.

.. math::
    g_t &= \pm\nabla f(\theta_{t-1}) + \lambda\,\theta_{t-1}                 \\
    m_t &= \beta_1 m_{t-1} + (1-\beta_1)\,g_t                                \\
    u_t &= \max(\beta_2 u_{t-1},\ |g_t| + \epsilon)                          \\
    \theta_t &= \theta_{t-1} - \frac{\gamma}{1-\beta_1^t}\,\frac{m_t}{u_t}

(Kingma & Ba, "Adam: A Method for Stochastic Optimization", section 7.1.) The gradient's sign
flips with ``maximize``; :math:`\lambda` is ``weight_decay``, an L2 penalty added to the gradient.

State per param: ``step`` (0-dim float tensor), ``exp_avg`` (m), ``exp_inf`` (u), as torch.optim.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

from ._foreach import foreach_grads
from ._materialize import materialize
from ._optimizer import WorkbenchOptimizer, check_arguments, group_defaults
from ._spec import UpdateSpec


def _adamax_forloop(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_infs: list[Tensor],
    steps: list[Tensor],
    *,
    lr: float | Tensor,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    maximize: bool,
    capturable: bool,
    differentiable: bool,
) -> None:
    # With step (and maybe lr) as device tensors, the bias correction stays on the device: no host
    # sync, and a compiled graph that does not depend on their values.
    compiling = torch.compiler.is_compiling()
    on_device = capturable or compiling or (differentiable and isinstance(lr, Tensor))
    for param, grad, exp_avg, exp_inf, step in zip(params, grads, exp_avgs, exp_infs, steps):
        step += 1
        if maximize:
            grad = -grad
        if weight_decay != 0:
            grad = grad.add(param, alpha=weight_decay)
        exp_avg.lerp_(grad, 1 - beta1)
        if differentiable or compiling:
            # Neither autograd nor dynamo takes `out=`; build the max out of place, copy it back.
            exp_inf.copy_(torch.maximum(exp_inf * beta2, grad.abs() + eps))
        else:
            torch.maximum(exp_inf.mul_(beta2), grad.abs().add_(eps), out=exp_inf)
        if on_device:
            # theta -= lr / bc * m / u, written as theta += m / (u * (beta1^t - 1) / lr) so the
            # only division by a tensor scalar is folded into the denominator.
            neg_bc_over_lr = materialize((beta1**step - 1) / lr)
            param.addcdiv_(exp_avg, exp_inf * neg_bc_over_lr)
        else:
            step_size = float(lr) / (1 - beta1 ** step.item())
            param.addcdiv_(exp_avg, exp_inf, value=-step_size)


def _adamax_foreach(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_infs: list[Tensor],
    steps: list[Tensor],
    *,
    lr: float | Tensor,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    maximize: bool,
    capturable: bool,
    differentiable: bool,
) -> None:
    # One temporary list the size of the grads is the only extra memory: it holds the effective
    # gradient, then |g| + eps, then (on the capturable path) the denominator.
    torch._foreach_add_(steps, 1.0)
    g = foreach_grads(grads, params, maximize=maximize, weight_decay=weight_decay)
    torch._foreach_lerp_(exp_avgs, g, 1 - beta1)
    torch._foreach_mul_(exp_infs, beta2)
    if g is grads:
        g = torch._foreach_abs(grads)
    else:
        torch._foreach_abs_(g)
    torch._foreach_add_(g, eps)
    torch._foreach_maximum_(exp_infs, g)

    if capturable:
        neg_bc_over_lr = torch._foreach_pow(beta1, steps)
        torch._foreach_sub_(neg_bc_over_lr, 1)
        torch._foreach_div_(neg_bc_over_lr, lr)
        torch._foreach_copy_(g, exp_infs)
        torch._foreach_mul_(g, neg_bc_over_lr)
        torch._foreach_addcdiv_(params, exp_avgs, g)
    else:
        lr_value = float(lr)
        step_sizes = [-lr_value / (1 - beta1 ** s.item()) for s in steps]
        torch._foreach_addcdiv_(params, exp_avgs, exp_infs, step_sizes)


SPEC = UpdateSpec(
    kernel="adamax",
    forloop=_adamax_forloop,
    foreach=_adamax_foreach,
    state=("exp_avg", "exp_inf"),
    hyper=("lr", "beta1", "beta2", "eps", "weight_decay"),
    # read param, grad, exp_avg, exp_inf; write param, exp_avg, exp_inf
    reads=4,
    writes=3,
)


class Adamax(WorkbenchOptimizer):
    """Adamax (see the module docstring for the update) with torch.optim.Adamax's signature."""

    spec = SPEC

    def __init__(
        self,
        params: Iterable[Any],
        lr: float | Tensor = 2e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0,
        foreach: bool | None = None,
        *,
        maximize: bool = False,
        differentiable: bool = False,
        capturable: bool = False,
        backend: str | None = None,
        fused: bool | None = None,
    ) -> None:
        check_arguments(lr=lr, eps=eps, betas=betas, weight_decay=weight_decay)
        super().__init__(params, group_defaults(locals()), backend=backend, fused=fused)
