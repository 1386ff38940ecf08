r"""Adagrad: per-coordinate steps scaled by the root of the summed squared gradients.

.. math::
    g_t &= \pm\nabla f(\theta_{t-1}) + \lambda\,\theta_{t-1}                 \\
    \tilde\gamma_t &= \gamma / (1 + (t-1)\,\eta)                             \\
    s_t &= s_{t-1} + g_t^2                                                   \\
    \theta_t &= \theta_{t-1} - \tilde\gamma_t\,\frac{g_t}{\sqrt{s_t} + \epsilon}

(Duchi, Hazan & Singer, "Adaptive Subgradient Methods for Online Learning and Stochastic
Optimization", 2011.) The gradient's sign flips with ``maximize``; :math:`\lambda` is
``weight_decay``, an L2 penalty added to the gradient; :math:`\eta` is ``lr_decay``;
:math:`s_0` is ``initial_accumulator_value`` (both parts of a complex param start there).

State per param, as torch.optim: ``step`` (0-dim float tensor) and ``sum`` (s), created for every
param when the optimizer is constructed (torch does so), not at the param's first step.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

from ._backends import DEVICE_STEP_BACKENDS
from ._foreach import foreach_grads
from ._materialize import materialize
from ._optimizer import WorkbenchOptimizer, check_arguments, check_fused_flags, group_defaults
from ._spec import UpdateSpec


def _adagrad_forloop(
    params: list[Tensor],
    grads: list[Tensor],
    state_sums: list[Tensor],
    steps: list[Tensor],
    *,
    lr: float | Tensor,
    lr_decay: float,
    weight_decay: float,
    eps: float,
    maximize: bool,
    capturable: bool,
    differentiable: bool,
) -> None:
    # With step (and maybe lr) as device tensors, the decayed lr stays on the device: no host
    # sync, and a compiled graph that does not depend on their values.
    compiling = torch.compiler.is_compiling()
    on_device = capturable or compiling or (differentiable and isinstance(lr, Tensor))
    for param, grad, state_sum, step in zip(params, grads, state_sums, steps):
        step += 1
        if maximize:
            grad = -grad
        if weight_decay != 0:
            grad = grad.add(param, alpha=weight_decay)
        state_sum.addcmul_(grad, grad, value=1)
        if differentiable or compiling:
            std = state_sum.sqrt() + eps  # autograd needs the root's output as it was made
        else:
            std = state_sum.sqrt().add_(eps)
        if on_device:
            decayed_lr = materialize(lr / (1 + (step - 1) * lr_decay))
            param.addcdiv_(grad * decayed_lr, std, value=-1)
        else:
            decayed_lr = float(lr) / (1 + (step.item() - 1) * lr_decay)
            param.addcdiv_(grad, std, value=-decayed_lr)


def _adagrad_foreach(
    params: list[Tensor],
    grads: list[Tensor],
    state_sums: list[Tensor],
    steps: list[Tensor],
    *,
    lr: float | Tensor,
    lr_decay: float,
    weight_decay: float,
    eps: float,
    maximize: bool,
    capturable: bool,
    differentiable: bool,
) -> None:
    # Two temporary lists the size of the grads at most: the effective gradient (only when
    # maximize or weight_decay change it) and the denominator.
    torch._foreach_add_(steps, 1.0)
    g = foreach_grads(grads, params, maximize=maximize, weight_decay=weight_decay)
    torch._foreach_addcmul_(state_sums, g, g, value=1)
    std = torch._foreach_sqrt(state_sums)
    torch._foreach_add_(std, eps)
    lr_value = float(lr)
    neg_decayed_lrs = [-lr_value / (1 + (s.item() - 1) * lr_decay) for s in steps]
    torch._foreach_addcdiv_(params, g, std, neg_decayed_lrs)


SPEC = UpdateSpec(
    kernel="adagrad",
    forloop=_adagrad_forloop,
    foreach=_adagrad_foreach,
    state=("sum",),
    hyper=("lr", "lr_decay", "weight_decay", "eps", "grad_scale"),
    # read param, grad, sum; write param, sum
    reads=3,
    writes=2,
    amp=True,
)


class Adagrad(WorkbenchOptimizer):
    """Adagrad (see the module docstring for the update) with torch.optim.Adagrad's signature."""

    spec = SPEC
    setstate_defaults = {"fused": None}

    def __init__(
        self,
        params: Iterable[Any],
        lr: float | Tensor = 1e-2,
        lr_decay: float = 0,
        weight_decay: float = 0,
        initial_accumulator_value: float = 0,
        eps: float = 1e-10,
        foreach: bool | None = None,
        *,
        maximize: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
        backend: str | None = None,
    ) -> None:
        check_arguments(
            lr=lr,
            lr_decay=lr_decay,
            weight_decay=weight_decay,
            initial_accumulator_value=initial_accumulator_value,
            eps=eps,
        )
        check_fused_flags(fused, foreach, differentiable)
        defaults = group_defaults(locals(), with_fused=True)
        super().__init__(params, defaults, backend=backend, fused=fused)
        # torch.optim.Adagrad creates every param's state here, grads or not: so do we, so that
        # state_dicts taken before (or without) a param's first step match torch's.
        for group in self.param_groups:
            device_step = group["backend"] in DEVICE_STEP_BACKENDS
            for p in group["params"]:
                self._state_for(p, group, device_step)

    def share_memory(self) -> None:
        """Move the `sum` state to shared memory (for Hogwild-style training), as torch's does."""
        for group in self.param_groups:
            for p in group["params"]:
                self.state[p]["sum"].share_memory_()

    def _initial_state(self, p: Tensor, group: dict[str, Any]) -> dict[str, Tensor]:
        value = group["initial_accumulator_value"]
        if p.is_complex():
            value = complex(value, value)  # the real and the imaginary part both start there
        return {"sum": torch.full_like(p, value, memory_format=torch.preserve_format)}
