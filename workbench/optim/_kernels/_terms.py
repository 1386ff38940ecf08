"""Terms of the update that several fused kernels share, in the one form each of them computes.

The gradient as the update sees it (GradScaler's skip and unscale, maximize, weight decay) and
what NAdam and RAdam take over from Adam (their lr and decay factor, the two moments). Each is a
@triton.jit helper the kernels call, inlined where it is called: the same operations as written
out in each kernel, in the same order, so the same results bit for bit.
"""

from __future__ import annotations

import triton
import triton.language as tl

from ._multi_tensor import store_storage, to_math


@triton.jit
def unless_found_inf(mask, found_inf):
    """`mask`, or no element at all when GradScaler's found_inf is set: a skipped step moves no
    memory. A uniform condition keeps the mask uniform per 16 elements (16-byte accesses); a
    select, not `&`, which the interpreter refuses between a block and a scalar."""
    return tl.where(tl.load(found_inf) == 0, mask, False)


@triton.jit
def unscale(grad, grad_ptr, grad_scale, mask, DTYPE: tl.constexpr):
    """`grad` divided by GradScaler's scale, and written back so (as torch's fused kernels leave
    the grads). The scales are powers of two: multiplying by the reciprocal is exact."""
    grad *= 1.0 / to_math(tl.load(grad_scale), DTYPE)
    store_storage(grad_ptr, grad, mask, DTYPE)
    return grad


@triton.jit
def coupled_grad(grad, param, weight_decay, MAXIMIZE: tl.constexpr):
    """The gradient the update follows: negated to maximize, plus weight_decay * param. Skipped
    at weight_decay = 0 like torch does, so an inf param gives no 0 * inf = nan."""
    if MAXIMIZE:
        grad = -grad
    if weight_decay != 0.0:
        grad += weight_decay * param
    return grad


@triton.jit
def adam_decay(param, grad, weight_decay, decay, MAXIMIZE: tl.constexpr, DECOUPLED: tl.constexpr):
    """(param, grad) after weight decay, Adam's way: decoupled (AdamW) scales the param by `decay`
    (1 - lr * weight_decay), coupled adds weight_decay * param to the maximize-negated grad.

    Coupled decay is skipped at 0 like torch does (an inf param gives no 0 * inf = nan), by a
    select, not a branch: an `if` here makes the fp64 unaligned launches spill."""
    if MAXIMIZE:
        grad = -grad
    if DECOUPLED:
        param *= decay
    else:
        grad = tl.where(weight_decay != 0.0, grad + weight_decay * param, grad)
    return param, grad


@triton.jit
def lr_and_decay(lr, weight_decay, LR_IS_TENSOR: tl.constexpr, DTYPE: tl.constexpr):
    """(lr in fp64, 1 - lr * weight_decay in the math dtype), for the kernels that form their
    per-tensor coefficients in fp64."""
    if LR_IS_TENSOR:
        lr_stored = tl.load(lr)
        # torch.optim forms 1 - lr * weight_decay in the dtype of a tensor lr (fp32 rounding of
        # a factor that scales the whole param): do the same
        decay = to_math(1.0 - lr_stored * weight_decay, DTYPE)
        return lr_stored.to(tl.float64), decay
    else:
        lr_value = tl.cast(lr, tl.float64)
        return lr_value, to_math(1.0 - lr_value * tl.cast(weight_decay, tl.float64), DTYPE)


@triton.jit
def moments(grad, exp_avg, exp_avg_sq, one_minus_beta1, one_minus_beta2, DTYPE: tl.constexpr):
    """Adam's first and second moments after this step, as NAdam and RAdam update them."""
    exp_avg += one_minus_beta1 * (grad - exp_avg)
    # beta2 * v + (1 - beta2) * g^2 as torch writes it, not as a lerp v + (1 - beta2) * (g^2 - v):
    # once v is inf, the lerp gives inf - inf = nan where torch keeps inf
    beta2 = 1.0 - to_math(one_minus_beta2, DTYPE)  # in fp64 for fp64: exactly 1 - (1 - beta2)
    exp_avg_sq = exp_avg_sq * beta2 + one_minus_beta2 * (grad * grad)
    return exp_avg, exp_avg_sq
