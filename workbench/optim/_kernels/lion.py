"""Fused Lion: one Triton launch per (device, dtype) group, each element read and written once."""

from __future__ import annotations

import triton
import triton.language as tl
from torch import Tensor

from ._multi_tensor import chunk_of_program, launch, role_pointer
from ._storage import to_storage


@triton.jit
def lion_kernel(
    meta,
    n_tensors,
    n_chunks,
    lr,
    beta1,
    one_minus_beta1,
    beta2,
    one_minus_beta2,
    decay_factor,
    MAXIMIZE: tl.constexpr,
    DECAY: tl.constexpr,
    LR_IS_TENSOR: tl.constexpr,
    DTYPE: tl.constexpr,
    ALIGNED: tl.constexpr,
    BLOCK: tl.constexpr,
):
    t, offsets, mask = chunk_of_program(meta, 3, n_tensors, n_chunks, BLOCK, ALIGNED)
    param_ptr = role_pointer(meta, 0, n_tensors, t, DTYPE, ALIGNED) + offsets
    grad_ptr = role_pointer(meta, 1, n_tensors, t, DTYPE, ALIGNED) + offsets
    exp_avg_ptr = role_pointer(meta, 2, n_tensors, t, DTYPE, ALIGNED) + offsets

    # fp16/bf16 are widened to fp32 for the math; fp64 stays fp64.
    if tl.float64 == DTYPE:
        acc = tl.float64
    else:
        acc = tl.float32
    param = tl.load(param_ptr, mask=mask).to(acc)
    grad = tl.load(grad_ptr, mask=mask).to(acc)
    exp_avg = tl.load(exp_avg_ptr, mask=mask).to(acc)

    if LR_IS_TENSOR:
        lr_value = tl.load(lr).to(acc)
    else:
        lr_value = tl.cast(lr, acc)
    if MAXIMIZE:
        grad = -grad
    if DECAY:
        if LR_IS_TENSOR:
            # 1 - lr * weight_decay from the tensor lr, in its fp32, as the forloop forms it
            param *= (1.0 - tl.load(lr).to(tl.float32) * decay_factor).to(acc)
        else:
            param *= tl.cast(decay_factor, acc)
    interpolated = exp_avg * beta1 + grad * one_minus_beta1
    # torch.sign on CPU: 0 for a NaN too
    sign = tl.where(interpolated > 0, 1.0, tl.where(interpolated < 0, -1.0, 0.0)).to(acc)
    param -= sign * lr_value
    exp_avg = exp_avg * beta2 + grad * one_minus_beta2

    tl.store(param_ptr, to_storage(param, DTYPE), mask=mask)
    tl.store(exp_avg_ptr, to_storage(exp_avg, DTYPE), mask=mask)


def lion_fused_step(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    *,
    lr: float | Tensor,
    beta1: float,
    beta2: float,
    weight_decay: float,
    maximize: bool,
) -> None:
    """Update all tensors of one (device, dtype) group in one launch."""
    lr_is_tensor = isinstance(lr, Tensor)
    if lr_is_tensor and lr.device != params[0].device:
        lr = lr.to(params[0].device)
    decay = float(weight_decay) != 0
    # with a tensor lr the kernel forms 1 - lr * weight_decay itself: pass weight_decay then
    decay_factor = float(weight_decay) if lr_is_tensor else 1.0 - float(lr) * float(weight_decay)
    # floats, always: an int (weight_decay=0) would be typed i32 and compile a second kernel.
    # 1 - beta is taken here, in double, as the forloop's alpha= takes it.
    scalars = [float(beta1), 1.0 - float(beta1), float(beta2), 1.0 - float(beta2), decay_factor]
    launch(
        lion_kernel,
        (params, grads, exp_avgs),
        (),
        lr if lr_is_tensor else float(lr), *scalars,
        MAXIMIZE=maximize, DECAY=decay, LR_IS_TENSOR=lr_is_tensor,
    )  # fmt: skip
