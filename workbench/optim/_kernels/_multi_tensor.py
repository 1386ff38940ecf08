"""One Triton launch over many tensors: the launcher every fused optimizer shares.

The host packs, in one int64 tensor on the device ("meta"):

    [role 0 pointers | role 1 pointers | ... | numels | chunk -> tensor | chunk -> first element]

where a *role* is one of the parallel tensor lists (param, grad, exp_avg, ...), each row holding one
data pointer per tensor, and a *chunk* is BLOCK consecutive elements of one tensor. Program `pid`
updates chunk `pid`. Per-tensor scalars that live on the device (the `step` counters) are roles too;
a kernel loads a single element from them.

The table depends only on the tensors' addresses and sizes, so it is cached: a training loop
whose grads keep their storage (zero_grad keeps them, or set_to_none with a caching allocator that
hands back the same blocks) uploads it once and then launches with no host-to-device traffic.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import torch
import triton
import triton.language as tl
from torch import Tensor

from .._backends import triton_interpreting

TL_DTYPES = {
    torch.float16: tl.float16,
    torch.bfloat16: tl.bfloat16,
    torch.float32: tl.float32,
    torch.float64: tl.float64,
}

# Elements per program. Under the interpreter every program is a Python-level loop iteration, so
# there big blocks are what keeps the CPU check fast; on a GPU 4096 elements (16 KiB of fp32 per
# role) keeps enough loads in flight per SM without starving the grid on small tensors.
GPU_BLOCK = 4096
INTERPRETER_BLOCK = 1 << 16

_MAX_CACHED_TABLES = 64
_tables: OrderedDict[tuple, tuple[Tensor, int, bool]] = OrderedDict()


def _flat_dense(tensors: Sequence[Tensor]) -> bool:
    """True when the tensors are one dense block each and share a layout, so element i of one
    matches element i of the others when all are walked in memory order (contiguous, channels-last,
    transposed...)."""
    first = tensors[0]
    if any(t.stride() != first.stride() for t in tensors[1:]):
        return False
    if first.is_contiguous():
        return True
    dims = sorted(
        ((st, sz) for st, sz in zip(first.stride(), first.shape) if sz != 1),
        key=lambda d: d[0],
    )
    expected = 1
    for stride, size in dims:
        if stride != expected:
            return False
        expected *= size
    return True


def _table(
    element_roles: Sequence[Sequence[Tensor]], scalar_roles: Sequence[Sequence[Tensor]], block: int
) -> tuple[Tensor, int, bool]:
    """(meta, number of chunks, whether every pointer is 16-byte aligned), cached by address."""
    device = element_roles[0][0].device
    ptrs = [[t.data_ptr() for t in role] for role in (*element_roles, *scalar_roles)]
    numels = [t.numel() for t in element_roles[0]]
    key = (device, block, tuple(map(tuple, ptrs)), tuple(numels))
    hit = _tables.get(key)
    if hit is not None:
        _tables.move_to_end(key)
        return hit
    chunk_tensor: list[int] = []
    chunk_start: list[int] = []
    for i, n in enumerate(numels):
        starts = range(0, n, block)
        chunk_tensor.extend([i] * len(starts))
        chunk_start.extend(starts)
    flat = [p for role in ptrs for p in role] + numels + chunk_tensor + chunk_start
    meta = torch.tensor(flat, dtype=torch.int64).to(device, non_blocking=True)
    aligned = all(p % 16 == 0 for role in ptrs[: len(element_roles)] for p in role)
    entry = (meta, len(chunk_tensor), aligned)
    _tables[key] = entry
    if len(_tables) > _MAX_CACHED_TABLES:
        _tables.popitem(last=False)
    return entry


def launch(
    kernel: Any,
    element_roles: Sequence[Sequence[Tensor]],
    scalar_roles: Sequence[Sequence[Tensor]],
    *args: Any,
    **constexprs: Any,
) -> None:
    """Run `kernel` once over every tensor of the parallel lists in `element_roles`.

    element_roles: lists of same-shaped tensors (param, grad, state...), all of one dtype.
    scalar_roles:  lists of one-element device tensors per param (step counters).
    args:          the kernel's runtime scalars, after (meta, n_tensors, n_chunks).
    constexprs:    the kernel's compile-time flags; DTYPE, ALIGNED and BLOCK are filled in here.

    Tensors that are not one dense block (slices, expanded views) go through contiguous copies that
    are written back after the launch; empty tensors are skipped.
    """
    keep = [i for i, t in enumerate(element_roles[0]) if t.numel() > 0]
    if not keep:
        return
    roles = [[role[i] for i in keep] for role in element_roles]
    scalars = [[role[i] for i in keep] for role in scalar_roles]
    write_back: list[tuple[Tensor, Tensor]] = []
    for i in range(len(keep)):
        group = [role[i] for role in roles]
        if not _flat_dense(group):
            for role in roles:
                original = role[i]
                role[i] = original.contiguous()
                write_back.append((original, role[i]))

    block = INTERPRETER_BLOCK if triton_interpreting() else GPU_BLOCK
    meta, n_chunks, aligned = _table(roles, scalars, block)
    dtype = TL_DTYPES[roles[0][0].dtype]
    kernel[(n_chunks,)](
        meta, len(keep), n_chunks, *args, DTYPE=dtype, ALIGNED=aligned, BLOCK=block, **constexprs
    )
    for original, copy in write_back:
        original.copy_(copy)


@triton.jit
def chunk_of_program(meta, n_roles, n_tensors, n_chunks, BLOCK: tl.constexpr):
    """(tensor index, element offsets, in-bounds mask) of this program's chunk."""
    pid = tl.program_id(0)
    numels = meta + n_roles * n_tensors
    chunks = numels + n_tensors
    t = tl.load(chunks + pid)
    start = tl.load(chunks + n_chunks + pid)
    offsets = start + tl.arange(0, BLOCK)
    # chunks start at multiples of BLOCK: tell the compiler, so loads can be vectorized.
    offsets = tl.max_contiguous(tl.multiple_of(offsets, BLOCK), BLOCK)
    mask = offsets < tl.load(numels + t)
    return t, offsets, mask


@triton.jit
def role_pointer(meta, role, n_tensors, t, DTYPE: tl.constexpr, ALIGNED: tl.constexpr):
    """The typed data pointer of tensor `t` in row `role` of the table."""
    address = tl.load(meta + role * n_tensors + t)
    pointer = address.to(tl.pointer_type(DTYPE))
    if ALIGNED:
        # The hint goes on the pointer, not on the int64 address: the compiler's alignment analysis
        # does not carry an integer's divisibility through the int -> pointer cast (tt.int_to_ptr),
        # so a hint on `address` is lost (no 16-byte accesses, seen in the PTX for sm_80/sm_90).
        # For a pointer the unit is bytes.
        pointer = tl.multiple_of(pointer, 16)
    return pointer
