"""Fused RAdam: one Triton launch per (device, dtype) group, each element read and written once.

Whether a tensor's step is rectified (rho_t > 5) depends on its step alone: each program works it
out from the step it reads on the device, so the switch costs no host sync and the launch is the
same every step (graph-capturable).
"""

from __future__ import annotations

import math

import triton
import triton.language as tl
from torch import Tensor

from ._multi_tensor import TL_DTYPES, chunk_of_program, launch, role_pointer
from ._storage import to_storage

# rows of the pointer table (constexpr: a kernel may read no other globals)
_PARAM, _GRAD, _EXP_AVG, _EXP_AVG_SQ, _STEP = map(tl.constexpr, range(5))


@triton.jit
def radam_kernel(
    meta,
    n_tensors,
    n_chunks,
    lr,
    one_minus_beta1,
    one_minus_beta2,
    log2_beta1,
    log2_beta2,
    eps,
    weight_decay,
    MAXIMIZE: tl.constexpr,
    DECOUPLED: tl.constexpr,
    LR_IS_TENSOR: tl.constexpr,
    STEP_DTYPE: tl.constexpr,
    DTYPE: tl.constexpr,
    ALIGNED: tl.constexpr,
    BLOCK: tl.constexpr,
):
    t, offsets, mask = chunk_of_program(meta, 5, n_tensors, n_chunks, BLOCK, ALIGNED)
    param_ptr = role_pointer(meta, _PARAM, n_tensors, t, DTYPE, ALIGNED) + offsets
    grad_ptr = role_pointer(meta, _GRAD, n_tensors, t, DTYPE, ALIGNED) + offsets
    exp_avg_ptr = role_pointer(meta, _EXP_AVG, n_tensors, t, DTYPE, ALIGNED) + offsets
    exp_avg_sq_ptr = role_pointer(meta, _EXP_AVG_SQ, n_tensors, t, DTYPE, ALIGNED) + offsets
    step_ptr = role_pointer(meta, _STEP, n_tensors, t, STEP_DTYPE, False)

    if tl.float64 == DTYPE:
        acc = tl.float64
    else:
        acc = tl.float32

    # Per-tensor scalars, once per program, in fp64: rho_t is the difference of two numbers near
    # rho_inf (2e3 for the default beta2) and is compared with 5. beta2 enters only through
    # log2_beta2, so rho_inf and beta2^t describe the same (fp32-rounded) beta2 and their
    # difference stays exact.
    step = tl.load(step_ptr).to(tl.float64)
    if LR_IS_TENSOR:
        lr_stored = tl.load(lr)
        lr_value = lr_stored.to(tl.float64)
        # torch.optim forms 1 - lr * weight_decay in the dtype of a tensor lr (fp32 rounding of
        # a factor that scales the whole param): do the same
        decay = (1.0 - lr_stored * weight_decay).to(acc)
    else:
        lr_value = tl.cast(lr, tl.float64)
        decay = (1.0 - lr_value * tl.cast(weight_decay, tl.float64)).to(acc)
    log2_b2 = tl.cast(log2_beta2, tl.float64)
    beta2_t = tl.exp2(step * log2_b2)
    bias_correction1 = 1.0 - tl.exp2(step * tl.cast(log2_beta1, tl.float64))
    bias_correction2 = 1.0 - beta2_t
    rho_inf = 2.0 / (1.0 - tl.exp2(log2_b2)) - 1.0
    rho_t = rho_inf - 2.0 * step * beta2_t / bias_correction2
    rectified = rho_t > 5.0
    rect_sq = (rho_t - 4.0) * (rho_t - 2.0) * rho_inf / ((rho_inf - 4.0) * (rho_inf - 2.0) * rho_t)
    rect = tl.sqrt(tl.maximum(rect_sq, 0.0))  # negative only where it is not used
    adaptive = (lr_value * rect * tl.sqrt(bias_correction2) / bias_correction1).to(acc)
    plain = (lr_value / bias_correction1).to(acc)

    param = tl.load(param_ptr, mask=mask).to(acc)
    grad = tl.load(grad_ptr, mask=mask).to(acc)
    exp_avg = tl.load(exp_avg_ptr, mask=mask).to(acc)
    exp_avg_sq = tl.load(exp_avg_sq_ptr, mask=mask).to(acc)

    if MAXIMIZE:
        grad = -grad
    if DECOUPLED:
        param *= decay
    else:
        # skipped like torch does, so an inf param gives no 0 * inf = nan; a select, not a
        # branch: an `if` here makes the fp64 unaligned launch spill
        grad = tl.where(weight_decay != 0.0, grad + weight_decay * param, grad)
    exp_avg += one_minus_beta1 * (grad - exp_avg)
    # beta2 * v + (1 - beta2) * g^2 as torch writes it, not as a lerp v + (1 - beta2) * (g^2 - v):
    # once v is inf, the lerp gives inf - inf = nan where torch keeps inf
    beta2 = 1.0 - tl.cast(one_minus_beta2, acc)  # in fp64 for fp64: exactly 1 - (1 - beta2)
    exp_avg_sq = exp_avg_sq * beta2 + one_minus_beta2 * (grad * grad)
    # The state is stored before the square root and the division: in fp64 each has a slow path
    # that ptxas makes a call, and values live across a call spill (fp64 unaligned launches have
    # 64 registers a thread). Stored first, no value stays live only to be stored after them.
    tl.store(exp_avg_ptr, to_storage(exp_avg, DTYPE), mask=mask)
    tl.store(exp_avg_sq_ptr, to_storage(exp_avg_sq, DTYPE), mask=mask)
    # the switch is uniform over the program: a select, no divergence
    scale = tl.where(rectified, adaptive / (tl.sqrt(exp_avg_sq) + eps), plain)
    param -= exp_avg * scale
    tl.store(param_ptr, to_storage(param, DTYPE), mask=mask)


def _log2(x: float) -> float:
    # log2(0) = -inf makes 0^t = exp2(-inf) = 0, the right answer for a zero beta
    return math.log2(x) if x > 0 else -math.inf


def radam_fused_step(
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
) -> None:
    """Update all tensors of one (device, dtype) group in one launch; `steps` are incremented."""
    lr_is_tensor = isinstance(lr, Tensor)
    if lr_is_tensor and lr.device != params[0].device:
        lr = lr.to(params[0].device)
    # Python floats, always: an int (weight_decay=0) would be typed i32 and compile another kernel.
    # 1 - beta is passed rather than formed in fp32 from the rounded beta, which for beta2 = 0.999
    # would be off by 3e-5 relative.
    scalars = [
        float(x) for x in (1.0 - beta1, 1.0 - beta2, _log2(beta1), _log2(beta2), eps, weight_decay)
    ]
    launch(
        radam_kernel,
        (params, grads, exp_avgs, exp_avg_sqs),
        (steps,),
        lr if lr_is_tensor else float(lr), *scalars,
        MAXIMIZE=maximize, DECOUPLED=decoupled_weight_decay, LR_IS_TENSOR=lr_is_tensor,
        STEP_DTYPE=TL_DTYPES[steps[0].dtype],
    )  # fmt: skip
