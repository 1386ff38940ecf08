"""Rounding a kernel's fp32 results to the storage dtype, the same on a GPU and in the interpreter.

On a GPU, `x.to(tl.bfloat16)` rounds to nearest even. Triton's interpreter truncates instead, which
makes every bf16 check under TRITON_INTERPRET=1 disagree with the hardware by up to one unit in the
last place. When interpreting, round with integer arithmetic so the CPU check sees what the GPU
computes; compiled kernels keep the native conversion.
"""

from __future__ import annotations

import triton
import triton.language as tl

from ._triton_env import triton_interpreting

if triton_interpreting():

    @triton.jit
    def to_storage(x, DTYPE: tl.constexpr):
        if tl.bfloat16 == DTYPE:
            bits = x.to(tl.float32).to(tl.uint32, bitcast=True)
            # add half an ulp of bf16, plus one if the kept part is odd (ties to even)
            bits += 0x7FFF + ((bits >> 16) & 1)
            return (bits >> 16).to(tl.uint16).to(tl.bfloat16, bitcast=True)
        else:
            return x.to(DTYPE)

else:

    @triton.jit
    def to_storage(x, DTYPE: tl.constexpr):
        return x.to(DTYPE)
