"""Fused ASGD: one Triton launch per (device, dtype) group for the param and its average.

eta and mu are per-tensor scalars (scalar roles): every program of a tensor reads them, none
writes them. The caller replaces them after the launch (see ``_asgd_fused`` in ``asgd.py``).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from ._multi_tensor import (
    TL_DTYPES,
    chunk_of_program,
    launch,
    load_math,
    load_role,
    load_scalar_role,
    role_pointer,
    store_storage,
    to_math,
)
from ._terms import coupled_grad


@triton.jit
def asgd_kernel(
    meta,
    n_tensors,
    n_chunks,
    lambd,
    weight_decay,
    MAXIMIZE: tl.constexpr,
    ETA_DTYPE: tl.constexpr,
    MU_DTYPE: tl.constexpr,
    DTYPE: tl.constexpr,
    ALIGNED: tl.constexpr,
    BLOCK: tl.constexpr,
):
    # rows of the pointer table: param, grad, ax, then the scalar roles mu, eta
    t, offsets, mask = chunk_of_program(meta, 5, n_tensors, n_chunks, BLOCK, ALIGNED)
    # fp64 math (for fp64 params) widens an fp32 eta and mu
    eta = to_math(load_scalar_role(meta, 4, n_tensors, t, ETA_DTYPE), DTYPE)
    mu = to_math(load_scalar_role(meta, 3, n_tensors, t, MU_DTYPE), DTYPE)
    param_ptr, param = load_role(meta, 0, n_tensors, t, offsets, mask, DTYPE, ALIGNED)
    grad_ptr, grad = load_role(meta, 1, n_tensors, t, offsets, mask, DTYPE, ALIGNED)
    ax_ptr = role_pointer(meta, 2, n_tensors, t, DTYPE, ALIGNED) + offsets

    grad = coupled_grad(grad, param, weight_decay, MAXIMIZE)
    param = param * (1 - lambd * eta) - eta * grad

    if mu == 1:
        # Before t0 the average is the iterate itself: ax need not be read (a fifth less traffic).
        ax = param
    else:
        ax = load_math(ax_ptr, mask, DTYPE)
        ax += mu * (param - ax)

    store_storage(param_ptr, param, mask, DTYPE)
    store_storage(ax_ptr, ax, mask, DTYPE)


def asgd_fused_step(
    params: list[Tensor],
    grads: list[Tensor],
    axs: list[Tensor],
    mus: list[Tensor],
    etas: list[Tensor],
    *,
    lambd: float,
    weight_decay: float,
    maximize: bool,
    **schedule: object,
) -> None:
    """Update params and averages of one (device, dtype) group with the current eta and mu.

    `schedule` (lr, alpha, t0) forms the next eta and mu, which the caller writes after this
    launch: not read here."""
    # eta and mu are float32 (float64 under that default dtype), or the param's dtype after
    # torch's load_state_dict; their dtypes are compile-time constants, so a group that mixes
    # them (rare) launches once per combination.
    by_scalar_dtypes: dict[tuple[torch.dtype, torch.dtype], list[int]] = {}
    for i, (mu, eta) in enumerate(zip(mus, etas)):
        by_scalar_dtypes.setdefault((mu.dtype, eta.dtype), []).append(i)
    # floats, always: an int (weight_decay=0) would be typed i32 and compile a second kernel
    scalars = [float(lambd), float(weight_decay)]
    for (mu_dtype, eta_dtype), part in by_scalar_dtypes.items():
        whole = len(part) == len(params)
        roles = [lst if whole else [lst[i] for i in part] for lst in (params, grads, axs)]
        scalar_roles = [lst if whole else [lst[i] for i in part] for lst in (mus, etas)]
        launch(
            asgd_kernel, roles, scalar_roles, *scalars,
            MAXIMIZE=maximize, ETA_DTYPE=TL_DTYPES[eta_dtype], MU_DTYPE=TL_DTYPES[mu_dtype],
        )  # fmt: skip
