r"""Adadelta: a per-coordinate step size from running averages of squared gradients and updates.

.. math::
    g_t &= \pm\nabla f(\theta_{t-1}) + \lambda\,\theta_{t-1}                         \\
    v_t &= \rho\,v_{t-1} + (1-\rho)\,g_t^2                                           \\
    \Delta_t &= \frac{\sqrt{u_{t-1} + \epsilon}}{\sqrt{v_t + \epsilon}}\,g_t         \\
    u_t &= \rho\,u_{t-1} + (1-\rho)\,\Delta_t^2                                      \\
    \theta_t &= \theta_{t-1} - \gamma\,\Delta_t

(Zeiler, "ADADELTA: An Adaptive Learning Rate Method", 2012.) The gradient's sign flips with
``maximize``; :math:`\lambda` is ``weight_decay``, an L2 penalty added to the gradient;
:math:`\gamma` is ``lr``, a plain scale on the update (1.0 in the paper).

State per param: ``step`` (0-dim float tensor, only counted), ``square_avg`` (v), ``acc_delta``
(u), as torch.optim.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

from ._foreach import foreach_grads
from ._optimizer import WorkbenchOptimizer, check_arguments, group_defaults
from ._spec import UpdateSpec


def _adadelta_forloop(
    params: list[Tensor],
    grads: list[Tensor],
    square_avgs: list[Tensor],
    acc_deltas: list[Tensor],
    steps: list[Tensor],
    *,
    lr: float | Tensor,
    rho: float,
    eps: float,
    weight_decay: float,
    maximize: bool,
    capturable: bool,
    differentiable: bool,
) -> None:
    compiling = torch.compiler.is_compiling()
    # A tensor lr stays a tensor where reading it on the host would sync (capturable), cannot
    # happen (compiled graphs) or would cut the autograd graph (differentiable).
    lr_on_device = isinstance(lr, Tensor) and (capturable or compiling or differentiable)
    out_of_place = differentiable or compiling
    for param, grad, square_avg, acc_delta, step in zip(
        params, grads, square_avgs, acc_deltas, steps
    ):
        step += 1
        if maximize:
            grad = -grad
        if weight_decay != 0:
            grad = grad.add(param, alpha=weight_decay)
        square_avg.mul_(rho).addcmul_(grad, grad, value=1 - rho)
        std = square_avg.add(eps).sqrt_()
        if out_of_place:
            # autograd saves sqrt's output for its backward: it must not be divided in place
            delta = (acc_delta + eps).sqrt() / std * grad
        else:
            delta = acc_delta.add(eps).sqrt_().div_(std).mul_(grad)
        acc_delta.mul_(rho).addcmul_(delta, delta, value=1 - rho)
        if lr_on_device:
            param.addcmul_(delta, lr, value=-1)
        else:
            param.add_(delta, alpha=-float(lr))


def _adadelta_foreach(
    params: list[Tensor],
    grads: list[Tensor],
    square_avgs: list[Tensor],
    acc_deltas: list[Tensor],
    steps: list[Tensor],
    *,
    lr: float | Tensor,
    rho: float,
    eps: float,
    weight_decay: float,
    maximize: bool,
    capturable: bool,
    differentiable: bool,
) -> None:
    torch._foreach_add_(steps, 1.0)
    g = foreach_grads(grads, params, maximize=maximize, weight_decay=weight_decay)
    torch._foreach_mul_(square_avgs, rho)
    torch._foreach_addcmul_(square_avgs, g, g, value=1 - rho)
    # Two temporary lists the size of the params: the denominator, and the update itself.
    std = torch._foreach_add(square_avgs, eps)
    torch._foreach_sqrt_(std)
    delta = torch._foreach_add(acc_deltas, eps)
    torch._foreach_sqrt_(delta)
    torch._foreach_div_(delta, std)
    del std
    torch._foreach_mul_(delta, g)
    torch._foreach_mul_(acc_deltas, rho)
    torch._foreach_addcmul_(acc_deltas, delta, delta, value=1 - rho)
    if isinstance(lr, Tensor) and capturable:
        # lr read on the device: no host sync inside a captured graph
        torch._foreach_mul_(delta, lr)
        torch._foreach_sub_(params, delta)
    else:
        torch._foreach_add_(params, delta, alpha=-float(lr))


SPEC = UpdateSpec(
    kernel="adadelta",
    forloop=_adadelta_forloop,
    foreach=_adadelta_foreach,
    state=("square_avg", "acc_delta"),
    hyper=("lr", "rho", "eps", "weight_decay"),
    # read param, grad, square_avg, acc_delta; write param, square_avg, acc_delta
    reads=4,
    writes=3,
    # the update does not use the step: the Triton kernel need not read it
    triton_scalars=(),
)


class Adadelta(WorkbenchOptimizer):
    """Adadelta (see the module docstring for the update) with torch.optim.Adadelta's signature."""

    spec = SPEC

    def __init__(
        self,
        params: Iterable[Any],
        lr: float | Tensor = 1.0,
        rho: float = 0.9,
        eps: float = 1e-6,
        weight_decay: float = 0,
        foreach: bool | None = None,
        *,
        capturable: bool = False,
        maximize: bool = False,
        differentiable: bool = False,
        backend: str | None = None,
        fused: bool | None = None,
    ) -> None:
        check_arguments(lr=lr)
        if not 0.0 <= rho <= 1.0:
            raise ValueError(f"Invalid rho value: {rho}")
        check_arguments(eps=eps, weight_decay=weight_decay)
        super().__init__(params, group_defaults(locals()), backend=backend, fused=fused)
