r"""Rprop: resilient backpropagation, a per-coordinate step size driven by the gradient's sign.

.. math::
    g_t &= \pm\nabla f(\theta_{t-1})                                                     \\
    s_t &= \operatorname{sign}(g_t\,g^{\text{prev}}_{t-1})                               \\
    \eta_t &= \begin{cases}
        \min(\eta_{t-1}\,\eta_+,\ \Gamma_{\max}) & s_t > 0 \\
        \max(\eta_{t-1}\,\eta_-,\ \Gamma_{\min}) & s_t < 0 \\
        \eta_{t-1} & s_t = 0 \end{cases}                                                 \\
    g^{\text{prev}}_t &= \begin{cases} 0 & s_t < 0 \\ g_t & \text{otherwise} \end{cases} \\
    \theta_t &= \theta_{t-1} - \eta_t\,\operatorname{sign}(g^{\text{prev}}_t)

with :math:`\eta_0 = \gamma` (``lr``) in every coordinate and :math:`g^{\text{prev}}_0 = 0`.
(Riedmiller & Braun, "A direct adaptive method for faster backpropagation learning: the RPROP
algorithm", 1993, in the variant without weight backtracking that Igel & Huesken call iRprop-:
where the sign flips, the coordinate does not move and its gradient is forgotten, so the next
step does not shrink it again.)
:math:`(\eta_-, \eta_+)` are ``etas``, :math:`(\Gamma_{\min}, \Gamma_{\max})` are ``step_sizes``;
the gradient's sign flips with ``maximize``. ``lr`` only sets the initial step size.

State per param: ``step`` (0-dim float tensor, only counted), ``prev``
(:math:`g^{\text{prev}}`), ``step_size`` (:math:`\eta`), as torch.optim.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

from ._optimizer import WorkbenchOptimizer, check_arguments, group_defaults
from ._spec import UpdateSpec


def _rprop_forloop(
    params: list[Tensor],
    grads: list[Tensor],
    prevs: list[Tensor],
    step_sizes: list[Tensor],
    steps: list[Tensor],
    *,
    etaminus: float,
    etaplus: float,
    step_size_min: float,
    step_size_max: float,
    maximize: bool,
    capturable: bool,
    differentiable: bool,
) -> None:
    # torch.where, not boolean-mask assignment: no host sync (the mask's size), and compilable.
    for param, grad, prev, step_size, step in zip(params, grads, prevs, step_sizes, steps):
        step += 1
        if maximize:
            grad = -grad
        # autograd saves `prev` for the product's backward, and prev is overwritten below
        sign = grad.mul(prev.clone() if differentiable else prev).sign()
        # sign is -1, 0 or 1 (torch.sign of a NaN is 0, on CPU and CUDA): where it is 0, sign + 1
        # is 1 and the step size stays
        factor = torch.where(sign > 0, etaplus, torch.where(sign < 0, etaminus, sign + 1))
        step_size.mul_(factor).clamp_(step_size_min, step_size_max)
        grad = torch.where(sign < 0, 0, grad)
        param.addcmul_(grad.sign(), step_size, value=-1)
        prev.copy_(grad)


def _rprop_foreach(
    params: list[Tensor],
    grads: list[Tensor],
    prevs: list[Tensor],
    step_sizes: list[Tensor],
    steps: list[Tensor],
    *,
    etaminus: float,
    etaplus: float,
    step_size_min: float,
    step_size_max: float,
    maximize: bool,
    capturable: bool,
    differentiable: bool,
) -> None:
    torch._foreach_add_(steps, 1.0)
    # Two temporary lists the size of the params; no per-tensor ops, so the number of launches
    # does not grow with the number of params.
    sign = torch._foreach_mul(grads, prevs)
    if maximize:
        torch._foreach_neg_(sign)
    torch._foreach_sign_(sign)
    # keep = 0 where the sign flipped, else 1: clamp(sign + 1, max=1)
    keep = torch._foreach_add(sign, 1.0)
    torch._foreach_clamp_max_(keep, 1.0)
    # factor = etaplus, etaminus or 1 for sign 1, -1, 0, exactly (no foreach `where`): sign * k + 1
    # with k >= etaplus is <= etaminus, 1 or >= etaplus, and the clamp returns its bounds as they
    # are. k stays finite in the params' dtype, or 0 * k would be NaN.
    k = min(2.0 * max(etaplus, 1.0), torch.finfo(params[0].dtype).max)
    torch._foreach_mul_(sign, k)
    torch._foreach_add_(sign, 1.0)
    torch._foreach_clamp_min_(sign, etaminus)
    torch._foreach_clamp_max_(sign, etaplus)
    torch._foreach_mul_(step_sizes, sign)
    torch._foreach_clamp_min_(step_sizes, step_size_min)
    torch._foreach_clamp_max_(step_sizes, step_size_max)
    del sign
    torch._foreach_copy_(prevs, grads)
    if maximize:
        torch._foreach_neg_(prevs)
    # An inf gradient where the sign flipped gives inf * 0 = nan, where the forloop (and torch's
    # foreach, with a torch.where per tensor) stores 0. Exact would take a `where` per tensor
    # (launches growing with the params) or several more passes to build clamp bounds: not done,
    # the nan prev is inexact only for non-finite gradients (tests/test_nonfinite.py excludes it).
    torch._foreach_mul_(prevs, keep)
    torch._foreach_copy_(keep, prevs)
    torch._foreach_sign_(keep)
    torch._foreach_addcmul_(params, keep, step_sizes, value=-1)


SPEC = UpdateSpec(
    kernel="rprop",
    forloop=_rprop_forloop,
    foreach=_rprop_foreach,
    state=("prev", "step_size"),
    # lr is not a hyperparameter of the update: it only initialized the step sizes
    hyper=("etaminus", "etaplus", "step_size_min", "step_size_max"),
    # read param, grad, prev, step_size; write param, prev, step_size
    reads=4,
    writes=3,
    # the update does not use the step: the Triton kernel need not read it
    triton_scalars=(),
)


class Rprop(WorkbenchOptimizer):
    """Rprop (see the module docstring for the update) with torch.optim.Rprop's signature."""

    spec = SPEC
    group_tuples = {
        "etas": ("etaminus", "etaplus"),
        "step_sizes": ("step_size_min", "step_size_max"),
    }

    def __init__(
        self,
        params: Iterable[Any],
        lr: float | Tensor = 1e-2,
        etas: tuple[float, float] = (0.5, 1.2),
        step_sizes: tuple[float, float] = (1e-6, 50),
        *,
        capturable: bool = False,
        foreach: bool | None = None,
        maximize: bool = False,
        differentiable: bool = False,
        backend: str | None = None,
        fused: bool | None = None,
    ) -> None:
        check_arguments(lr=lr)
        if not 0.0 < etas[0] < 1.0 < etas[1]:
            raise ValueError(f"Invalid eta values: {etas[0]}, {etas[1]}")
        super().__init__(params, group_defaults(locals()), backend=backend, fused=fused)

    def _initial_state(self, p: Tensor, group: dict[str, Any]) -> dict[str, Tensor]:
        lr = group["lr"]
        lr = float(lr.item()) if isinstance(lr, Tensor) else float(lr)
        # a complex param's step size is lr in both the real and the imaginary part
        fill = complex(lr, lr) if p.is_complex() else lr
        return {
            "prev": torch.zeros_like(p, memory_format=torch.preserve_format),
            "step_size": torch.full_like(p, fill, memory_format=torch.preserve_format),
        }
