"""Fused Adam / AdamW: one Triton launch per (device, dtype) group, each element read and written
once. AMSGrad adds one role; torch.amp.GradScaler's grad_scale and found_inf are read on the device.
"""

from __future__ import annotations

import math

import triton
import triton.language as tl
from torch import Tensor

from ._multi_tensor import TL_DTYPES, chunk_of_program, launch, role_pointer
from ._precise import div, sqrt
from ._storage import to_storage

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
    param_ptr = role_pointer(meta, 0, n_tensors, t, DTYPE, ALIGNED) + offsets
    grad_ptr = role_pointer(meta, 1, n_tensors, t, DTYPE, ALIGNED) + offsets
    exp_avg_ptr = role_pointer(meta, 2, n_tensors, t, DTYPE, ALIGNED) + offsets
    exp_avg_sq_ptr = role_pointer(meta, 3, n_tensors, t, DTYPE, ALIGNED) + offsets
    step_ptr = role_pointer(meta, n_roles - 1, n_tensors, t, STEP_DTYPE, False)
    # (two ifs: the first is resolved at compile time, the second, on the device, returns early)
    if found_inf is not None:  # noqa: SIM102
        # GradScaler saw an inf or NaN in some grad: the whole step is skipped, nothing is written
        if tl.load(found_inf) != 0:
            return

    # fp16/bf16 are widened to fp32 for the math; fp64 stays fp64.
    if tl.float64 == DTYPE:
        acc = tl.float64
    else:
        acc = tl.float32
    # The host passes log(beta) and 1 - beta, which fp32 holds to full relative precision, unlike
    # beta itself (0.999 is 1.3e-8 off in fp32: 1 - beta2 would be 1.3e-5 off).
    step = tl.load(step_ptr).to(tl.float32)
    if LR_IS_TENSOR:
        lr_value = tl.load(lr).to(acc)
    else:
        lr_value = tl.cast(lr, acc)
    # lr / bc1 * m / (sqrt(v) / sqrt(bc2) + eps) as (lr / bc1 * sqrt(bc2)) * m / (sqrt(v) + eps *
    # sqrt(bc2)): one division per element, not two (fp64 division is a long instruction
    # sequence: two spill registers in the widest launch, fp64 unaligned)
    bias_correction2_sqrt = sqrt(_one_minus_pow(log_beta2, step).to(acc), DTYPE)
    step_size = div(lr_value, _one_minus_pow(log_beta1, step).to(acc), DTYPE)
    step_size *= bias_correction2_sqrt
    eps_value = tl.cast(eps, acc) * bias_correction2_sqrt
    beta2 = 1.0 - tl.cast(one_minus_beta2, acc)

    param = tl.load(param_ptr, mask=mask).to(acc)
    grad = tl.load(grad_ptr, mask=mask).to(acc)
    exp_avg = tl.load(exp_avg_ptr, mask=mask).to(acc)
    exp_avg_sq = tl.load(exp_avg_sq_ptr, mask=mask).to(acc)

    if grad_scale is not None:
        # unscale in place, as torch's fused Adam does: the caller sees the true gradient after
        grad = div(grad, tl.load(grad_scale).to(acc), DTYPE)
        tl.store(grad_ptr, to_storage(grad, DTYPE), mask=mask)
    if MAXIMIZE:
        grad = -grad
    if DECOUPLED:
        param *= 1.0 - lr_value * tl.cast(weight_decay, acc)
    else:
        # skipped like torch does, so an inf param gives no 0 * inf = nan; a select, not a
        # branch: an `if` here makes the fp64 unaligned launch spill
        grad = tl.where(weight_decay != 0.0, grad + tl.cast(weight_decay, acc) * param, grad)
    exp_avg += tl.cast(one_minus_beta1, acc) * (grad - exp_avg)
    exp_avg_sq = exp_avg_sq * beta2 + tl.cast(one_minus_beta2, acc) * grad * grad
    # stored as soon as known: their addresses need no register through the root and division
    tl.store(exp_avg_ptr, to_storage(exp_avg, DTYPE), mask=mask)
    tl.store(exp_avg_sq_ptr, to_storage(exp_avg_sq, DTYPE), mask=mask)
    if AMSGRAD:
        max_exp_avg_sq_ptr = role_pointer(meta, 4, n_tensors, t, DTYPE, ALIGNED) + offsets
        max_exp_avg_sq = tl.load(max_exp_avg_sq_ptr, mask=mask).to(acc)
        # NaN-propagating, as torch.maximum is (tl.maximum's default returns the other operand)
        max_exp_avg_sq = tl.maximum(max_exp_avg_sq, exp_avg_sq, propagate_nan=tl.PropagateNan.ALL)
        tl.store(max_exp_avg_sq_ptr, to_storage(max_exp_avg_sq, DTYPE), mask=mask)
        second_moment = max_exp_avg_sq
    else:
        second_moment = exp_avg_sq
    param -= div(step_size * exp_avg, sqrt(second_moment, DTYPE) + eps_value, DTYPE)

    tl.store(param_ptr, to_storage(param, DTYPE), mask=mask)


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
