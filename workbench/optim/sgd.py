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

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

from ._backends import fused
from ._foreach import foreach_grads
from ._optimizer import WorkbenchOptimizer
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


SPEC = UpdateSpec(
    kernel="sgd",
    state=("momentum_buffer",),
    optional=("momentum_buffer",),  # no state at all without momentum
    lazy=("momentum_buffer",),  # a copy of the first grad
    scalars=(),
    hyper=("lr", "momentum", "dampening", "weight_decay", "grad_scale"),
    flags=("has_momentum", "first_step", "nesterov", "maximize"),
    derived={"has_momentum": lambda hyper: hyper["momentum"] != 0},
    # without momentum (the default): read param, grad; write param
    reads=2,
    writes=1,
    triton_scalars=(),
    amp=True,
)


class SGD(WorkbenchOptimizer):
    """SGD (see the module docstring for the update) with torch.optim.SGD's signature.

    Extra keyword: ``backend`` ("forloop", "foreach", "fused", "compiled"; None picks like torch).
    ``fused=True`` is ``backend="fused"``; it takes torch.amp.GradScaler's scale like torch's.
    """

    backends = ("forloop", "foreach", "fused", "compiled")
    spec = SPEC
    update_functions = {
        "forloop": _sgd_forloop,
        "foreach": _sgd_foreach,
        "fused": fused.update(SPEC),
    }

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
        _check_fused_flags(fused, foreach, differentiable)
        defaults = {
            "lr": lr,
            "momentum": momentum,
            "dampening": dampening,
            "weight_decay": weight_decay,
            "nesterov": nesterov,
            "maximize": maximize,
            "foreach": foreach,
            "differentiable": differentiable,
            "fused": fused,
        }
        super().__init__(params, defaults, backend=backend, fused=fused)

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            group.setdefault("nesterov", False)
            group.setdefault("fused", False)

    @classmethod
    def tensors_moved(cls, **flags: Any) -> tuple[int, int]:
        if flags.get("momentum", 0) == 0:
            return cls.tensors_read, cls.tensors_written
        return cls.tensors_read + 1, cls.tensors_written + 1  # and the momentum buffer

    def _stateless(self, group: dict[str, Any]) -> bool:
        # torch.optim.SGD keeps no state entry at all without momentum, not even an empty one
        return group["momentum"] == 0

    def _initial_state(self, p: Tensor, group: dict[str, Any]) -> dict[str, Tensor]:
        return {}  # the momentum buffer is the first step's gradient: the update creates it

    def _hyperparameters(self, group: dict[str, Any]) -> dict[str, Any]:
        lr = group["lr"]
        if isinstance(lr, Tensor) and lr.dim() != 0:
            lr = lr.squeeze()
        return {
            "lr": lr,
            "momentum": group["momentum"],
            "dampening": group["dampening"],
            "weight_decay": group["weight_decay"],
            "nesterov": group["nesterov"],
        }


def _check_fused_flags(fused: bool | None, foreach: bool | None, differentiable: bool) -> None:
    """torch.optim's own refusals for its `fused` flag (SGD, Adagrad), with its messages."""
    if fused and differentiable:
        raise RuntimeError("`fused` does not support `differentiable`")
    if fused and foreach:
        raise RuntimeError("`fused` and `foreach` cannot be `True` together.")
