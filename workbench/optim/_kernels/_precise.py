"""Kernel arithmetic as precise as torch's: IEEE square root and division, fp64 hyperparameters.

Triton's `tl.sqrt` is the fast approximate square root for fp32, and `/` may be an approximate
division; torch's kernels round both correctly. For an optimizer that divides by a root every
step (the adaptive ones) the IEEE versions keep the fused backend within an ulp of torch. They cost
a few instructions in a kernel that waits on memory. fp64 has only the IEEE versions.
"""

from __future__ import annotations

import math

import numpy as np
import triton
import triton.language as tl


@triton.jit
def sqrt(x, DTYPE: tl.constexpr):
    """Square root of `x` (fp32, or fp64 when the storage DTYPE is fp64), rounded to nearest."""
    if tl.float64 == DTYPE:
        return tl.sqrt(x)
    else:
        return tl.sqrt_rn(x)


@triton.jit
def div(x, y, DTYPE: tl.constexpr):
    """`x / y` (fp32, or fp64 when the storage DTYPE is fp64), rounded to nearest."""
    if tl.float64 == DTYPE:
        return x / y
    else:
        return tl.div_rn(x, y)


def split(x: float) -> tuple[float, float]:
    """`x` as two fp32 values whose sum is `x` to about 48 bits, for `widen` in a kernel.

    Triton passes a Python float to a kernel as fp32. An fp64 update would see that rounding: an
    alpha of 0.99 is 1e-8 off, and 1 - alpha, or a quantity that cancels, much more (seen: an
    adaptive optimizer's fp64 step a few 1e-6 off torch after six steps). The remainder carries
    what fp32 drops.
    """
    hi = float(np.float32(x))
    return hi, x - hi


def log2(beta: float) -> float:
    """log2(beta), for a kernel that forms beta^t as exp2(t * log2(beta)): -inf for beta = 0, so
    that 0^t = exp2(-inf) = 0, the right answer for a zero beta."""
    return math.log2(beta) if beta > 0 else -math.inf


@triton.jit
def widen(hi, lo, DTYPE: tl.constexpr):
    """The hyperparameter `split` made, in the math dtype: both halves for fp64, else `hi`."""
    if tl.float64 == DTYPE:
        return tl.cast(hi, tl.float64) + tl.cast(lo, tl.float64)
    else:
        return hi
