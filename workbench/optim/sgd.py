r"""SGD: stochastic gradient descent, with optional (Nesterov) momentum.

.. math::
    g_t &= \pm\nabla f(\theta_{t-1}) + \lambda\,\theta_{t-1}                 \\
    b_t &= \begin{cases} g_1 & t = 1 \\ \mu\,b_{t-1} + (1-\tau)\,g_t & t > 1 \end{cases} \\
    d_t &= \begin{cases} g_t + \mu\,b_t & \text{nesterov} \\ b_t & \text{otherwise} \end{cases} \\
    \theta_t &= \theta_{t-1} - \gamma\,d_t

With :math:`\mu = 0` (``momentum``, the default) there is no buffer and :math:`d_t = g_t`.
:math:`\tau` is ``dampening``; it does not apply to the first step, whose buffer is the gradient
itself (Sutskever et al., "On the importance of initialization and momentum in deep learning").
The gradient's sign flips with ``maximize``; :math:`\lambda` is ``weight_decay``, an L2 penalty.

State per param, as torch.optim: none at all without momentum; with momentum, ``momentum_buffer``
(b), created at the param's first step as a copy of :math:`g_1`. There is no ``step`` counter.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import Tensor

from ._foreach import foreach_grads
from ._optimizer import WorkbenchOptimizer, check_fused_flags, group_defaults
from ._spec import UpdateSpec


def _sgd_forloop(
    params: list[Tensor],
    grads: list[Tensor],
    momentum_buffers: list[Tensor | None],
    *,
    lr: float | Tensor,
    momentum: float,
    dampening: float,
    weight_decay: float | Tensor,
    nesterov: bool,
    maximize: bool,
    capturable: bool,
    differentiable: bool,
) -> None:
    # lr stays a tensor where it must: in a compiled graph (a new value is data, not a recompile)
    # and for hypergradients; `alpha=` would read it on the host.
    lr_on_device = isinstance(lr, Tensor) and (
        capturable or differentiable or torch.compiler.is_compiling()
    )
    if isinstance(lr, Tensor) and not lr_on_device:
        lr = lr.item()
    for i, (param, grad) in enumerate(zip(params, grads)):
        if maximize:
            grad = -grad
        if isinstance(weight_decay, Tensor):
            # A tensor weight decay may carry a hypergradient: multiply, do not read it as alpha.
            # Its gradient needs the param as it was, before the in-place update below: a copy.
            grad = grad.addcmul(
                param.clone() if weight_decay.requires_grad else param, weight_decay
            )
        elif weight_decay != 0:
            grad = grad.add(param, alpha=weight_decay)
        if momentum != 0:
            buf = momentum_buffers[i]
            if buf is None:
                # torch.optim starts the buffer from a detached copy: no hypergradient flows
                # through the first step's buffer, here either.
                buf = grad.detach().clone()
                momentum_buffers[i] = buf
            else:
                buf.mul_(momentum).add_(grad, alpha=1 - dampening)
            grad = grad.add(buf, alpha=momentum) if nesterov else buf
        if lr_on_device:
            param.addcmul_(grad, lr, value=-1)
        else:
            param.add_(grad, alpha=-lr)


def _sgd_foreach(
    params: list[Tensor],
    grads: list[Tensor],
    momentum_buffers: list[Tensor | None],
    *,
    lr: float | Tensor,
    momentum: float,
    dampening: float,
    weight_decay: float | Tensor,
    nesterov: bool,
    maximize: bool,
    capturable: bool,
    differentiable: bool,
) -> None:
    weight_decay = float(weight_decay)
    # g is the caller's grads when nothing changes them; otherwise one temporary list, reused.
    g = foreach_grads(grads, params, maximize=maximize, weight_decay=weight_decay)

    if momentum != 0:
        old = [i for i, b in enumerate(momentum_buffers) if b is not None]
        if old:
            bufs = [momentum_buffers[i] for i in old]
            torch._foreach_mul_(bufs, momentum)
            torch._foreach_add_(bufs, [g[i] for i in old], alpha=1 - dampening)
        for i, b in enumerate(momentum_buffers):
            if b is None:
                momentum_buffers[i] = g[i].clone()
        if nesterov:
            if g is grads:
                g = torch._foreach_add(grads, momentum_buffers, alpha=momentum)
            else:
                torch._foreach_add_(g, momentum_buffers, alpha=momentum)
        else:
            g = momentum_buffers

    torch._foreach_add_(params, g, alpha=-float(lr))


def _has_momentum(values: Mapping[str, Any]) -> bool:
    return values.get("momentum", 0) != 0


SPEC = UpdateSpec(
    kernel="sgd",
    forloop=_sgd_forloop,
    foreach=_sgd_foreach,
    state=("momentum_buffer",),
    # no state at all without momentum (see WorkbenchOptimizer._stateless)
    optional={"momentum_buffer": _has_momentum},
    lazy=("momentum_buffer",),  # a copy of the first grad
    scalars=(),
    hyper=("lr", "momentum", "dampening", "weight_decay", "grad_scale"),
    flags=("has_momentum", "first_step", "nesterov", "maximize"),
    derived={"has_momentum": _has_momentum},
    # without momentum (the default): read param, grad; write param
    reads=2,
    writes=1,
    triton_scalars=(),
    amp=True,
)


class SGD(WorkbenchOptimizer):
    """SGD (see the module docstring for the update) with torch.optim.SGD's signature."""

    spec = SPEC
    setstate_defaults = {"nesterov": False, "fused": False}

    def __init__(
        self,
        params: Iterable[Any],
        lr: float | Tensor = 1e-3,
        momentum: float = 0,
        dampening: float = 0,
        weight_decay: float | Tensor = 0,
        nesterov: bool = False,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        differentiable: bool = False,
        fused: bool | None = None,
        backend: str | None = None,
    ) -> None:
        # torch.optim.SGD's checks are `x < 0`, which let NaN through: not check_arguments'
        if isinstance(lr, Tensor) and lr.numel() != 1:
            raise ValueError("Tensor lr must be 1-element")
        if lr < 0.0:
            raise ValueError(f"Invalid learning rate: {lr}")
        if momentum < 0.0:
            raise ValueError(f"Invalid momentum value: {momentum}")
        if weight_decay < 0.0:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")
        check_fused_flags(fused, foreach, differentiable)
        defaults = group_defaults(locals(), with_fused=True)
        super().__init__(params, defaults, backend=backend, fused=fused)
