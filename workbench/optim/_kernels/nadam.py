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

from ._multi_tensor import TL_DTYPES, _table, chunk_of_program, launch, role_pointer
from ._storage import to_storage

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
    param_ptr = role_pointer(meta, _PARAM, n_tensors, t, DTYPE, ALIGNED) + offsets
    grad_ptr = role_pointer(meta, _GRAD, n_tensors, t, DTYPE, ALIGNED) + offsets
    exp_avg_ptr = role_pointer(meta, _EXP_AVG, n_tensors, t, DTYPE, ALIGNED) + offsets
    exp_avg_sq_ptr = role_pointer(meta, _EXP_AVG_SQ, n_tensors, t, DTYPE, ALIGNED) + offsets
    step_ptr = role_pointer(meta, _STEP, n_tensors, t, STEP_DTYPE, False)
    mu_product_ptr = role_pointer(meta, _MU_PRODUCT, n_tensors, t, MU_DTYPE, False)

    if tl.float64 == DTYPE:
        acc = tl.float64
    else:
        acc = tl.float32

    # Per-tensor scalars, once per program and in fp64: 1 - beta2^t is 1e-3 at t=1 for the default
    # beta2, which fp32 would leave with four correct digits. mu_product is already this step's.
    step = tl.load(step_ptr).to(tl.float64)
    mu_product = tl.load(mu_product_ptr).to(tl.float64)
    if LR_IS_TENSOR:
        lr_stored = tl.load(lr)
        lr_value = lr_stored.to(tl.float64)
        # torch.optim forms 1 - lr * weight_decay in the dtype of a tensor lr (fp32 rounding of
        # a factor that scales the whole param): do the same
        decay = (1.0 - lr_stored * weight_decay).to(acc)
    else:
        lr_value = tl.cast(lr, tl.float64)
        decay = (1.0 - lr_value * tl.cast(weight_decay, tl.float64)).to(acc)
    mu = _mu(step, beta1, md_log2_096)
    mu_next = _mu(step + 1.0, beta1, md_log2_096)
    sqrt_bc2 = tl.sqrt(1.0 - tl.exp2(step * tl.cast(log2_beta2, tl.float64)))
    # sqrt(v / bc2) + eps = (sqrt(v) + eps * sqrt(bc2)) / sqrt(bc2): the bias correction folds into
    # the scalars, so one value fewer stays live per element (fp64 launches are short of registers)
    grad_coef = (lr_value * (1.0 - mu) / (1.0 - mu_product) * sqrt_bc2).to(acc)
    avg_coef = (lr_value * mu_next / (1.0 - mu_product * mu_next) * sqrt_bc2).to(acc)
    eps_scaled = (tl.cast(eps, tl.float64) * sqrt_bc2).to(acc)

    param = tl.load(param_ptr, mask=mask).to(acc)
    grad = tl.load(grad_ptr, mask=mask).to(acc)
    exp_avg = tl.load(exp_avg_ptr, mask=mask).to(acc)
    exp_avg_sq = tl.load(exp_avg_sq_ptr, mask=mask).to(acc)

    if MAXIMIZE:
        grad = -grad
    if DECOUPLED:
        param *= decay
    else:
        # skipped like torch does, so an inf param gives no 0 * inf = nan; a select, not a
        # branch: an `if` here makes the fp64 unaligned launch spill
        grad = tl.where(weight_decay != 0.0, grad + weight_decay * param, grad)
    exp_avg += one_minus_beta1 * (grad - exp_avg)
    # beta2 * v + (1 - beta2) * g^2 as torch writes it, not as a lerp v + (1 - beta2) * (g^2 - v):
    # once v is inf, the lerp gives inf - inf = nan where torch keeps inf
    beta2 = 1.0 - tl.cast(one_minus_beta2, acc)  # in fp64 for fp64: exactly 1 - (1 - beta2)
    exp_avg_sq = exp_avg_sq * beta2 + one_minus_beta2 * (grad * grad)
    # The state is stored before the square root and the division: in fp64 each has a slow path
    # that ptxas makes a call, and values live across a call spill (fp64 unaligned launches have
    # 64 registers a thread). Stored first, no value stays live only to be stored after them.
    numerator = grad_coef * grad + avg_coef * exp_avg
    tl.store(exp_avg_ptr, to_storage(exp_avg, DTYPE), mask=mask)
    tl.store(exp_avg_sq_ptr, to_storage(exp_avg_sq, DTYPE), mask=mask)
    param -= numerator / (tl.sqrt(exp_avg_sq) + eps_scaled)
    tl.store(param_ptr, to_storage(param, DTYPE), mask=mask)


def _log2(x: float) -> float:
    # log2(0) = -inf makes 0^t = exp2(-inf) = 0, the right answer for a zero beta
    return math.log2(x) if x > 0 else -math.inf


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
        for x in (beta1, 1.0 - beta1, 1.0 - beta2, _log2(beta2), md_log2_096, eps, weight_decay)
    ]  # fmt: skip
    launch(
        nadam_kernel,
        (params, grads, exp_avgs, exp_avg_sqs),
        (steps, mu_products),
        lr if lr_is_tensor else float(lr), *scalars,
        MAXIMIZE=maximize, DECOUPLED=decoupled_weight_decay, LR_IS_TENSOR=lr_is_tensor,
        STEP_DTYPE=step_dtype, MU_DTYPE=mu_dtype,
    )  # fmt: skip
