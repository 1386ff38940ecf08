"""Fused Adadelta: one Triton launch per (device, dtype) group, each element moved once."""

from __future__ import annotations

import triton
import triton.language as tl
from torch import Tensor

from ._multi_tensor import (
    chunk_of_program,
    launch,
    load_math,
    read_lr,
    role_pointer,
    store_storage,
)
from ._terms import coupled_grad


@triton.jit
def adadelta_kernel(
    meta,
    n_tensors,
    n_chunks,
    lr,
    rho,
    one_minus_rho,
    eps,
    weight_decay,
    MAXIMIZE: tl.constexpr,
    LR_IS_TENSOR: tl.constexpr,
    DTYPE: tl.constexpr,
    ALIGNED: tl.constexpr,
    BLOCK: tl.constexpr,
):
    # rows of the pointer table: param, grad, square_avg, acc_delta (no scalar roles: the update
    # does not depend on the step)
    # fp64 sqrt and division are long routines that keep many registers live: at launch()'s warps
    # a whole chunk spills, so fp64 chunks are updated in four parts, one after the other.
    PARTS: tl.constexpr = 4 if tl.float64 == DTYPE else 1
    PART: tl.constexpr = BLOCK // PARTS
    t, offsets, _ = chunk_of_program(meta, 4, n_tensors, n_chunks, PART, ALIGNED)
    numel = tl.load(meta + 4 * n_tensors + t)  # the row after the pointers (see _multi_tensor.py)
    if ALIGNED:
        numel = tl.multiple_of(numel, 16)  # as in chunk_of_program: masks uniform per 16
    param_ptr = role_pointer(meta, 0, n_tensors, t, DTYPE, ALIGNED)
    grad_ptr = role_pointer(meta, 1, n_tensors, t, DTYPE, ALIGNED)
    square_avg_ptr = role_pointer(meta, 2, n_tensors, t, DTYPE, ALIGNED)
    acc_delta_ptr = role_pointer(meta, 3, n_tensors, t, DTYPE, ALIGNED)
    lr_value = read_lr(lr, LR_IS_TENSOR, DTYPE)

    for part in tl.static_range(PARTS):
        o = offsets + part * PART
        mask = o < numel
        param = load_math(param_ptr + o, mask, DTYPE)
        grad = load_math(grad_ptr + o, mask, DTYPE)
        square_avg = load_math(square_avg_ptr + o, mask, DTYPE)
        acc_delta = load_math(acc_delta_ptr + o, mask, DTYPE)

        grad = coupled_grad(grad, param, weight_decay, MAXIMIZE)
        square_avg = square_avg * rho + one_minus_rho * grad * grad
        # Correctly rounded sqrt and division, as torch computes them: fp32's plain sqrt and `/`
        # are approximate on a GPU (fp64's are exact, and have no _rn forms).
        if tl.float64 == DTYPE:
            delta = tl.sqrt(acc_delta + eps) / tl.sqrt(square_avg + eps) * grad
        else:
            delta = tl.div_rn(tl.sqrt_rn(acc_delta + eps), tl.sqrt_rn(square_avg + eps)) * grad
        acc_delta = acc_delta * rho + one_minus_rho * delta * delta
        param -= lr_value * delta

        store_storage(param_ptr + o, param, mask, DTYPE)
        store_storage(square_avg_ptr + o, square_avg, mask, DTYPE)
        store_storage(acc_delta_ptr + o, acc_delta, mask, DTYPE)


def adadelta_fused_step(
    params: list[Tensor],
    grads: list[Tensor],
    square_avgs: list[Tensor],
    acc_deltas: list[Tensor],
    *,
    lr: float | Tensor,
    rho: float,
    eps: float,
    weight_decay: float,
    maximize: bool,
) -> None:
    """Update all tensors of one (device, dtype) group in one launch."""
    lr_is_tensor = isinstance(lr, Tensor)
    if lr_is_tensor and lr.device != params[0].device:
        lr = lr.to(params[0].device)
    # 1 - rho is rounded from double once here, not computed in the kernel from a rounded rho.
    # Floats, always: an int (weight_decay=0) would be typed i32 and compile a second kernel.
    scalars = [float(x) for x in (rho, 1.0 - rho, eps, weight_decay)]
    launch(
        adadelta_kernel,
        (params, grads, square_avgs, acc_deltas),
        (),
        lr if lr_is_tensor else float(lr), *scalars,
        MAXIMIZE=maximize, LR_IS_TENSOR=lr_is_tensor,
    )  # fmt: skip
