r"""RMSprop: steps divided by a running root mean square of the gradient.

.. math::
    g_t &= \pm\nabla f(\theta_{t-1}) + \lambda\,\theta_{t-1}                 \\
    v_t &= \alpha\,v_{t-1} + (1-\alpha)\,g_t^2                               \\
    \bar g_t &= \alpha\,\bar g_{t-1} + (1-\alpha)\,g_t
        \quad\text{(centered only)}                                          \\
    d_t &= \sqrt{v_t - \bar g_t^2} + \epsilon\ \text{(centered)},
        \quad \sqrt{v_t} + \epsilon\ \text{(otherwise)}                      \\
    b_t &= \mu\,b_{t-1} + g_t / d_t,
        \quad \theta_t = \theta_{t-1} - \gamma\,b_t \quad (\mu > 0)          \\
    \theta_t &= \theta_{t-1} - \gamma\,g_t / d_t \quad (\mu = 0)

(Hinton, Coursera "Neural Networks for Machine Learning", lecture 6e; the centered form is from
Graves, "Generating Sequences With Recurrent Neural Networks", 2013.) The gradient's sign flips
with ``maximize``; :math:`\lambda` is ``weight_decay``, an L2 penalty added to the gradient;
:math:`\alpha` is ``alpha``, :math:`\mu` is ``momentum``.

State per param, as torch.optim: ``step`` (0-dim float tensor, counted but not used by the math),
``square_avg`` (v), ``momentum_buffer`` (b, only with momentum > 0), ``grad_avg``
(:math:`\bar g`, only when centered).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import Tensor

from ._foreach import foreach_grads
from ._optimizer import WorkbenchOptimizer, check_arguments, group_defaults
from ._spec import UpdateSpec


def _rmsprop_forloop(
    params: list[Tensor],
    grads: list[Tensor],
    square_avgs: list[Tensor],
    momentum_buffers: list[Tensor],
    grad_avgs: list[Tensor],
    steps: list[Tensor],
    *,
    lr: float | Tensor,
    alpha: float,
    eps: float,
    weight_decay: float,
    momentum: float,
    centered: bool,
    maximize: bool,
    capturable: bool,
    differentiable: bool,
) -> None:
    # lr stays a tensor where it must (capturable, compiled, hypergradients); `alpha=`/`value=`
    # would read it on the host.
    compiling = torch.compiler.is_compiling()
    on_device = capturable or compiling or (differentiable and isinstance(lr, Tensor))
    if isinstance(lr, Tensor) and not on_device:
        lr = lr.item()
    for i, (param, grad, square_avg, step) in enumerate(zip(params, grads, square_avgs, steps)):
        step += 1
        if maximize:
            grad = -grad
        if weight_decay != 0:
            grad = grad.add(param, alpha=weight_decay)
        square_avg.mul_(alpha).addcmul_(grad, grad, value=1 - alpha)
        if centered:
            grad_avg = grad_avgs[i]
            grad_avg.lerp_(grad, 1 - alpha)
            avg = square_avg.addcmul(grad_avg, grad_avg, value=-1).sqrt_()
        else:
            avg = square_avg.sqrt()
        if differentiable or compiling:
            avg = avg + eps  # autograd needs the root's output as it was made
        else:
            avg = avg.add_(eps)
        if momentum > 0:
            buf = momentum_buffers[i]
            buf.mul_(momentum).addcdiv_(grad, avg)
            if on_device:
                param.addcmul_(buf, lr, value=-1)
            else:
                param.add_(buf, alpha=-lr)
        elif on_device:
            param.addcdiv_(grad * lr, avg, value=-1)
        else:
            param.addcdiv_(grad, avg, value=-lr)


def _rmsprop_foreach(
    params: list[Tensor],
    grads: list[Tensor],
    square_avgs: list[Tensor],
    momentum_buffers: list[Tensor],
    grad_avgs: list[Tensor],
    steps: list[Tensor],
    *,
    lr: float | Tensor,
    alpha: float,
    eps: float,
    weight_decay: float,
    momentum: float,
    centered: bool,
    maximize: bool,
    capturable: bool,
    differentiable: bool,
) -> None:
    # Temporaries: the effective gradient (only when maximize or weight_decay change it) and the
    # denominator, one list the size of the grads each.
    torch._foreach_add_(steps, 1.0)
    g = foreach_grads(grads, params, maximize=maximize, weight_decay=weight_decay)
    torch._foreach_mul_(square_avgs, alpha)
    torch._foreach_addcmul_(square_avgs, g, g, value=1 - alpha)
    if centered:
        torch._foreach_lerp_(grad_avgs, g, 1 - alpha)
        avg = torch._foreach_addcmul(square_avgs, grad_avgs, grad_avgs, value=-1)
        torch._foreach_sqrt_(avg)
    else:
        avg = torch._foreach_sqrt(square_avgs)
    torch._foreach_add_(avg, eps)

    # A capturable step must not read a tensor lr on the host: it is multiplied in on the device.
    lr_on_device = capturable and isinstance(lr, Tensor)
    if momentum > 0:
        torch._foreach_mul_(momentum_buffers, momentum)
        torch._foreach_addcdiv_(momentum_buffers, g, avg)
        if lr_on_device:
            torch._foreach_add_(params, torch._foreach_mul(momentum_buffers, -lr))
        else:
            torch._foreach_add_(params, momentum_buffers, alpha=-float(lr))
    elif lr_on_device:
        torch._foreach_div_(avg, -lr)  # theta += g / (d / -lr): no list of g * lr
        torch._foreach_addcdiv_(params, g, avg)
    else:
        torch._foreach_addcdiv_(params, g, avg, value=-float(lr))


def _has_momentum(values: Mapping[str, Any]) -> bool:
    return values.get("momentum", 0) > 0


SPEC = UpdateSpec(
    kernel="rmsprop",
    forloop=_rmsprop_forloop,
    foreach=_rmsprop_foreach,
    state=("square_avg", "momentum_buffer", "grad_avg"),
    optional={
        "momentum_buffer": _has_momentum,
        "grad_avg": lambda values: bool(values.get("centered", False)),
    },
    hyper=("lr", "alpha", "eps", "weight_decay", "momentum"),
    flags=("has_momentum", "centered", "maximize"),
    derived={"has_momentum": _has_momentum},
    # plain (no momentum, not centered): read param, grad, square_avg; write param, square_avg
    reads=3,
    writes=2,
    triton_scalars=(),  # the math does not read the step
)


class RMSprop(WorkbenchOptimizer):
    """RMSprop (see the module docstring for the update) with torch.optim.RMSprop's signature."""

    spec = SPEC
    setstate_defaults = {"momentum": 0, "centered": False}

    def __init__(
        self,
        params: Iterable[Any],
        lr: float | Tensor = 1e-2,
        alpha: float = 0.99,
        eps: float = 1e-8,
        weight_decay: float = 0,
        momentum: float = 0,
        centered: bool = False,
        capturable: bool = False,
        foreach: bool | None = None,
        maximize: bool = False,
        differentiable: bool = False,
        *,
        backend: str | None = None,
        fused: bool | None = None,
    ) -> None:
        check_arguments(lr=lr, eps=eps, momentum=momentum, weight_decay=weight_decay, alpha=alpha)
        super().__init__(params, group_defaults(locals()), backend=backend, fused=fused)
