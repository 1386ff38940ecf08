"""Fused Adamax: one Triton launch per (device, dtype) group, each element read and written once."""

from __future__ import annotations

import triton
import triton.language as tl
from torch import Tensor

from ._multi_tensor import (
    TL_DTYPES,
    chunk_of_program,
    launch,
    load_math,
    read_lr,
    role_pointer,
    store_storage,
    to_math,
)
from ._precise import log2
from ._terms import coupled_grad

# rows of the pointer table (constexpr: a kernel may read no other globals)
_PARAM, _GRAD, _EXP_AVG, _EXP_INF, _STEP = map(tl.constexpr, range(5))


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
    # every address first, then every load: loaded role by role (load_role), the 16-bit unaligned
    # launches spill on sm_80
    param_ptr = role_pointer(meta, _PARAM, n_tensors, t, DTYPE, ALIGNED) + offsets
    grad_ptr = role_pointer(meta, _GRAD, n_tensors, t, DTYPE, ALIGNED) + offsets
    exp_avg_ptr = role_pointer(meta, _EXP_AVG, n_tensors, t, DTYPE, ALIGNED) + offsets
    exp_inf_ptr = role_pointer(meta, _EXP_INF, n_tensors, t, DTYPE, ALIGNED) + offsets
    step_ptr = role_pointer(meta, _STEP, n_tensors, t, STEP_DTYPE, False)
    param = load_math(param_ptr, mask, DTYPE)
    grad = load_math(grad_ptr, mask, DTYPE)
    exp_avg = load_math(exp_avg_ptr, mask, DTYPE)
    exp_inf = load_math(exp_inf_ptr, mask, DTYPE)

    grad = coupled_grad(grad, param, weight_decay, MAXIMIZE)
    exp_avg += (1 - beta1) * (grad - exp_avg)
    # NaN-propagating, as torch.maximum is (tl.maximum's default returns the other operand)
    exp_inf = tl.maximum(exp_inf * beta2, tl.abs(grad) + eps, propagate_nan=tl.PropagateNan.ALL)

    # step and lr are read on the device, so the launch is the same every step (graph-capturable).
    step = tl.load(step_ptr).to(tl.float32)
    bias_correction = 1.0 - tl.exp2(step * log2_beta1)
    step_size = to_math(read_lr(lr, LR_IS_TENSOR, tl.float32) / bias_correction, DTYPE)
    param -= step_size * (exp_avg / exp_inf)

    store_storage(param_ptr, param, mask, DTYPE)
    store_storage(exp_avg_ptr, exp_avg, mask, DTYPE)
    store_storage(exp_inf_ptr, exp_inf, mask, DTYPE)


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
    log2_beta1 = log2(beta1)
    # floats, always: an int (weight_decay=0) would be typed i32 and compile a second kernel
    scalars = [float(x) for x in (beta1, log2_beta1, beta2, eps, weight_decay)]
    launch(
        adamax_kernel,
        (params, grads, exp_avgs, exp_infs),
        (steps,),
        lr if lr_is_tensor else float(lr), *scalars,
        MAXIMIZE=maximize, LR_IS_TENSOR=lr_is_tensor, STEP_DTYPE=TL_DTYPES[steps[0].dtype],
    )  # fmt: skip
