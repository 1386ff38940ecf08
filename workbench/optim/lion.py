r"""Lion: the sign of an interpolated momentum, with decoupled weight decay.

.. math::
    g_t &= \pm\nabla f(\theta_{t-1})                                           \\
    c_t &= \beta_1 m_{t-1} + (1-\beta_1)\,g_t                                  \\
    \theta_t &= \theta_{t-1}(1 - \gamma\lambda) - \gamma\,\mathrm{sign}(c_t)   \\
    m_t &= \beta_2 m_{t-1} + (1-\beta_2)\,g_t

(Chen et al., "Symbolic Discovery of Optimization Algorithms", 2023, Algorithm 2; the reference
implementation is lucidrains' lion-pytorch, whose order of operations the forloop follows.)
The gradient's sign flips with ``maximize``; :math:`\lambda` is ``weight_decay``, decoupled from
the gradient as in AdamW. torch.optim has no Lion: the defaults are the paper's and the reference
implementation's (lr 1e-4, betas (0.9, 0.99), no weight decay). ``sign(0) = 0``, and a NaN
momentum gives a zero update on CPU, as ``torch.sign`` does there.

State per param: ``exp_avg`` (m). No step count: the update does not use one.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

from ._optimizer import WorkbenchOptimizer, check_arguments, group_defaults
from ._spec import UpdateSpec, decoupled_decay_factor


def _lion_forloop(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    *,
    lr: float | Tensor,
    beta1: float,
    beta2: float,
    weight_decay: float,
    maximize: bool,
    capturable: bool,
    differentiable: bool,
) -> None:
    for param, grad, exp_avg in zip(params, grads, exp_avgs):
        if maximize:
            grad = -grad
        if weight_decay != 0:
            param.mul_(1 - lr * weight_decay)
        update = exp_avg.mul(beta1).add_(grad, alpha=1 - beta1).sign_()
        # lr * sign is exact (+-lr or 0): the same bits as param.add_(update, alpha=-lr), and a
        # tensor lr stays on the device
        param.sub_(update.mul_(lr))
        exp_avg.mul_(beta2).add_(grad, alpha=1 - beta2)


def _lion_foreach(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    *,
    lr: float | Tensor,
    beta1: float,
    beta2: float,
    weight_decay: float,
    maximize: bool,
    capturable: bool,
    differentiable: bool,
) -> None:
    g = torch._foreach_neg(grads) if maximize else grads
    if weight_decay != 0:
        torch._foreach_mul_(params, 1 - lr * weight_decay)
    # one temporary the size of the params: the interpolation, then its sign, then lr * sign
    update = torch._foreach_mul(exp_avgs, beta1)
    torch._foreach_add_(update, g, alpha=1 - beta1)
    torch._foreach_sign_(update)
    torch._foreach_mul_(update, lr)
    torch._foreach_sub_(params, update)
    torch._foreach_mul_(exp_avgs, beta2)
    torch._foreach_add_(exp_avgs, g, alpha=1 - beta2)


SPEC = UpdateSpec(
    kernel="lion",
    forloop=_lion_forloop,
    foreach=_lion_foreach,
    state=("exp_avg",),
    scalars=(),
    hyper=("lr", "beta1", "beta2", "weight_decay", "decay_factor"),
    derived={"decay_factor": decoupled_decay_factor},
    # read param, grad, exp_avg; write param, exp_avg
    reads=3,
    writes=2,
    triton_scalars=(),
)


class Lion(WorkbenchOptimizer):
    """Lion (see the module docstring for the update), with the reference implementation's
    signature and torch.optim's conventions for the rest: it takes torch's ``foreach``,
    ``maximize``, ``capturable`` and ``differentiable`` too.
    """

    spec = SPEC

    def __init__(
        self,
        params: Iterable[Any],
        lr: float | Tensor = 1e-4,
        betas: tuple[float, float] = (0.9, 0.99),
        weight_decay: float = 0.0,
        *,
        foreach: bool | None = None,
        maximize: bool = False,
        capturable: bool = False,
        differentiable: bool = False,
        backend: str | None = None,
        fused: bool | None = None,
    ) -> None:
        check_arguments(lr=lr, betas=betas, weight_decay=weight_decay)
        super().__init__(params, group_defaults(locals()), backend=backend, fused=fused)
