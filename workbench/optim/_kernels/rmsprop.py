"""Fused RMSprop: one Triton launch per (device, dtype) group, each element read and written once.

The momentum buffer and the gradient average are roles only when their flag is on, so a plain
RMSprop step moves three tensors in and two out. The step counter is not read: RMSprop has no bias
correction, and the host increments it.
"""

from __future__ import annotations

import triton
import triton.language as tl
from torch import Tensor

from . import _precise
from ._multi_tensor import chunk_of_program, launch, load_role, store_storage, to_math
from ._terms import coupled_grad


@triton.jit
def rmsprop_kernel(
    meta,
    n_tensors,
    n_chunks,
    lr,
    lr_lo,
    alpha,
    alpha_lo,
    one_minus_alpha,
    one_minus_alpha_lo,
    eps,
    eps_lo,
    weight_decay,
    weight_decay_lo,
    momentum,
    momentum_lo,
    MAXIMIZE: tl.constexpr,
    HAS_MOMENTUM: tl.constexpr,
    CENTERED: tl.constexpr,
    LR_IS_TENSOR: tl.constexpr,
    DTYPE: tl.constexpr,
    ALIGNED: tl.constexpr,
    BLOCK: tl.constexpr,
):
    # roles: param, grad, square_avg, then momentum_buffer (with momentum), grad_avg (centered)
    if HAS_MOMENTUM:
        buf_role = 3
        grad_avg_role = 4
    else:
        grad_avg_role = 3
    if CENTERED:
        n_roles = grad_avg_role + 1
    else:
        n_roles = grad_avg_role
    t, offsets, mask = chunk_of_program(meta, n_roles, n_tensors, n_chunks, BLOCK, ALIGNED)
    param_ptr, param = load_role(meta, 0, n_tensors, t, offsets, mask, DTYPE, ALIGNED)
    grad_ptr, grad = load_role(meta, 1, n_tensors, t, offsets, mask, DTYPE, ALIGNED)
    square_avg_ptr, square_avg = load_role(meta, 2, n_tensors, t, offsets, mask, DTYPE, ALIGNED)
    # hyperparameters come as fp32 pairs (see _precise.split): fp64 math uses both halves
    alpha = _precise.widen(alpha, alpha_lo, DTYPE)
    one_minus_alpha = _precise.widen(one_minus_alpha, one_minus_alpha_lo, DTYPE)
    eps = _precise.widen(eps, eps_lo, DTYPE)
    weight_decay = _precise.widen(weight_decay, weight_decay_lo, DTYPE)
    momentum = _precise.widen(momentum, momentum_lo, DTYPE)

    grad = coupled_grad(grad, param, weight_decay, MAXIMIZE)
    square_avg = alpha * square_avg + one_minus_alpha * grad * grad
    if CENTERED:
        grad_avg_ptr, grad_avg = load_role(
            meta, grad_avg_role, n_tensors, t, offsets, mask, DTYPE, ALIGNED
        )
        grad_avg += one_minus_alpha * (grad - grad_avg)
        store_storage(grad_avg_ptr, grad_avg, mask, DTYPE)
        denominator = _precise.sqrt(square_avg - grad_avg * grad_avg, DTYPE) + eps
    else:
        denominator = _precise.sqrt(square_avg, DTYPE) + eps
    store_storage(square_avg_ptr, square_avg, mask, DTYPE)

    if LR_IS_TENSOR:
        lr_value = to_math(tl.load(lr), DTYPE)  # read on the device: see read_lr
    else:
        lr_value = _precise.widen(lr, lr_lo, DTYPE)
    if HAS_MOMENTUM:
        buf_ptr, buf = load_role(meta, buf_role, n_tensors, t, offsets, mask, DTYPE, ALIGNED)
        buf = momentum * buf + _precise.div(grad, denominator, DTYPE)
        store_storage(buf_ptr, buf, mask, DTYPE)
        param -= lr_value * buf
    else:
        param -= lr_value * _precise.div(grad, denominator, DTYPE)
    store_storage(param_ptr, param, mask, DTYPE)


def rmsprop_fused_step(
    params: list[Tensor],
    grads: list[Tensor],
    square_avgs: list[Tensor],
    momentum_buffers: list[Tensor] | None,
    grad_avgs: list[Tensor] | None,
    *,
    lr: float | Tensor,
    alpha: float,
    eps: float,
    weight_decay: float,
    momentum: float,
    maximize: bool,
    centered: bool | None = None,
) -> None:
    """Update all tensors of one (device, dtype) group in one launch. momentum_buffers is empty
    (or None) without momentum, grad_avgs when not centered: the lists say which buffers there
    are, and `centered` (the flag the fused backend passes along) must agree."""
    if centered is not None and centered != bool(grad_avgs):
        given = len(grad_avgs or [])
        raise ValueError(f"rmsprop_fused_step: centered={centered} with {given} grad_avgs")
    lr_is_tensor = isinstance(lr, Tensor)
    if lr_is_tensor and lr.device != params[0].device:
        lr = lr.to(params[0].device)
    roles = [params, grads, square_avgs]
    roles += [r for r in (momentum_buffers, grad_avgs) if r]
    # floats, always (an int weight_decay=0 would be typed i32 and compile a second kernel).
    # 1 - alpha is taken here, in double: from alpha rounded to fp32 it would be 1e-6 off.
    lr_pair = (lr, 0.0) if lr_is_tensor else _precise.split(float(lr))
    hyper = (alpha, 1 - alpha, eps, weight_decay, momentum)
    scalars = [half for x in hyper for half in _precise.split(float(x))]
    launch(
        rmsprop_kernel,
        roles,
        (),
        *lr_pair, *scalars,
        MAXIMIZE=maximize, HAS_MOMENTUM=bool(momentum_buffers),
        CENTERED=bool(grad_avgs), LR_IS_TENSOR=lr_is_tensor,
    )  # fmt: skip
