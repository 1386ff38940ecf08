"""Fused Lion: one Triton launch per (device, dtype) group, each element read and written once."""

from __future__ import annotations

import triton
import triton.language as tl
from torch import Tensor

from ._multi_tensor import chunk_of_program, launch, load_role, read_lr, store_storage, to_math


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
    param_ptr, param = load_role(meta, 0, n_tensors, t, offsets, mask, DTYPE, ALIGNED)
    grad_ptr, grad = load_role(meta, 1, n_tensors, t, offsets, mask, DTYPE, ALIGNED)
    exp_avg_ptr, exp_avg = load_role(meta, 2, n_tensors, t, offsets, mask, DTYPE, ALIGNED)

    lr_value = read_lr(lr, LR_IS_TENSOR, DTYPE)
    if MAXIMIZE:
        grad = -grad
    if DECAY:
        if LR_IS_TENSOR:
            # 1 - lr * weight_decay from the tensor lr, in its fp32, as the forloop forms it
            param *= to_math(1.0 - tl.load(lr).to(tl.float32) * decay_factor, DTYPE)
        else:
            param *= to_math(decay_factor, DTYPE)
    interpolated = exp_avg * beta1 + grad * one_minus_beta1
    # torch.sign on CPU: 0 for a NaN too
    sign = to_math(tl.where(interpolated > 0, 1.0, tl.where(interpolated < 0, -1.0, 0.0)), DTYPE)
    param -= sign * lr_value
    exp_avg = exp_avg * beta2 + grad * one_minus_beta2

    store_storage(param_ptr, param, mask, DTYPE)
    store_storage(exp_avg_ptr, exp_avg, mask, DTYPE)


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
