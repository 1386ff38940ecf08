"""Fused RAdam: one Triton launch per (device, dtype) group, each element read and written once.

Whether a tensor's step is rectified (rho_t > 5) depends on its step alone: each program works it
out from the step it reads on the device, so the switch costs no host sync and the launch is the
same every step (graph-capturable).
"""

from __future__ import annotations

import triton
import triton.language as tl
from torch import Tensor

from ._multi_tensor import (
    TL_DTYPES,
    chunk_of_program,
    launch,
    load_role,
    load_scalar_role,
    store_storage,
    to_math,
)
from ._precise import log2
from ._terms import adam_decay, lr_and_decay, moments

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

    # Per-tensor scalars, once per program, in fp64: rho_t is the difference of two numbers near
    # rho_inf (2e3 for the default beta2) and is compared with 5. beta2 enters only through
    # log2_beta2, so rho_inf and beta2^t describe the same (fp32-rounded) beta2 and their
    # difference stays exact.
    step = load_scalar_role(meta, _STEP, n_tensors, t, STEP_DTYPE).to(tl.float64)
    lr_value, decay = lr_and_decay(lr, weight_decay, LR_IS_TENSOR, DTYPE)
    log2_b2 = tl.cast(log2_beta2, tl.float64)
    beta2_t = tl.exp2(step * log2_b2)
    bias_correction1 = 1.0 - tl.exp2(step * tl.cast(log2_beta1, tl.float64))
    bias_correction2 = 1.0 - beta2_t
    rho_inf = 2.0 / (1.0 - tl.exp2(log2_b2)) - 1.0
    rho_t = rho_inf - 2.0 * step * beta2_t / bias_correction2
    rectified = rho_t > 5.0
    rect_sq = (rho_t - 4.0) * (rho_t - 2.0) * rho_inf / ((rho_inf - 4.0) * (rho_inf - 2.0) * rho_t)
    rect = tl.sqrt(tl.maximum(rect_sq, 0.0))  # negative only where it is not used
    adaptive = to_math(lr_value * rect * tl.sqrt(bias_correction2) / bias_correction1, DTYPE)
    plain = to_math(lr_value / bias_correction1, DTYPE)

    param_ptr, param = load_role(meta, _PARAM, n_tensors, t, offsets, mask, DTYPE, ALIGNED)
    grad_ptr, grad = load_role(meta, _GRAD, n_tensors, t, offsets, mask, DTYPE, ALIGNED)
    exp_avg_ptr, exp_avg = load_role(meta, _EXP_AVG, n_tensors, t, offsets, mask, DTYPE, ALIGNED)
    exp_avg_sq_ptr, exp_avg_sq = load_role(
        meta, _EXP_AVG_SQ, n_tensors, t, offsets, mask, DTYPE, ALIGNED
    )

    param, grad = adam_decay(param, grad, weight_decay, decay, MAXIMIZE, DECOUPLED)
    exp_avg, exp_avg_sq = moments(
        grad, exp_avg, exp_avg_sq, one_minus_beta1, one_minus_beta2, DTYPE
    )
    # The state is stored before the square root and the division: in fp64 each has a slow path
    # that ptxas makes a call, and values live across a call spill (fp64 unaligned launches have
    # 64 registers a thread). Stored first, no value stays live only to be stored after them.
    store_storage(exp_avg_ptr, exp_avg, mask, DTYPE)
    store_storage(exp_avg_sq_ptr, exp_avg_sq, mask, DTYPE)
    # the switch is uniform over the program: a select, no divergence
    scale = tl.where(rectified, adaptive / (tl.sqrt(exp_avg_sq) + eps), plain)
    param -= exp_avg * scale
    store_storage(param_ptr, param, mask, DTYPE)


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
        float(x) for x in (1.0 - beta1, 1.0 - beta2, log2(beta1), log2(beta2), eps, weight_decay)
    ]
    launch(
        radam_kernel,
        (params, grads, exp_avgs, exp_avg_sqs),
        (steps,),
        lr if lr_is_tensor else float(lr), *scalars,
        MAXIMIZE=maximize, DECOUPLED=decoupled_weight_decay, LR_IS_TENSOR=lr_is_tensor,
        STEP_DTYPE=TL_DTYPES[steps[0].dtype],
    )  # fmt: skip
