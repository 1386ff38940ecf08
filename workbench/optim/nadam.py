r"""NAdam: Adam with Nesterov momentum and a warming-up momentum schedule.

.. math::
    g_t &= \pm\nabla f(\theta_{t-1}) + \lambda\,\theta_{t-1}
        \quad\text{(or } \theta_{t-1} \leftarrow (1-\gamma\lambda)\,\theta_{t-1}
        \text{ when decoupled)}                                                  \\
    \mu_t &= \beta_1\,(1 - \tfrac12\, 0.96^{t\psi})                              \\
    \Pi_t &= \Pi_{t-1}\,\mu_t                                                    \\
    m_t &= \beta_1 m_{t-1} + (1-\beta_1)\,g_t                                    \\
    v_t &= \beta_2 v_{t-1} + (1-\beta_2)\,g_t^2                                  \\
    \theta_t &= \theta_{t-1} - \gamma\,
        \frac{\frac{1-\mu_t}{1-\Pi_t}\,g_t + \frac{\mu_{t+1}}{1-\Pi_t\mu_{t+1}}\,m_t}
             {\sqrt{v_t / (1-\beta_2^t)} + \epsilon}

(Dozat, "Incorporating Nesterov Momentum into Adam", 2016.) :math:`\psi` is ``momentum_decay``;
:math:`\lambda` is ``weight_decay``, an L2 penalty added to the gradient, or with
``decoupled_weight_decay`` a decay of the param itself (as AdamW does). The gradient's sign flips
with ``maximize``.

State per param: ``step`` (0-dim float tensor), ``mu_product`` (:math:`\Pi_t`, 0-dim float tensor
kept where ``step`` is), ``exp_avg`` (m), ``exp_avg_sq`` (v), as torch.optim.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

from . import _backends
from ._foreach import foreach_grads
from ._materialize import materialize
from ._optimizer import WorkbenchOptimizer, check_arguments, group_defaults
from ._spec import UpdateSpec, decoupled_decay_factor


def _mu(beta1: float, step: Any, momentum_decay: float) -> Any:
    """The momentum coefficient of step `step` (a float, or a tensor on the device)."""
    return beta1 * (1.0 - 0.5 * 0.96 ** (step * momentum_decay))


def _math_dtype(t: Tensor) -> torch.dtype:
    # Scalar coefficients are computed in fp64 and cast before they meet the elements: a 1-element
    # (compiled) coefficient would otherwise promote fp32 elements to fp64.
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _nadam_forloop(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    mu_products: list[Tensor],
    steps: list[Tensor],
    *,
    lr: float | Tensor,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    momentum_decay: float,
    decoupled_weight_decay: bool,
    maximize: bool,
    capturable: bool,
    differentiable: bool,
) -> None:
    compiling = torch.compiler.is_compiling()
    on_device = capturable or compiling or (differentiable and isinstance(lr, Tensor))
    for param, grad, exp_avg, exp_avg_sq, mu_product, step in zip(
        params, grads, exp_avgs, exp_avg_sqs, mu_products, steps
    ):
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
            # Everything scalar stays a device tensor, in fp64: 1 - beta2^t at t=1 is 1e-3 for the
            # default beta2, and fp32 would leave it only four correct digits.
            t = step.to(torch.float64)
            mu = _mu(beta1, t, momentum_decay)
            mu_next = _mu(beta1, t + 1, momentum_decay)
            mu_product.mul_(mu)
            dtype = _math_dtype(param)
            grad_coef = materialize((lr * (mu - 1) / (1 - mu_product)).to(dtype))
            avg_coef = materialize((-lr * mu_next / (1 - mu_product * mu_next)).to(dtype))
            bias_correction2 = materialize((1 - beta2**t).to(dtype))
            denom = (exp_avg_sq / bias_correction2).sqrt() + eps
            # two updates, as torch.optim makes them: in fp16/bf16 the param is rounded after each
            param.addcdiv_(grad * grad_coef, denom)
            param.addcdiv_(exp_avg * avg_coef, denom)
        else:
            t = step.item()
            mu = _mu(beta1, t, momentum_decay)
            mu_next = _mu(beta1, t + 1, momentum_decay)
            mu_product.mul_(mu)
            # the product as stored (fp32), like torch.optim
            product = mu_product.item()
            lr_value = float(lr)
            denom = exp_avg_sq.div(1 - beta2**t).sqrt_()
            # autograd needs sqrt's output as it was: no in-place add when differentiating
            denom = denom + eps if differentiable else denom.add_(eps)
            param.addcdiv_(grad, denom, value=-lr_value * (1 - mu) / (1 - product))
            param.addcdiv_(exp_avg, denom, value=-lr_value * mu_next / (1 - product * mu_next))


def _nadam_foreach(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    mu_products: list[Tensor],
    steps: list[Tensor],
    *,
    lr: float | Tensor,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    momentum_decay: float,
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
    denom = torch._foreach_sqrt(exp_avg_sqs)

    if capturable:
        # Per-tensor coefficients as one fp64 vector on the device (a handful of launches
        # whatever the number of tensors), then one 0-dim view per tensor.
        dtype = _math_dtype(params[0])
        t = torch.stack(steps).to(torch.float64)
        mu = _mu(beta1, t, momentum_decay)
        mu_next = _mu(beta1, t + 1, momentum_decay)
        torch._foreach_mul_(mu_products, list(mu.unbind()))
        product = torch.stack(mu_products).to(torch.float64)  # as stored, like torch.optim
        torch._foreach_div_(denom, list((1 - beta2**t).sqrt().to(dtype).unbind()))
        torch._foreach_add_(denom, eps)
        grad_coef = list((lr * (mu - 1) / (1 - product)).to(dtype).unbind())
        avg_coef = list((-lr * mu_next / (1 - product * mu_next)).to(dtype).unbind())
        # two updates, as torch.optim makes them (in fp16/bf16 the param is rounded after each),
        # through one temporary list
        if g is grads:
            g = torch._foreach_mul(grads, grad_coef)
        else:
            torch._foreach_mul_(g, grad_coef)
        torch._foreach_addcdiv_(params, g, denom)
        torch._foreach_copy_(g, exp_avgs)
        torch._foreach_mul_(g, avg_coef)
        torch._foreach_addcdiv_(params, g, denom)
    else:
        ts = [s.item() for s in steps]
        mus = [_mu(beta1, t, momentum_decay) for t in ts]
        mu_nexts = [_mu(beta1, t + 1, momentum_decay) for t in ts]
        torch._foreach_mul_(mu_products, mus)
        products = [p.item() for p in mu_products]
        torch._foreach_div_(denom, [(1 - beta2**t) ** 0.5 for t in ts])
        torch._foreach_add_(denom, eps)
        lr_value = float(lr)
        grad_sizes = [-lr_value * (1 - mu) / (1 - p) for mu, p in zip(mus, products)]
        avg_sizes = [-lr_value * mn / (1 - p * mn) for mn, p in zip(mu_nexts, products)]
        torch._foreach_addcdiv_(params, g, denom, grad_sizes)
        torch._foreach_addcdiv_(params, exp_avgs, denom, avg_sizes)


SPEC = UpdateSpec(
    kernel="nadam",
    forloop=_nadam_forloop,
    foreach=_nadam_foreach,
    state=("exp_avg", "exp_avg_sq"),
    scalars=("mu_product", "step"),
    hyper=("lr", "beta1", "beta2", "eps", "weight_decay", "momentum_decay", "decay_factor"),
    flags=("decoupled_weight_decay", "maximize"),
    derived={"decay_factor": decoupled_decay_factor},
    # read param, grad, exp_avg, exp_avg_sq; write param, exp_avg, exp_avg_sq
    reads=4,
    writes=3,
    triton_scalars=("mu_product", "step"),
    triton_counts_steps=True,
)


class NAdam(WorkbenchOptimizer):
    """NAdam (see the module docstring for the update) with torch.optim.NAdam's signature."""

    # mu_product is a 0-dim tensor per param, not param-shaped: see _initial_state
    spec = SPEC
    setstate_defaults = {"decoupled_weight_decay": False}

    def __init__(
        self,
        params: Iterable[Any],
        lr: float | Tensor = 2e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0,
        momentum_decay: float = 4e-3,
        decoupled_weight_decay: bool = False,
        *,
        foreach: bool | None = None,
        maximize: bool = False,
        capturable: bool = False,
        differentiable: bool = False,
        backend: str | None = None,
        fused: bool | None = None,
    ) -> None:
        check_arguments(
            lr=lr, eps=eps, betas=betas, weight_decay=weight_decay, momentum_decay=momentum_decay
        )
        super().__init__(params, group_defaults(locals()), backend=backend, fused=fused)

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            for p in group["params"]:
                st = self.state.get(p)
                if st and "mu_product" in st and not torch.is_tensor(st["mu_product"]):
                    st["mu_product"] = torch.tensor(
                        float(st["mu_product"]), dtype=_backends.scalar_dtype()
                    )

    def _initial_state(self, p: Tensor, group: dict[str, Any]) -> dict[str, Tensor]:
        state = super()._initial_state(p, group)  # the moments
        state["mu_product"] = torch.ones((), dtype=_backends.scalar_dtype())
        return state

    def _state_for(self, p: Tensor, group: dict[str, Any], device_step: bool) -> dict[str, Tensor]:
        state = super()._state_for(p, group, device_step)
        # mu_product lives where step does: on the param's device for the device-step backends
        # (the kernel reads it there), on the host otherwise, as torch.optim keeps it. A state_dict
        # loaded into torch.optim's policy may have put it elsewhere.
        if state["mu_product"].device != state["step"].device:
            state["mu_product"] = state["mu_product"].to(state["step"].device)
        return state
