"""Fused SGD: one Triton launch per (device, dtype) group, each element read and written once.

Without momentum a step moves param and grad only; with it, the buffer too. The first step of a
buffer writes it without reading it (FIRST_STEP), as torch's fused SGD does. GradScaler's
grad_scale and found_inf are read on the device: the grads are unscaled in the kernel (and written
back unscaled, as torch's fused kernels leave them), and a nonzero found_inf masks every access
away, so a skipped step moves no memory.
"""

from __future__ import annotations

import triton
import triton.language as tl
from torch import Tensor

from . import _precise
from ._multi_tensor import (
    chunk_of_program,
    launch,
    load_math,
    load_role,
    role_pointer,
    store_storage,
    to_math,
)
from ._terms import coupled_grad, unless_found_inf, unscale


@triton.jit
def sgd_kernel(
    meta,
    n_tensors,
    n_chunks,
    lr,
    lr_lo,
    momentum,
    momentum_lo,
    one_minus_dampening,
    one_minus_dampening_lo,
    weight_decay,
    weight_decay_lo,
    grad_scale,
    found_inf,
    MAXIMIZE: tl.constexpr,
    HAS_MOMENTUM: tl.constexpr,
    FIRST_STEP: tl.constexpr,
    NESTEROV: tl.constexpr,
    LR_IS_TENSOR: tl.constexpr,
    HAS_GRAD_SCALE: tl.constexpr,
    HAS_FOUND_INF: tl.constexpr,
    DTYPE: tl.constexpr,
    ALIGNED: tl.constexpr,
    BLOCK: tl.constexpr,
):
    # roles: param, grad, and the momentum buffer when there is momentum
    if HAS_MOMENTUM:
        n_roles = 3
    else:
        n_roles = 2
    t, offsets, mask = chunk_of_program(meta, n_roles, n_tensors, n_chunks, BLOCK, ALIGNED)
    if HAS_FOUND_INF:
        mask = unless_found_inf(mask, found_inf)
    param_ptr, param = load_role(meta, 0, n_tensors, t, offsets, mask, DTYPE, ALIGNED)
    grad_ptr, grad = load_role(meta, 1, n_tensors, t, offsets, mask, DTYPE, ALIGNED)
    # hyperparameters come as fp32 pairs (see _precise.split): fp64 math uses both halves
    momentum = _precise.widen(momentum, momentum_lo, DTYPE)
    one_minus_dampening = _precise.widen(one_minus_dampening, one_minus_dampening_lo, DTYPE)
    weight_decay = _precise.widen(weight_decay, weight_decay_lo, DTYPE)
    if HAS_GRAD_SCALE:
        grad = unscale(grad, grad_ptr, grad_scale, mask, DTYPE)

    grad = coupled_grad(grad, param, weight_decay, MAXIMIZE)
    if HAS_MOMENTUM:
        buf_ptr = role_pointer(meta, 2, n_tensors, t, DTYPE, ALIGNED) + offsets
        if FIRST_STEP:
            buf = grad
        else:
            buf = momentum * load_math(buf_ptr, mask, DTYPE) + one_minus_dampening * grad
        store_storage(buf_ptr, buf, mask, DTYPE)
        if NESTEROV:
            grad += momentum * buf
        else:
            grad = buf

    if LR_IS_TENSOR:
        lr_value = to_math(tl.load(lr), DTYPE)  # read on the device: see read_lr
    else:
        lr_value = _precise.widen(lr, lr_lo, DTYPE)
    param -= lr_value * grad
    store_storage(param_ptr, param, mask, DTYPE)


def sgd_fused_step(
    params: list[Tensor],
    grads: list[Tensor],
    momentum_buffers: list[Tensor] | None,
    *,
    first_step: bool,
    lr: float | Tensor,
    momentum: float,
    dampening: float,
    weight_decay: float,
    nesterov: bool,
    maximize: bool,
    grad_scale: Tensor | None,
    found_inf: Tensor | None,
) -> None:
    """Update all tensors of one (device, dtype) group in one launch.

    momentum_buffers: empty (or None) without momentum; with it, allocated buffers, which the
    kernel only writes when `first_step`.
    """
    device = params[0].device
    lr_is_tensor = isinstance(lr, Tensor)
    if lr_is_tensor and lr.device != device:
        lr = lr.to(device)
    if grad_scale is not None and grad_scale.device != device:
        grad_scale = grad_scale.to(device)
    if found_inf is not None and found_inf.device != device:
        found_inf = found_inf.to(device)
    has_momentum = bool(momentum_buffers)
    roles = (params, grads, momentum_buffers) if has_momentum else (params, grads)
    # 1 - dampening is taken here, in double, not from dampening rounded to fp32
    lr_pair = (lr, 0.0) if lr_is_tensor else _precise.split(float(lr))
    hyper = (momentum, 1 - dampening, float(weight_decay))  # (a tensor weight decay is read here)
    scalars = [half for x in hyper for half in _precise.split(x)]
    launch(
        sgd_kernel,
        roles,
        (),
        *lr_pair, *scalars, grad_scale, found_inf,
        MAXIMIZE=maximize, HAS_MOMENTUM=has_momentum, FIRST_STEP=first_step,
        NESTEROV=nesterov, LR_IS_TENSOR=lr_is_tensor, HAS_GRAD_SCALE=grad_scale is not None,
        HAS_FOUND_INF=found_inf is not None,
    )  # fmt: skip
