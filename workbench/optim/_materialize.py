"""``materialize(x)``: have the compiled backend compute a per-step scalar once, not per element.

Inductor inlines a pointwise producer into every consumer. An update's per-step scalars (Adam's
bias corrections: fp64 ``pow`` and ``sqrt`` of the step count) therefore land inside the vector
loop over each param and are recomputed for every 16 elements: on CPU that made the compiled Adam
step twice as slow as the same loop reading precomputed scalars (100 x 100k fp32, 2 cores: 8.9 ms
vs 4.8 ms). The C++ compiler cannot hoist them, since the loop's stores may alias the step tensor.

``materialize`` is the identity, except while torch.compile traces on CPU: there it is a custom op
whose Inductor lowering realizes its input into a buffer of its own, computed once before the
loops that read it. On GPU the ALUs hide the recomputation and a realized scalar would cost a
kernel launch of its own, so nothing changes there.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

_OP = "workbench::materialize"


@torch.library.custom_op(_OP, mutates_args=())
def _materialize_op(x: Tensor) -> Tensor:
    return x.clone()


@_materialize_op.register_fake
def _(x: Tensor) -> Tensor:
    return torch.empty_like(x)


@functools.cache
def register_inductor_lowering() -> bool:
    """Teach Inductor to realize the op's input (called before the first torch.compile).

    Without the lowering (a torch whose private lowering API moved) the op still runs, as an
    extern call per scalar: slower, never wrong. Returns whether the lowering is in place.
    """
    try:
        from torch._inductor.lowering import clone, register_lowering
    except ImportError:
        return False

    @register_lowering(torch.ops.workbench.materialize.default)
    def _realize(x):  # an Inductor TensorBox
        x.realize()
        return clone(x)

    return True


def materialize(x: Tensor) -> Tensor:
    """``x`` itself, marked to be computed once per step when compiling for the CPU."""
    if torch.compiler.is_compiling() and x.device.type == "cpu":
        return torch.ops.workbench.materialize(x)
    return x
