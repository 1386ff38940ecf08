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
from torch.autograd.graph import increment_version

from ._layout import flat_dense
from ._storage import to_storage
from ._triton_env import triton_interpreting

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


def _table(
    element_roles: Sequence[Sequence[Tensor]], scalar_roles: Sequence[Sequence[Tensor]], block: int
) -> tuple[Tensor, int]:
    """(meta, number of chunks) for these tensors, cached by their addresses and sizes."""
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
    entry = (meta, len(chunk_tensor))
    _tables[key] = entry
    if len(_tables) > _MAX_CACHED_TABLES:
        _tables.popitem(last=False)
    return entry


def launch_num_warps(dtype: torch.dtype, aligned: bool) -> int:
    """Warps per program on a GPU, so that no variant spills (ptxas for sm_80/sm_90, checked by
    tests/test_kernel_aot.py). At BLOCK=4096, Triton's default of 4 warps puts 32 elements per
    role on each thread and spills. Aligned launches use 16-byte accesses and fit fp32/bf16/fp16
    in 8 warps; element-wide (unaligned) accesses each keep an address, so they take twice the
    warps, and fp64, twice as wide, twice again."""
    warps = 8 if aligned else 16
    return warps * 2 if dtype == torch.float64 else warps


def _vectorizable(tensors: Sequence[Tensor]) -> bool:
    """16-byte aligned and a multiple of 16 elements long: the kernel may use 16-byte accesses.

    The length matters as much as the address: the bounds mask is only uniform over each group
    of 16 elements when the length is a multiple of 16, and a non-uniform mask forces the
    compiler back to one element per access.
    """
    return tensors[0].numel() % 16 == 0 and all(t.data_ptr() % 16 == 0 for t in tensors)


def launch(
    kernel: Any,
    element_roles: Sequence[Sequence[Tensor]],
    scalar_roles: Sequence[Sequence[Tensor]],
    *args: Any,
    **constexprs: Any,
) -> None:
    """Run `kernel` over every tensor of the parallel lists in `element_roles`.

    element_roles: lists of same-shaped tensors (param, grad, state...), all of one dtype.
    scalar_roles:  lists of one-element device tensors per param (step counters).
    args:          the kernel's runtime scalars, after (meta, n_tensors, n_chunks).
    constexprs:    the kernel's compile-time flags; DTYPE, ALIGNED and BLOCK are filled in here.

    One launch covers every tensor that allows 16-byte accesses (the usual case: allocations are
    aligned and model dimensions are multiples of 16), and a second one, only if needed, the
    ragged rest. Tensors that are not one dense block (slices, expanded views) go through
    contiguous copies written back after the launch; empty tensors are skipped.
    """
    keep = [i for i, t in enumerate(element_roles[0]) if t.numel() > 0]
    if not keep:
        return
    roles = [[role[i] for i in keep] for role in element_roles]
    scalars = [[role[i] for i in keep] for role in scalar_roles]
    write_back: list[tuple[Tensor, Tensor]] = []
    for i in range(len(keep)):
        group = [role[i] for role in roles]
        if not flat_dense(group):
            for role in roles:
                original = role[i]
                role[i] = original.contiguous()
                write_back.append((original, role[i]))

    interpreting = triton_interpreting()
    block = INTERPRETER_BLOCK if interpreting else GPU_BLOCK
    dtype = roles[0][0].dtype
    aligned = [_vectorizable([role[i] for role in roles]) for i in range(len(keep))]
    for want in (True, False):
        part = [i for i, a in enumerate(aligned) if a == want]
        if not part:
            continue
        meta, n_chunks = _table(
            [[role[i] for i in part] for role in roles],
            [[role[i] for i in part] for role in scalars],
            block,
        )
        launch_options = {} if interpreting else {"num_warps": launch_num_warps(dtype, want)}
        kernel[(n_chunks,)](
            meta, len(part), n_chunks, *args,
            DTYPE=TL_DTYPES[dtype], ALIGNED=want, BLOCK=block, **constexprs, **launch_options,
        )  # fmt: skip
    for original, copy in write_back:
        original.copy_(copy)
    # Writes through raw pointers are invisible to autograd: count them, as an in-place op would,
    # so a graph that saved a param before this step refuses to backward through it.
    increment_version(element_roles[0])


@triton.jit
def chunk_of_program(
    meta, n_roles, n_tensors, n_chunks, BLOCK: tl.constexpr, ALIGNED: tl.constexpr
):
    """(tensor index, element offsets, in-bounds mask) of this program's chunk."""
    pid = tl.program_id(0)
    numels = meta + n_roles * n_tensors
    chunks = numels + n_tensors
    t = tl.load(chunks + pid)
    start = tl.load(chunks + n_chunks + pid)
    offsets = start + tl.arange(0, BLOCK)
    # chunks start at multiples of BLOCK: tell the compiler, so loads can be vectorized.
    offsets = tl.max_contiguous(tl.multiple_of(offsets, BLOCK), BLOCK)
    numel = tl.load(numels + t)
    if ALIGNED:
        # launch() only sets ALIGNED for tensors of 16k elements: the mask is uniform per 16.
        numel = tl.multiple_of(numel, 16)
    mask = offsets < numel
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


# ---- inside a kernel: the prologue and epilogue every element kernel shares -------------------
# fp16/bf16 are widened to fp32 for the math and narrowed once, when stored; fp64 stays fp64.


@triton.jit
def to_math(x, DTYPE: tl.constexpr):
    """`x` in the dtype the math runs in for storage dtype DTYPE: fp64 for fp64, else fp32."""
    if tl.float64 == DTYPE:
        return tl.cast(x, tl.float64)
    else:
        return tl.cast(x, tl.float32)


@triton.jit
def load_math(pointers, mask, DTYPE: tl.constexpr):
    """The elements at `pointers`, widened to the math dtype (see to_math)."""
    return to_math(tl.load(pointers, mask=mask), DTYPE)


@triton.jit
def store_storage(pointers, x, mask, DTYPE: tl.constexpr):
    """Store `x` narrowed to storage dtype DTYPE, rounded as a GPU rounds (see _storage.py)."""
    tl.store(pointers, to_storage(x, DTYPE), mask=mask)


@triton.jit
def load_role(meta, role, n_tensors, t, offsets, mask, DTYPE: tl.constexpr, ALIGNED: tl.constexpr):
    """(pointers, widened values) of this program's chunk of element role `role`: the pointers
    are what store_storage writes the role's new values back through."""
    pointers = role_pointer(meta, role, n_tensors, t, DTYPE, ALIGNED) + offsets
    return pointers, load_math(pointers, mask, DTYPE)


@triton.jit
def load_scalar_role(meta, role, n_tensors, t, DTYPE: tl.constexpr):
    """Tensor `t`'s per-tensor scalar (a step counter...) in row `role`, as stored (dtype DTYPE)."""
    return tl.load(role_pointer(meta, role, n_tensors, t, DTYPE, False))


@triton.jit
def read_lr(lr, LR_IS_TENSOR: tl.constexpr, DTYPE: tl.constexpr):
    """lr in the math dtype. A tensor lr is read on the device, so a scheduler's new value needs
    no new launch arguments (and the launch stays the same every step: graph-capturable)."""
    if LR_IS_TENSOR:
        return to_math(tl.load(lr), DTYPE)
    else:
        return to_math(lr, DTYPE)
