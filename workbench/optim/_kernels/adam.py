"""Fused Adam / AdamW: one Triton launch per (device, dtype) group, each element read and written
once. AMSGrad adds one role; torch.amp.GradScaler's grad_scale and found_inf are read on the device.
"""

from __future__ import annotations

import math

import triton
import triton.language as tl
from torch import Tensor

from ._multi_tensor import (
    TL_DTYPES,
    chunk_of_program,
    launch,
    load_role,
    load_scalar_role,
    read_lr,
    store_storage,
    to_math,
)
from ._precise import div, sqrt
from ._terms import adam_decay

# rows of the pointer table: param, grad, exp_avg, exp_avg_sq, [max_exp_avg_sq,] step


@triton.jit
def adam_kernel(
    meta,
    n_tensors,
    n_chunks,
    lr,
    one_minus_beta1,
    one_minus_beta2,
    log_beta1,
    log_beta2,
    eps,
    weight_decay,
    grad_scale,
    found_inf,
    MAXIMIZE: tl.constexpr,
    DECOUPLED: tl.constexpr,
    AMSGRAD: tl.constexpr,
    LR_IS_TENSOR: tl.constexpr,
    STEP_DTYPE: tl.constexpr,
    DTYPE: tl.constexpr,
    ALIGNED: tl.constexpr,
    BLOCK: tl.constexpr,
):
    if AMSGRAD:
        n_roles: tl.constexpr = 6
    else:
        n_roles: tl.constexpr = 5
    t, offsets, mask = chunk_of_program(meta, n_roles, n_tensors, n_chunks, BLOCK, ALIGNED)
    # (two ifs: the first is resolved at compile time, the second, on the device, returns early)
    if found_inf is not None:  # noqa: SIM102
        # GradScaler saw an inf or NaN in some grad: the whole step is skipped, nothing is written
        if tl.load(found_inf) != 0:
            return

    # The host passes log(beta) and 1 - beta, which fp32 holds to full relative precision, unlike
    # beta itself (0.999 is 1.3e-8 off in fp32: 1 - beta2 would be 1.3e-5 off).
    step = load_scalar_role(meta, n_roles - 1, n_tensors, t, STEP_DTYPE).to(tl.float32)
    lr_value = read_lr(lr, LR_IS_TENSOR, DTYPE)
    # lr / bc1 * m / (sqrt(v) / sqrt(bc2) + eps) as (lr / bc1 * sqrt(bc2)) * m / (sqrt(v) + eps *
    # sqrt(bc2)): one division per element, not two (fp64 division is a long instruction
    # sequence: two spill registers in the widest launch, fp64 unaligned)
    bias_correction2_sqrt = sqrt(to_math(_one_minus_pow(log_beta2, step), DTYPE), DTYPE)
    step_size = div(lr_value, to_math(_one_minus_pow(log_beta1, step), DTYPE), DTYPE)
    step_size *= bias_correction2_sqrt
    eps_value = to_math(eps, DTYPE) * bias_correction2_sqrt
    beta2 = 1.0 - to_math(one_minus_beta2, DTYPE)

    param_ptr, param = load_role(meta, 0, n_tensors, t, offsets, mask, DTYPE, ALIGNED)
    grad_ptr, grad = load_role(meta, 1, n_tensors, t, offsets, mask, DTYPE, ALIGNED)
    exp_avg_ptr, exp_avg = load_role(meta, 2, n_tensors, t, offsets, mask, DTYPE, ALIGNED)
    exp_avg_sq_ptr, exp_avg_sq = load_role(meta, 3, n_tensors, t, offsets, mask, DTYPE, ALIGNED)

    if grad_scale is not None:
        # unscale in place, as torch's fused Adam does: the caller sees the true gradient after
        grad = div(grad, to_math(tl.load(grad_scale), DTYPE), DTYPE)
        store_storage(grad_ptr, grad, mask, DTYPE)
    decay = 1.0 - lr_value * to_math(weight_decay, DTYPE)  # (used by decoupled decay alone)
    param, grad = adam_decay(param, grad, weight_decay, decay, MAXIMIZE, DECOUPLED)
    exp_avg += to_math(one_minus_beta1, DTYPE) * (grad - exp_avg)
    exp_avg_sq = exp_avg_sq * beta2 + to_math(one_minus_beta2, DTYPE) * grad * grad
    # stored as soon as known: their addresses need no register through the root and division
    store_storage(exp_avg_ptr, exp_avg, mask, DTYPE)
    store_storage(exp_avg_sq_ptr, exp_avg_sq, mask, DTYPE)
    if AMSGRAD:
        max_ptr, max_exp_avg_sq = load_role(meta, 4, n_tensors, t, offsets, mask, DTYPE, ALIGNED)
        # NaN-propagating, as torch.maximum is (tl.maximum's default returns the other operand)
        max_exp_avg_sq = tl.maximum(max_exp_avg_sq, exp_avg_sq, propagate_nan=tl.PropagateNan.ALL)
        store_storage(max_ptr, max_exp_avg_sq, mask, DTYPE)
        second_moment = max_exp_avg_sq
    else:
        second_moment = exp_avg_sq
    param -= div(step_size * exp_avg, sqrt(second_moment, DTYPE) + eps_value, DTYPE)

    store_storage(param_ptr, param, mask, DTYPE)


@triton.jit
def _one_minus_pow(log_beta, step):
    """1 - beta^step (fp32) from log(beta), to fp32's relative precision.

    Early on, beta2^t is close to 1 and 1 - exp(x) would cancel (and the GPU's fast exp is only
    accurate to a few units of 1, not of 1 - exp(x)): where |x| <= 1/2, -expm1(x) comes from its
    Taylor series, whose ten terms reach fp32's precision; beyond, nothing cancels. (Triton's
    interpreter has no libdevice expm1.) Only plain fp32 arithmetic: fp64's exp would spill
    registers in the widest launches."""
    x = step * log_beta
    near = tl.maximum(x, -0.5)  # finite even for beta = 0 (log_beta = -inf)
    series = 1.0 + near * 0.1
    for k in tl.static_range(9, 1, -1):
        series = 1.0 + near * (1.0 / k) * series
    return tl.where(x >= -0.5, -near * series, 1.0 - tl.exp(x))


def _log(beta: float) -> float:
    # log(0) = -inf gives beta^t = exp(-inf) = 0, the right answer for beta = 0.
    return math.log(beta) if beta > 0 else -math.inf


def adam_fused_step(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    max_exp_avg_sqs: list[Tensor],
    steps: list[Tensor],
    *,
    lr: float | Tensor,
    beta1: float | Tensor,
    beta2: float | Tensor,
    eps: float,
    weight_decay: float,
    amsgrad: bool,
    decoupled_weight_decay: bool,
    maximize: bool,
    grad_scale: Tensor | None = None,
    found_inf: Tensor | None = None,
) -> None:
    """Update all tensors of one (device, dtype) group in one launch; `steps` are already
    incremented. Tensor betas are read on the host (as torch's fused Adam reads them)."""
    device = params[0].device
    lr_is_tensor = isinstance(lr, Tensor)
    if lr_is_tensor and lr.device != device:
        lr = lr.to(device)
    if grad_scale is not None and grad_scale.device != device:
        grad_scale = grad_scale.to(device, non_blocking=True)
    if found_inf is not None and found_inf.device != device:
        found_inf = found_inf.to(device, non_blocking=True)
    beta1, beta2 = float(beta1), float(beta2)
    # floats, always: an int (weight_decay=0) would be typed i32 and compile a second kernel
    scalars = [
        float(x) for x in (1.0 - beta1, 1.0 - beta2, _log(beta1), _log(beta2), eps, weight_decay)
    ]
    roles = [params, grads, exp_avgs, exp_avg_sqs] + ([max_exp_avg_sqs] if amsgrad else [])
    launch(
        adam_kernel,
        roles,
        (steps,),
        lr if lr_is_tensor else float(lr), *scalars, grad_scale, found_inf,
        MAXIMIZE=maximize, DECOUPLED=decoupled_weight_decay, AMSGRAD=amsgrad,
        LR_IS_TENSOR=lr_is_tensor, STEP_DTYPE=TL_DTYPES[steps[0].dtype],
    )  # fmt: skip
