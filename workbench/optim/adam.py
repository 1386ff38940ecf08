r"""Adam, with L2 or decoupled (AdamW) weight decay and the AMSGrad variant.

.. math::
    g_t &= \pm\nabla f(\theta_{t-1}) + \lambda\,\theta_{t-1}
        \quad\text{(or } \theta_{t-1} \leftarrow (1-\gamma\lambda)\,\theta_{t-1}
        \text{ when decoupled)}                                                  \\
    m_t &= \beta_1 m_{t-1} + (1-\beta_1)\,g_t                                    \\
    v_t &= \beta_2 v_{t-1} + (1-\beta_2)\,g_t^2                                  \\
    \hat v_t &= \max(\hat v_{t-1}, v_t) \text{ with amsgrad, else } v_t          \\
    \theta_t &= \theta_{t-1} - \frac{\gamma}{1-\beta_1^t}\,
        \frac{m_t}{\sqrt{\hat v_t}\,/\sqrt{1-\beta_2^t} + \epsilon}

(Kingma & Ba, "Adam: A Method for Stochastic Optimization"; Reddi et al., "On the Convergence of
Adam and Beyond" for AMSGrad; Loshchilov & Hutter, "Decoupled Weight Decay Regularization" for
the decoupled decay, which is all AdamW adds: see adamw.py.) The gradient's sign flips with
``maximize``; :math:`\lambda` is ``weight_decay``.

State per param: ``step`` (0-dim float tensor), ``exp_avg`` (m), ``exp_avg_sq`` (v) and, with
``amsgrad``, ``max_exp_avg_sq`` (:math:`\hat v`), as torch.optim.

lr and betas may be tensors. Where the step runs on the device (capturable, compiled, or a
differentiable step with tensor hyperparameters) they stay there; elsewhere they are read once on
the host, as torch.optim does. On the device the per-tensor scalars (bias corrections, step size)
are computed in fp64, as torch's fused CUDA kernels compute them: with beta2 close to 1,
1 - beta2^t computed in fp32 keeps only a few digits (the Triton kernel gets the same precision
in fp32 from an expm1, see _kernels/adam.py).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

from ._foreach import foreach_grads
from ._materialize import materialize
from ._optimizer import WorkbenchOptimizer, check_arguments, check_fused_flags, group_defaults
from ._spec import UpdateSpec, decoupled_decay_factor

Scalar = float | Tensor


def _scalar_dtype(t: Tensor) -> torch.dtype:
    # The dtype the per-tensor scalars meet the elements in: fp32 for fp16/bf16 (their math runs
    # in fp32 anyway), else the param's own, so that a 1-element scalar (compiled) never promotes
    # fp32 elements to fp64.
    return t.dtype if t.dtype in (torch.float32, torch.float64) else torch.float32


def _step_scalars(
    steps: Tensor, lr: Scalar, beta1: Scalar, beta2: Scalar, dtype: torch.dtype
) -> tuple[Tensor, Tensor]:
    """(-lr / (1 - beta1^t), sqrt(1 - beta2^t)) for step counts `steps`, on their device, in
    `dtype`: computed in fp64, then rounded once."""
    t = steps.to(torch.float64)
    b1 = beta1.to(t) if isinstance(beta1, Tensor) else beta1
    b2 = beta2.to(t) if isinstance(beta2, Tensor) else beta2
    neg_step_size = -lr / (1 - b1**t)
    return neg_step_size.to(dtype), (1 - b2**t).sqrt().to(dtype)


def _like(x: Scalar, t: Tensor, dtype: torch.dtype) -> Scalar:
    """A tensor hyperparameter moved to `t`'s device in `dtype` (torch's lerp_ wants them there)."""
    return x.to(device=t.device, dtype=dtype) if isinstance(x, Tensor) else x


def _adam_forloop(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    max_exp_avg_sqs: list[Tensor],
    steps: list[Tensor],
    *,
    lr: Scalar,
    beta1: Scalar,
    beta2: Scalar,
    eps: float,
    weight_decay: Scalar,
    amsgrad: bool,
    decoupled_weight_decay: bool,
    maximize: bool,
    capturable: bool,
    differentiable: bool,
) -> None:
    compiling = torch.compiler.is_compiling()
    tensor_hyper = any(isinstance(x, Tensor) for x in (lr, beta1, beta2))
    # With step (and maybe lr, betas) as device tensors, the bias corrections stay on the device:
    # no host sync, and a compiled graph that does not depend on their values.
    on_device = capturable or compiling or (differentiable and tensor_hyper)
    if not on_device:
        lr, beta1, beta2 = float(lr), float(beta1), float(beta2)
    for i, (param, grad, exp_avg, exp_avg_sq, step) in enumerate(
        zip(params, grads, exp_avgs, exp_avg_sqs, steps)
    ):
        step += 1
        if maximize:
            grad = -grad
        if isinstance(weight_decay, Tensor) or weight_decay != 0:
            if decoupled_weight_decay:
                param.mul_(1 - lr * weight_decay)
            elif isinstance(weight_decay, Tensor):
                # a tensor weight decay may carry a hypergradient: multiply, do not read it as alpha
                grad = grad.addcmul(param, weight_decay)
            else:
                grad = grad.add(param, alpha=weight_decay)

        dtype = _scalar_dtype(param)
        b1, b2 = _like(beta1, param, dtype), _like(beta2, param, dtype)
        exp_avg.lerp_(grad, 1 - b1)
        if isinstance(b2, Tensor):
            # addcmul_'s `value` must be a number
            exp_avg_sq.mul_(b2).addcmul_(grad, grad * (1 - b2))
        else:
            exp_avg_sq.mul_(b2).addcmul_(grad, grad, value=1 - b2)
        second_moment = exp_avg_sq
        if amsgrad:
            max_sq = max_exp_avg_sqs[i]
            if differentiable:
                # maximum saves its inputs for backward: copies, since both change in place later
                max_sq.copy_(torch.maximum(max_sq.clone(), exp_avg_sq.clone()))
            elif compiling:
                max_sq.copy_(torch.maximum(max_sq, exp_avg_sq))  # dynamo takes no `out=`
            else:
                torch.maximum(max_sq, exp_avg_sq, out=max_sq)
            second_moment = max_sq

        if on_device:
            neg_step_size, bc2_sqrt = _step_scalars(step, lr, beta1, beta2, dtype)
            # theta += m / ((sqrt(v) / bc2_sqrt + eps) / -step_size): the tensor scalars fold into
            # the denominator (addcdiv_'s `value` must be a number), at no extra pass.
            scale = materialize(bc2_sqrt * neg_step_size)
            offset = materialize(eps / neg_step_size)
            denom = (second_moment.sqrt() / scale).add_(offset)
            # the saved numerator must not be the exp_avg the next step updates in place
            param.addcdiv_(exp_avg.clone() if differentiable else exp_avg, denom)
        else:
            t = step.item()
            step_size = lr / (1 - beta1**t)
            denom = (second_moment.sqrt() / (1 - beta2**t) ** 0.5).add_(eps)
            param.addcdiv_(exp_avg, denom, value=-step_size)


def _adam_foreach(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    max_exp_avg_sqs: list[Tensor],
    steps: list[Tensor],
    *,
    lr: Scalar,
    beta1: Scalar,
    beta2: Scalar,
    eps: float,
    weight_decay: Scalar,
    amsgrad: bool,
    decoupled_weight_decay: bool,
    maximize: bool,
    capturable: bool,
    differentiable: bool,
) -> None:
    weight_decay = float(weight_decay)
    if not capturable:
        lr, beta1, beta2 = float(lr), float(beta1), float(beta2)
    device = params[0].device
    dtype = _scalar_dtype(params[0])
    b1, b2 = _like(beta1, params[0], dtype), _like(beta2, params[0], dtype)
    torch._foreach_add_(steps, 1.0)

    # g is the caller's grads when nothing changes them; otherwise one temporary list, freed
    # before the denominator's: one param-sized temporary at a time.
    coupled_decay = 0 if decoupled_weight_decay else weight_decay
    g = foreach_grads(grads, params, maximize=maximize, weight_decay=coupled_decay)
    if decoupled_weight_decay and weight_decay != 0:
        decay = 1 - lr * weight_decay
        torch._foreach_mul_(params, decay.to(device) if isinstance(decay, Tensor) else decay)
    if isinstance(b1, Tensor):
        # a list of 0-dim weights: the Scalar overload would read a tensor weight on the host
        torch._foreach_lerp_(exp_avgs, g, [1 - b1] * len(params))
    else:
        torch._foreach_lerp_(exp_avgs, g, 1 - b1)
    torch._foreach_mul_(exp_avg_sqs, b2)
    if isinstance(b2, Tensor):
        # _foreach_addcmul_ takes no tensor `value`
        scaled = torch._foreach_mul(g, 1 - b2)
        torch._foreach_addcmul_(exp_avg_sqs, scaled, g)
        del scaled
    else:
        torch._foreach_addcmul_(exp_avg_sqs, g, g, 1 - b2)
    del g
    if amsgrad:
        torch._foreach_maximum_(max_exp_avg_sqs, exp_avg_sqs)
    denom = torch._foreach_sqrt(max_exp_avg_sqs if amsgrad else exp_avg_sqs)

    if capturable:
        # every tensor's scalars at once, from the stacked step counters: a few launches, no sync
        neg_step_sizes, bc2_sqrts = _step_scalars(torch.stack(steps), lr, beta1, beta2, dtype)
        torch._foreach_div_(denom, list(bc2_sqrts.unbind()))
        torch._foreach_add_(denom, eps)
        torch._foreach_div_(denom, list(neg_step_sizes.unbind()))
        torch._foreach_addcdiv_(params, exp_avgs, denom)
    else:
        counts = [s.item() for s in steps]
        torch._foreach_div_(denom, [(1 - beta2**t) ** 0.5 for t in counts])
        torch._foreach_add_(denom, eps)
        step_sizes = [-lr / (1 - beta1**t) for t in counts]
        torch._foreach_addcdiv_(params, exp_avgs, denom, step_sizes)


SPEC = UpdateSpec(
    kernel="adam",
    forloop=_adam_forloop,
    foreach=_adam_foreach,
    state=("exp_avg", "exp_avg_sq", "max_exp_avg_sq"),
    optional={"max_exp_avg_sq": lambda values: bool(values.get("amsgrad", False))},
    hyper=("lr", "beta1", "beta2", "eps", "weight_decay", "grad_scale", "decay_factor"),
    flags=("amsgrad", "decoupled_weight_decay", "maximize"),
    derived={"decay_factor": decoupled_decay_factor},
    # read param, grad, exp_avg, exp_avg_sq; write param, exp_avg, exp_avg_sq (amsgrad: and
    # max_exp_avg_sq)
    reads=4,
    writes=3,
    amp=True,
)


def check_hyperparameters(
    lr: Scalar,
    betas: tuple[Scalar, Scalar],
    eps: float,
    weight_decay: Scalar,
    foreach: bool | None,
    capturable: bool,
) -> None:
    """torch.optim.Adam's argument checks, in its order, with its messages and error types."""
    if isinstance(lr, Tensor) and foreach and not capturable:
        raise ValueError("lr as a Tensor is not supported for capturable=False and foreach=True")
    check_arguments(lr=lr, eps=eps, betas=betas, weight_decay=weight_decay)
    tensors = [isinstance(b, Tensor) for b in betas]
    if not (all(tensors) or all(isinstance(b, float) for b in betas)):
        raise ValueError("betas must be either both floats or both Tensors")
    for i, beta in enumerate(betas):
        if isinstance(beta, Tensor):
            if foreach and not capturable:
                raise ValueError(
                    f"betas[{i}] as a Tensor is not supported for capturable=False and foreach=True"
                )
            if beta.numel() != 1:
                raise ValueError(f"Tensor betas[{i}] must be 1-element")


class Adam(WorkbenchOptimizer):
    """Adam (see the module docstring for the update) with torch.optim.Adam's signature. Tensor
    betas are read on the host by the fused backend (as by torch's fused Adam).
    """

    spec = SPEC
    setstate_defaults = {"amsgrad": False, "fused": None, "decoupled_weight_decay": False}

    def __init__(
        self,
        params: Iterable[Any],
        lr: Scalar = 1e-3,
        betas: tuple[Scalar, Scalar] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: Scalar = 0,
        amsgrad: bool = False,
        *,
        foreach: bool | None = None,
        maximize: bool = False,
        capturable: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
        decoupled_weight_decay: bool = False,
        backend: str | None = None,
    ) -> None:
        check_hyperparameters(lr, betas, eps, weight_decay, foreach, capturable)
        check_fused_flags(fused, foreach, differentiable)
        defaults = group_defaults(locals(), with_fused=True)
        # 1-element tensor betas are kept as 0-dim tensors, as torch.optim keeps them
        beta1, beta2 = (b.squeeze() if isinstance(b, Tensor) else b for b in betas)
        defaults["betas"] = (beta1, beta2)
        super().__init__(params, defaults, backend=backend, fused=fused)

    def _state_for(self, p: Tensor, group: dict[str, Any], device_step: bool) -> dict[str, Tensor]:
        state = super()._state_for(p, group, device_step)
        if group["amsgrad"] and "max_exp_avg_sq" not in state:
            # amsgrad switched on after this param's first step: its maximum starts from zero
            state["max_exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        return state
