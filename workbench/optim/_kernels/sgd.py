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
from ._multi_tensor import chunk_of_program, launch, role_pointer
from ._storage import to_storage


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
    param_ptr = role_pointer(meta, 0, n_tensors, t, DTYPE, ALIGNED) + offsets
    grad_ptr = role_pointer(meta, 1, n_tensors, t, DTYPE, ALIGNED) + offsets
    if HAS_FOUND_INF:
        # a uniform condition keeps the mask uniform per 16 elements (16-byte accesses); a select,
        # not `&`, which the interpreter refuses between a block and a scalar
        mask = tl.where(tl.load(found_inf) == 0, mask, False)

    # fp16/bf16 are widened to fp32 for the math; fp64 stays fp64.
    if tl.float64 == DTYPE:
        acc = tl.float64
    else:
        acc = tl.float32
    param = tl.load(param_ptr, mask=mask).to(acc)
    grad = tl.load(grad_ptr, mask=mask).to(acc)
    # hyperparameters come as fp32 pairs (see _precise.split): fp64 math uses both halves
    momentum = _precise.widen(momentum, momentum_lo, DTYPE)
    one_minus_dampening = _precise.widen(one_minus_dampening, one_minus_dampening_lo, DTYPE)
    weight_decay = _precise.widen(weight_decay, weight_decay_lo, DTYPE)
    if HAS_GRAD_SCALE:
        # GradScaler's scales are powers of two: multiplying by the reciprocal is exact
        grad *= 1.0 / tl.load(grad_scale).to(acc)
        tl.store(grad_ptr, to_storage(grad, DTYPE), mask=mask)

    if MAXIMIZE:
        grad = -grad
    if weight_decay != 0.0:  # skipped like torch does, so an inf param gives no 0 * inf = nan
        grad += weight_decay * param
    if HAS_MOMENTUM:
        buf_ptr = role_pointer(meta, 2, n_tensors, t, DTYPE, ALIGNED) + offsets
        if FIRST_STEP:
            buf = grad
        else:
            buf = tl.load(buf_ptr, mask=mask).to(acc)
            buf = momentum * buf + one_minus_dampening * grad
        tl.store(buf_ptr, to_storage(buf, DTYPE), mask=mask)
        if NESTEROV:
            grad += momentum * buf
        else:
            grad = buf

    # lr is read on the device, so a scheduler's new value needs no new launch arguments.
    if LR_IS_TENSOR:
        lr_value = tl.load(lr).to(acc)
    else:
        lr_value = _precise.widen(lr, lr_lo, DTYPE)
    param -= lr_value * grad
    tl.store(param_ptr, to_storage(param, DTYPE), mask=mask)


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
