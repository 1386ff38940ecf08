"""Fused Adagrad: one Triton launch per (device, dtype) group, each element read and written once.

GradScaler's grad_scale and found_inf are read on the device, as in sgd.py: grads are unscaled in
the kernel (and written back unscaled), and a nonzero found_inf masks every access away.
"""

from __future__ import annotations

import triton
import triton.language as tl
from torch import Tensor

from . import _precise
from ._multi_tensor import (
    TL_DTYPES,
    chunk_of_program,
    launch,
    load_role,
    load_scalar_role,
    store_storage,
    to_math,
)
from ._terms import coupled_grad, unless_found_inf, unscale


@triton.jit
def adagrad_kernel(
    meta,
    n_tensors,
    n_chunks,
    lr,
    lr_lo,
    lr_decay,
    lr_decay_lo,
    weight_decay,
    weight_decay_lo,
    eps,
    eps_lo,
    grad_scale,
    found_inf,
    MAXIMIZE: tl.constexpr,
    LR_IS_TENSOR: tl.constexpr,
    HAS_GRAD_SCALE: tl.constexpr,
    HAS_FOUND_INF: tl.constexpr,
    STEP_DTYPE: tl.constexpr,
    DTYPE: tl.constexpr,
    ALIGNED: tl.constexpr,
    BLOCK: tl.constexpr,
):
    # roles: param, grad, sum (elements), step (one scalar per tensor)
    t, offsets, mask = chunk_of_program(meta, 4, n_tensors, n_chunks, BLOCK, ALIGNED)
    if HAS_FOUND_INF:
        mask = unless_found_inf(mask, found_inf)
    param_ptr, param = load_role(meta, 0, n_tensors, t, offsets, mask, DTYPE, ALIGNED)
    grad_ptr, grad = load_role(meta, 1, n_tensors, t, offsets, mask, DTYPE, ALIGNED)
    sum_ptr, state_sum = load_role(meta, 2, n_tensors, t, offsets, mask, DTYPE, ALIGNED)
    # hyperparameters come as fp32 pairs (see _precise.split): fp64 math uses both halves
    lr_decay = _precise.widen(lr_decay, lr_decay_lo, DTYPE)
    weight_decay = _precise.widen(weight_decay, weight_decay_lo, DTYPE)
    eps = _precise.widen(eps, eps_lo, DTYPE)
    if HAS_GRAD_SCALE:
        grad = unscale(grad, grad_ptr, grad_scale, mask, DTYPE)

    grad = coupled_grad(grad, param, weight_decay, MAXIMIZE)
    state_sum += grad * grad
    std = _precise.sqrt(state_sum, DTYPE) + eps

    # step is read on the device too: the launch is the same every step (graph-capturable)
    step = to_math(load_scalar_role(meta, 3, n_tensors, t, STEP_DTYPE), DTYPE)
    if LR_IS_TENSOR:
        lr_value = to_math(tl.load(lr), DTYPE)  # read on the device: see read_lr
    else:
        lr_value = _precise.widen(lr, lr_lo, DTYPE)
    decayed_lr = lr_value / (1.0 + (step - 1.0) * lr_decay)
    param -= decayed_lr * _precise.div(grad, std, DTYPE)

    store_storage(param_ptr, param, mask, DTYPE)
    store_storage(sum_ptr, state_sum, mask, DTYPE)


def adagrad_fused_step(
    params: list[Tensor],
    grads: list[Tensor],
    state_sums: list[Tensor],
    steps: list[Tensor],
    *,
    lr: float | Tensor,
    lr_decay: float,
    weight_decay: float,
    eps: float,
    maximize: bool,
    grad_scale: Tensor | None,
    found_inf: Tensor | None,
) -> None:
    """Update all tensors of one (device, dtype) group in one launch; `steps` are already
    incremented."""
    device = params[0].device
    lr_is_tensor = isinstance(lr, Tensor)
    if lr_is_tensor and lr.device != device:
        lr = lr.to(device)
    if grad_scale is not None and grad_scale.device != device:
        grad_scale = grad_scale.to(device)
    if found_inf is not None and found_inf.device != device:
        found_inf = found_inf.to(device)
    # floats, always (an int weight_decay=0 would be typed i32 and compile a second kernel)
    lr_pair = (lr, 0.0) if lr_is_tensor else _precise.split(float(lr))
    scalars = [half for x in (lr_decay, weight_decay, eps) for half in _precise.split(float(x))]
    launch(
        adagrad_kernel,
        (params, grads, state_sums),
        (steps,),
        *lr_pair, *scalars, grad_scale, found_inf,
        MAXIMIZE=maximize, LR_IS_TENSOR=lr_is_tensor, HAS_GRAD_SCALE=grad_scale is not None,
        HAS_FOUND_INF=found_inf is not None, STEP_DTYPE=TL_DTYPES[steps[0].dtype],
    )  # fmt: skip
