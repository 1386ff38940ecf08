"""Fused Rprop: one Triton launch per (device, dtype) group, each element read and written once."""

from __future__ import annotations

import triton
import triton.language as tl
from torch import Tensor

from ._multi_tensor import chunk_of_program, launch, load_role, store_storage


@triton.jit
def rprop_kernel(
    meta,
    n_tensors,
    n_chunks,
    etaminus,
    etaplus,
    step_size_min,
    step_size_max,
    MAXIMIZE: tl.constexpr,
    DTYPE: tl.constexpr,
    ALIGNED: tl.constexpr,
    BLOCK: tl.constexpr,
):
    # rows of the pointer table: param, grad, prev, step_size (no scalar roles: the update does
    # not depend on the step)
    t, offsets, mask = chunk_of_program(meta, 4, n_tensors, n_chunks, BLOCK, ALIGNED)
    param_ptr, param = load_role(meta, 0, n_tensors, t, offsets, mask, DTYPE, ALIGNED)
    grad_ptr, grad = load_role(meta, 1, n_tensors, t, offsets, mask, DTYPE, ALIGNED)
    prev_ptr, prev = load_role(meta, 2, n_tensors, t, offsets, mask, DTYPE, ALIGNED)
    step_size_ptr, step_size = load_role(meta, 3, n_tensors, t, offsets, mask, DTYPE, ALIGNED)

    if MAXIMIZE:
        grad = -grad
    # The product, not the two signs: where it underflows to 0 the step size stays, as in torch.
    product = grad * prev
    # neither > 0 nor < 0 (0 or NaN): the step size stays. torch.sign makes a NaN 0 (CPU and CUDA
    # alike), and the forloop's factor is sign + 1.
    factor = tl.where(product > 0, etaplus, tl.where(product < 0, etaminus, 1.0))
    step_size = step_size * factor
    step_size = tl.minimum(
        tl.maximum(step_size, step_size_min, propagate_nan=tl.PropagateNan.ALL),
        step_size_max,
        propagate_nan=tl.PropagateNan.ALL,
    )
    # where the sign flipped, the coordinate stays and the gradient is forgotten
    grad = tl.where(product < 0, 0.0, grad)
    # torch.sign(grad): 0 for a NaN too
    sign = tl.where(grad > 0, 1.0, tl.where(grad < 0, -1.0, 0.0))
    param -= sign * step_size

    store_storage(param_ptr, param, mask, DTYPE)
    store_storage(prev_ptr, grad, mask, DTYPE)
    store_storage(step_size_ptr, step_size, mask, DTYPE)


def rprop_fused_step(
    params: list[Tensor],
    grads: list[Tensor],
    prevs: list[Tensor],
    step_sizes: list[Tensor],
    *,
    etaminus: float,
    etaplus: float,
    step_size_min: float,
    step_size_max: float,
    maximize: bool,
) -> None:
    """Update all tensors of one (device, dtype) group in one launch."""
    # floats, always: an int (step_sizes=(1e-6, 50)) would be typed i32 and compile another kernel
    scalars = [float(x) for x in (etaminus, etaplus, step_size_min, step_size_max)]
    launch(
        rprop_kernel,
        (params, grads, prevs, step_sizes),
        (),
        *scalars,
        MAXIMIZE=maximize,
    )  # fmt: skip
