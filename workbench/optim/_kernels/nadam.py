"""Fused NAdam: two Triton launches per (device, dtype) group.

The first, tiny one advances each tensor's scalars (step and mu_product); the second updates every
element once, reading those scalars. mu_product cannot be advanced inside the element launch: the
programs that update one tensor's chunks run in no set order, so whichever wrote the new product
first would hand it to the others as if it were the old one. The first launch takes the place of
the host's `steps += 1`, so the count of launches is Adamax's.
"""

from __future__ import annotations

import math

import triton
import triton.language as tl
from torch import Tensor

from ._multi_tensor import (
    TL_DTYPES,
    _table,
    chunk_of_program,
    launch,
    load_role,
    load_scalar_role,
    store_storage,
    to_math,
)
from ._precise import log2
from ._storage import to_storage
from ._terms import adam_decay, lr_and_decay, moments

# rows of the element launch's pointer table (constexpr: a kernel may read no other globals)
_PARAM, _GRAD, _EXP_AVG, _EXP_AVG_SQ, _STEP, _MU_PRODUCT = map(tl.constexpr, range(6))
# tensors whose scalars one program of the scalar launch advances
SCALAR_BLOCK = 256


@triton.jit
def _mu(step, beta1, md_log2_096):
    """beta1 * (1 - 0.5 * 0.96^(step * momentum_decay)), in fp64 (step is fp64)."""
    decay = tl.exp2(step * tl.cast(md_log2_096, tl.float64))
    return tl.cast(beta1, tl.float64) * (1.0 - 0.5 * decay)


@triton.jit
def nadam_scalars_kernel(
    meta,
    n_tensors,
    beta1,
    md_log2_096,
    STEP_DTYPE: tl.constexpr,
    MU_DTYPE: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """step += 1, then mu_product *= mu(step), for BLOCK tensors.

    meta starts [step pointers | mu_product pointers] (a table from _multi_tensor._table).
    """
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = i < n_tensors
    step_ptrs = tl.load(meta + i, mask=mask, other=0).to(tl.pointer_type(STEP_DTYPE))
    mu_ptrs = tl.load(meta + n_tensors + i, mask=mask, other=0).to(tl.pointer_type(MU_DTYPE))
    step = tl.load(step_ptrs, mask=mask) + 1
    tl.store(step_ptrs, step, mask=mask)
    mu = _mu(step.to(tl.float64), beta1, md_log2_096)
    mu_product = tl.load(mu_ptrs, mask=mask).to(tl.float64) * mu
    tl.store(mu_ptrs, to_storage(mu_product, MU_DTYPE), mask=mask)


@triton.jit
def nadam_kernel(
    meta,
    n_tensors,
    n_chunks,
    lr,
    beta1,
    one_minus_beta1,
    one_minus_beta2,
    log2_beta2,
    md_log2_096,
    eps,
    weight_decay,
    MAXIMIZE: tl.constexpr,
    DECOUPLED: tl.constexpr,
    LR_IS_TENSOR: tl.constexpr,
    STEP_DTYPE: tl.constexpr,
    MU_DTYPE: tl.constexpr,
    DTYPE: tl.constexpr,
    ALIGNED: tl.constexpr,
    BLOCK: tl.constexpr,
):
    t, offsets, mask = chunk_of_program(meta, 6, n_tensors, n_chunks, BLOCK, ALIGNED)

    # Per-tensor scalars, once per program and in fp64: 1 - beta2^t is 1e-3 at t=1 for the default
    # beta2, which fp32 would leave with four correct digits. mu_product is already this step's.
    step = load_scalar_role(meta, _STEP, n_tensors, t, STEP_DTYPE).to(tl.float64)
    mu_product = load_scalar_role(meta, _MU_PRODUCT, n_tensors, t, MU_DTYPE).to(tl.float64)
    lr_value, decay = lr_and_decay(lr, weight_decay, LR_IS_TENSOR, DTYPE)
    mu = _mu(step, beta1, md_log2_096)
    mu_next = _mu(step + 1.0, beta1, md_log2_096)
    sqrt_bc2 = tl.sqrt(1.0 - tl.exp2(step * tl.cast(log2_beta2, tl.float64)))
    # sqrt(v / bc2) + eps = (sqrt(v) + eps * sqrt(bc2)) / sqrt(bc2): the bias correction folds into
    # the scalars, so one value fewer stays live per element (fp64 launches are short of registers)
    grad_coef = to_math(lr_value * (1.0 - mu) / (1.0 - mu_product) * sqrt_bc2, DTYPE)
    avg_coef = to_math(lr_value * mu_next / (1.0 - mu_product * mu_next) * sqrt_bc2, DTYPE)
    eps_scaled = to_math(tl.cast(eps, tl.float64) * sqrt_bc2, DTYPE)

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
    numerator = grad_coef * grad + avg_coef * exp_avg
    store_storage(exp_avg_ptr, exp_avg, mask, DTYPE)
    store_storage(exp_avg_sq_ptr, exp_avg_sq, mask, DTYPE)
    param -= numerator / (tl.sqrt(exp_avg_sq) + eps_scaled)
    store_storage(param_ptr, param, mask, DTYPE)


def nadam_fused_step(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    mu_products: list[Tensor],
    steps: list[Tensor],
    *,
    lr: float | Tensor,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    momentum_decay: float,
    decoupled_weight_decay: bool,
    maximize: bool,
) -> None:
    """Update all tensors of one (device, dtype) group; `steps` and `mu_products` advance."""
    device = params[0].device
    lr_is_tensor = isinstance(lr, Tensor)
    if lr_is_tensor and lr.device != device:
        lr = lr.to(device)
    # 0.96^(t * momentum_decay) = exp2(t * momentum_decay * log2(0.96)): one constant
    md_log2_096 = float(momentum_decay) * math.log2(0.96)
    step_dtype, mu_dtype = TL_DTYPES[steps[0].dtype], TL_DTYPES[mu_products[0].dtype]

    # Every step and mu_product, empty params' included (torch.optim advances those too).
    meta, _ = _table([steps, mu_products], [], 1)
    n = len(steps)
    nadam_scalars_kernel[(triton.cdiv(n, SCALAR_BLOCK),)](
        meta, n, float(beta1), md_log2_096,
        STEP_DTYPE=step_dtype, MU_DTYPE=mu_dtype, BLOCK=SCALAR_BLOCK,
    )  # fmt: skip

    # Python floats, always: an int (weight_decay=0) would be typed i32 and compile another kernel.
    # 1 - beta is passed rather than formed in fp32 from the rounded beta, which for beta2 = 0.999
    # would be off by 3e-5 relative.
    scalars = [
        float(x)
        for x in (beta1, 1.0 - beta1, 1.0 - beta2, log2(beta2), md_log2_096, eps, weight_decay)
    ]  # fmt: skip
    launch(
        nadam_kernel,
        (params, grads, exp_avgs, exp_avg_sqs),
        (steps, mu_products),
        lr if lr_is_tensor else float(lr), *scalars,
        MAXIMIZE=maximize, DECOUPLED=decoupled_weight_decay, LR_IS_TENSOR=lr_is_tensor,
        STEP_DTYPE=step_dtype, MU_DTYPE=mu_dtype,
    )  # fmt: skip
