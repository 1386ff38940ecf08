"""Memory layouts a multi-tensor kernel can walk as flat arrays (shared by the Triton and C
launchers)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor


def flat_dense(tensors: Sequence[Tensor]) -> bool:
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
