"""Fused Adamax: one Triton launch per (device, dtype) group, each element read and written once."""

from __future__ import annotations

import math

import triton
import triton.language as tl
from torch import Tensor

from ._multi_tensor import TL_DTYPES, chunk_of_program, launch, role_pointer
from ._storage import to_storage

# rows of the pointer table
_PARAM, _GRAD, _EXP_AVG, _EXP_INF, _STEP = range(5)


@triton.jit
def adamax_kernel(
    meta,
    n_tensors,
    n_chunks,
    lr,
    beta1,
    log2_beta1,
    beta2,
    eps,
    weight_decay,
    MAXIMIZE: tl.constexpr,
    LR_IS_TENSOR: tl.constexpr,
    STEP_DTYPE: tl.constexpr,
    DTYPE: tl.constexpr,
    ALIGNED: tl.constexpr,
    BLOCK: tl.constexpr,
):
    t, offsets, mask = chunk_of_program(meta, 5, n_tensors, n_chunks, BLOCK, ALIGNED)
    param_ptr = role_pointer(meta, 0, n_tensors, t, DTYPE, ALIGNED) + offsets
    grad_ptr = role_pointer(meta, 1, n_tensors, t, DTYPE, ALIGNED) + offsets
    exp_avg_ptr = role_pointer(meta, 2, n_tensors, t, DTYPE, ALIGNED) + offsets
    exp_inf_ptr = role_pointer(meta, 3, n_tensors, t, DTYPE, ALIGNED) + offsets
    step_ptr = role_pointer(meta, 4, n_tensors, t, STEP_DTYPE, False)

    # fp16/bf16 are widened to fp32 for the math; fp64 stays fp64.
    if tl.float64 == DTYPE:
        acc = tl.float64
    else:
        acc = tl.float32
    param = tl.load(param_ptr, mask=mask).to(acc)
    grad = tl.load(grad_ptr, mask=mask).to(acc)
    exp_avg = tl.load(exp_avg_ptr, mask=mask).to(acc)
    exp_inf = tl.load(exp_inf_ptr, mask=mask).to(acc)

    if MAXIMIZE:
        grad = -grad
    if weight_decay != 0.0:  # skipped like torch does, so an inf param gives no 0 * inf = nan
        grad += weight_decay * param
    exp_avg += (1 - beta1) * (grad - exp_avg)
    # NaN-propagating, as torch.maximum is (tl.maximum's default returns the other operand)
    exp_inf = tl.maximum(exp_inf * beta2, tl.abs(grad) + eps, propagate_nan=tl.PropagateNan.ALL)

    # step and lr are read on the device, so the launch is the same every step (graph-capturable).
    step = tl.load(step_ptr).to(tl.float32)
    bias_correction = 1.0 - tl.exp2(step * log2_beta1)
    if LR_IS_TENSOR:
        lr_value = tl.load(lr).to(tl.float32)
    else:
        lr_value = lr
    step_size = (lr_value / bias_correction).to(acc)
    param -= step_size * (exp_avg / exp_inf)

    tl.store(param_ptr, to_storage(param, DTYPE), mask=mask)
    tl.store(exp_avg_ptr, to_storage(exp_avg, DTYPE), mask=mask)
    tl.store(exp_inf_ptr, to_storage(exp_inf, DTYPE), mask=mask)


def adamax_fused_step(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_infs: list[Tensor],
    steps: list[Tensor],
    *,
    lr: float | Tensor,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    maximize: bool,
) -> None:
    """Update all tensors of one (device, dtype) group in one launch; `steps` are incremented."""
    lr_is_tensor = isinstance(lr, Tensor)
    if lr_is_tensor and lr.device != params[0].device:
        lr = lr.to(params[0].device)
    # log2(0) = -inf gives beta1**step = exp2(-inf) = 0, the right answer for beta1 = 0.
    log2_beta1 = math.log2(beta1) if beta1 > 0 else -math.inf
    # floats, always: an int (weight_decay=0) would be typed i32 and compile a second kernel
    scalars = [float(x) for x in (beta1, log2_beta1, beta2, eps, weight_decay)]
    launch(
        adamax_kernel,
        (params, grads, exp_avgs, exp_infs),
        (steps,),
        lr if lr_is_tensor else float(lr), *scalars,
        MAXIMIZE=maximize, LR_IS_TENSOR=lr_is_tensor, STEP_DTYPE=TL_DTYPES[steps[0].dtype],
    )  # fmt: skip
