"""The interface every convergence test problem implements.

A problem is a pure function of its parameters: the same params give the same loss and gradient
in every process, so that any two optimizer implementations stepping it with the same
hyperparameters can be compared step by step. Data problems are therefore full-batch over a fixed
data set made from a fixed seed (no downloads), and ``make_params`` starts from the same point for
a given seed whatever the dtype (drawn in float32 on the CPU, then cast and moved).

A mini-batch problem keeps that contract for what is recorded (``loss`` is still the full-batch
loss) and adds ``step_loss(params, k, sparse)``: the loss a training step differentiates at step
k, over the k-th batch of a fixed schedule, so that every implementation sees the same batches.
``sparse=True`` there gives every param a sparse-layout grad (``nn.Embedding(sparse=True)``), for
optimizers that take nothing else (SparseAdam); the others get dense grads of the same loss.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property

import torch
from torch import Tensor

ParamsFactory = Callable[[int, torch.dtype, torch.device], list[Tensor]]
LossFunction = Callable[[Sequence[Tensor]], Tensor]
StepLossFunction = Callable[[Sequence[Tensor], int, bool], Tensor]  # (params, step, sparse)
OptimumFactory = Callable[[torch.dtype, torch.device], list[Tensor]]


@dataclass(frozen=True)
class Problem:
    """A loss over a list of parameter tensors, with where to start and what counts as solved.

    ``loss(params)`` is a 0-dim tensor in the params' dtype on their device. ``target_loss`` is
    the loss a good optimizer reaches within a few hundred steps (``steps_to_target`` counts the
    steps to it); ``optimum_loss`` is the global minimum where it is known, and ``optimum`` builds
    the params at it.
    """

    name: str
    description: str
    make_params: ParamsFactory  # (seed, dtype, device) -> leaf tensors requiring grad
    loss: LossFunction
    target_loss: float
    optimum_loss: float | None = None
    optimum: OptimumFactory | None = None
    step_loss: StepLossFunction | None = None  # mini-batch problems; None: steps on `loss`
    sparse_grads: bool = False  # whether step_loss(..., sparse=True) gives every param one

    def training_loss(self, params: Sequence[Tensor], step: int, sparse: bool) -> Tensor:
        """The loss step `step` differentiates (`sparse`: sparse-layout grads, where offered)."""
        if sparse and not self.sparse_grads:
            raise ValueError(f"problem {self.name!r} gives dense grads only")
        if self.step_loss is None:
            return self.loss(params)
        return self.step_loss(params, step, sparse)

    @cached_property
    def shapes(self) -> tuple[tuple[int, ...], ...]:
        """The parameter shapes (the same for every seed, dtype and device)."""
        return tuple(
            tuple(p.shape) for p in self.make_params(0, torch.float32, torch.device("cpu"))
        )

    @property
    def numel(self) -> int:
        return sum(math.prod(shape) for shape in self.shapes)

    @property
    def is_2d(self) -> bool:
        """Two coordinates in all: its trajectory can be drawn on the loss surface."""
        return self.numel == 2


def leaves(tensors: Sequence[Tensor], dtype: torch.dtype, device: torch.device) -> list[Tensor]:
    """Cast and move float32 CPU tensors into fresh leaf tensors that require grad."""
    return [t.to(device=device, dtype=dtype).detach().requires_grad_(True) for t in tensors]
