r"""RAdam: Adam whose adaptive step is switched on, and rectified, once its variance is tractable.

.. math::
    g_t &= \pm\nabla f(\theta_{t-1}) + \lambda\,\theta_{t-1}
        \quad\text{(or } \theta_{t-1} \leftarrow (1-\gamma\lambda)\,\theta_{t-1}
        \text{ when decoupled)}                                                  \\
    m_t &= \beta_1 m_{t-1} + (1-\beta_1)\,g_t                                    \\
    v_t &= \beta_2 v_{t-1} + (1-\beta_2)\,g_t^2                                  \\
    \rho_\infty &= \frac{2}{1-\beta_2} - 1, \qquad
    \rho_t = \rho_\infty - \frac{2t\beta_2^t}{1-\beta_2^t}                       \\
    \theta_t &= \theta_{t-1} - \frac{\gamma}{1-\beta_1^t}\, m_t \cdot
        \begin{cases}
            r_t\,\dfrac{\sqrt{1-\beta_2^t}}{\sqrt{v_t} + \epsilon} & \rho_t > 5 \\
            1 & \text{otherwise}
        \end{cases}, \qquad
    r_t = \sqrt{\frac{(\rho_t-4)(\rho_t-2)\,\rho_\infty}{(\rho_\infty-4)(\rho_\infty-2)\,\rho_t}}

(Liu et al., "On the Variance of the Adaptive Learning Rate and Beyond", 2020.) The switch depends
on the step alone, never on the data. :math:`\lambda` is ``weight_decay``, an L2 penalty added to
the gradient, or with ``decoupled_weight_decay`` a decay of the param itself (as AdamW does). The
gradient's sign flips with ``maximize``.

State per param: ``step`` (0-dim float tensor), ``exp_avg`` (m), ``exp_avg_sq`` (v), as
torch.optim.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

from ._foreach import foreach_grads
from ._materialize import materialize
from ._optimizer import WorkbenchOptimizer, check_arguments, group_defaults
from ._spec import UpdateSpec, decoupled_decay_factor


def _rectification(rho_t: Any, rho_inf: float) -> Any:
    """r_t: defined (and used) where rho_t > 5 only; a float, or a tensor on the device."""
    return ((rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t)) ** 0.5


def _step_coefficients(t: Tensor, beta1: float, beta2: float) -> tuple[Tensor, Tensor, Tensor]:
    """(rho_t > 5, rectified step size, plain step size) per step count, the sizes / lr, in fp64,
    on t's device.

    The rectified size is zero where rho_t <= 5, the plain one where rho_t > 5. rho_t is
    the difference of two numbers near rho_inf (2e3 for the default beta2) and the switch sits at
    5: it is computed in fp64, as torch.optim does on the host.
    """
    rho_inf = 2 / (1 - beta2) - 1
    beta2_t = beta2**t
    bias_correction1 = 1 - beta1**t
    bias_correction2 = 1 - beta2_t
    rho_t = rho_inf - 2 * t * beta2_t / bias_correction2
    rectified = rho_t > 5
    # r_t is NaN for rho_t in (2, 4): select before it meets anything that carries a gradient
    rect = torch.where(rectified, _rectification(rho_t, rho_inf), 0.0)
    adaptive = rect * bias_correction2.sqrt() / bias_correction1
    plain = torch.where(rectified, 0.0, 1 / bias_correction1)
    return rectified, adaptive, plain


def _math_dtype(t: Tensor) -> torch.dtype:
    # fp64 coefficients are cast before they meet the elements: a 1-element (compiled)
    # coefficient would otherwise promote fp32 elements to fp64.
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _radam_forloop(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    steps: list[Tensor],
    *,
    lr: float | Tensor,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    decoupled_weight_decay: bool,
    maximize: bool,
    capturable: bool,
    differentiable: bool,
) -> None:
    compiling = torch.compiler.is_compiling()
    on_device = capturable or compiling or (differentiable and isinstance(lr, Tensor))
    rho_inf = 2 / (1 - beta2) - 1
    for param, grad, exp_avg, exp_avg_sq, step in zip(params, grads, exp_avgs, exp_avg_sqs, steps):
        step += 1
        if maximize:
            grad = -grad
        if weight_decay != 0:
            if decoupled_weight_decay:
                param.mul_(1 - lr * weight_decay)
            else:
                grad = grad.add(param, alpha=weight_decay)
        exp_avg.lerp_(grad, 1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        if on_device:
            # The switch is a select between two per-element scales, not a host branch.
            rectified, adaptive, plain = _step_coefficients(step.to(torch.float64), beta1, beta2)
            dtype = _math_dtype(param)
            adaptive = materialize((lr * adaptive).to(dtype))
            plain = materialize((lr * plain).to(dtype))
            rectified = materialize(rectified)
            scale = torch.where(rectified, adaptive / (exp_avg_sq.sqrt() + eps), plain)
            param.sub_(exp_avg * scale)
        else:
            t = step.item()
            lr_value = float(lr)
            bias_correction1 = 1 - beta1**t
            bias_correction2 = 1 - beta2**t
            rho_t = rho_inf - 2 * t * beta2**t / bias_correction2
            if rho_t > 5:
                size = lr_value * _rectification(rho_t, rho_inf) * bias_correction2**0.5
                denom = exp_avg_sq.sqrt()
                # autograd needs sqrt's output as it was: no in-place add when differentiating
                denom = denom + eps if differentiable else denom.add_(eps)
                param.addcdiv_(exp_avg, denom, value=-size / bias_correction1)
            else:
                param.add_(exp_avg, alpha=-lr_value / bias_correction1)


def _radam_foreach(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    steps: list[Tensor],
    *,
    lr: float | Tensor,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    decoupled_weight_decay: bool,
    maximize: bool,
    capturable: bool,
    differentiable: bool,
) -> None:
    torch._foreach_add_(steps, 1.0)
    coupled_decay = 0 if decoupled_weight_decay else weight_decay
    g = foreach_grads(grads, params, maximize=maximize, weight_decay=coupled_decay)
    if decoupled_weight_decay and weight_decay != 0:
        torch._foreach_mul_(params, 1 - lr * weight_decay)
    torch._foreach_lerp_(exp_avgs, g, 1 - beta1)
    torch._foreach_mul_(exp_avg_sqs, beta2)
    torch._foreach_addcmul_(exp_avg_sqs, g, g, 1 - beta2)
    del g

    if capturable:
        # Per-tensor coefficients as one fp64 vector on the device, then one 0-dim view per
        # tensor. scale = adaptive / (sqrt(v) + eps) + plain: one of the two terms is zero.
        t = torch.stack(steps).to(torch.float64)
        _, adaptive, plain = _step_coefficients(t, beta1, beta2)
        dtype = _math_dtype(params[0])
        scale = torch._foreach_sqrt(exp_avg_sqs)
        torch._foreach_add_(scale, eps)
        torch._foreach_reciprocal_(scale)
        torch._foreach_mul_(scale, list((-lr * adaptive).to(dtype).unbind()))
        torch._foreach_add_(scale, list((-lr * plain).to(dtype).unbind()))
        torch._foreach_addcmul_(params, exp_avgs, scale)
        return

    # On the host: the rectified tensors go through one update, the others through one per step
    # size (in practice all tensors of a group share their step: one update in all, and the steps
    # before the switch need no temporary at all).
    lr_value = float(lr)
    rho_inf = 2 / (1 - beta2) - 1
    rectified: list[tuple[int, float]] = []
    plain: dict[float, list[int]] = {}
    for i, step in enumerate(steps):
        t = step.item()
        bias_correction2 = 1 - beta2**t
        rho_t = rho_inf - 2 * t * beta2**t / bias_correction2
        size = -lr_value / (1 - beta1**t)
        if rho_t > 5:
            rectified.append((i, size * _rectification(rho_t, rho_inf) * bias_correction2**0.5))
        else:
            plain.setdefault(size, []).append(i)
    if rectified:
        index, sizes = zip(*rectified)
        denom = torch._foreach_sqrt([exp_avg_sqs[i] for i in index])
        torch._foreach_add_(denom, eps)
        torch._foreach_addcdiv_(
            [params[i] for i in index], [exp_avgs[i] for i in index], denom, list(sizes)
        )
    for size, index in plain.items():
        torch._foreach_add_([params[i] for i in index], [exp_avgs[i] for i in index], alpha=size)


SPEC = UpdateSpec(
    kernel="radam",
    forloop=_radam_forloop,
    foreach=_radam_foreach,
    state=("exp_avg", "exp_avg_sq"),
    hyper=("lr", "beta1", "beta2", "eps", "weight_decay", "decay_factor"),
    flags=("decoupled_weight_decay", "maximize"),
    derived={"decay_factor": decoupled_decay_factor},
    # read param, grad, exp_avg, exp_avg_sq; write param, exp_avg, exp_avg_sq. The steps before
    # the switch need not read exp_avg_sq, but every step must update it.
    reads=4,
    writes=3,
)


class RAdam(WorkbenchOptimizer):
    """RAdam (see the module docstring for the update) with torch.optim.RAdam's signature."""

    spec = SPEC
    setstate_defaults = {"decoupled_weight_decay": False}

    def __init__(
        self,
        params: Iterable[Any],
        lr: float | Tensor = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0,
        decoupled_weight_decay: bool = False,
        *,
        foreach: bool | None = None,
        maximize: bool = False,
        capturable: bool = False,
        differentiable: bool = False,
        backend: str | None = None,
        fused: bool | None = None,
    ) -> None:
        check_arguments(lr=lr, eps=eps, betas=betas, weight_decay=weight_decay)
        super().__init__(params, group_defaults(locals()), backend=backend, fused=fused)
