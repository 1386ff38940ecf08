"""Step protocols: how the latency runner makes a case's params and grads and takes one step.

An optimizer class declares what its step needs (``workbench.optim``); torch.optim's class and a
peer's of the same name run the same protocol, since the runner decides by the optimizer's name:

- ``dense``: fixed dense grads (random normals), and the timed step is ``opt.step()``.
- ``closure`` (``needs_closure``, LBFGS): the timed step is ``opt.step(closure)``. The closure
  is a weighted quadratic ``0.5 * sum(w * (p - target)^2)`` over the case's params, with fixed
  random ``w > 0`` and targets: its gradient ``w * (p - target)`` is written into ``p.grad`` in
  place (what zero_grad + backward would leave there) with no autograd and no allocation beyond
  the 0-dim loss (float16 aside), so the step's time, peak memory and launches are the
  optimizer's own plus a few elementwise ops per evaluation. The optimizer decides how many
  evaluations a step makes, so the row says (``closure_evals_per_step``) and time can be
  normalised per evaluation. There is no ``minimal_bytes`` or bandwidth: what a step moves
  depends on how many iterations it runs and how much curvature history it has, which only the
  step itself knows (``bandwidth_note``). On a fixed loss the optimizer reaches the optimum and
  then stops early (one evaluation per step); a suite that wants steady-state iterations
  disables the stopping tolerances.
- ``sparse`` (``sparse_grads``, SparseAdam): grads in sparse COO layout, as
  ``nn.Embedding(sparse=True)`` makes them: per param a batch of ``density * rows`` row indices
  drawn with replacement (rows along dim 0; a 1-D param's rows are its elements), duplicates kept
  and left uncoalesced. Each step takes the next batch of a fixed rotation, so consecutive steps
  touch different rows as in training. ``minimal_bytes`` counts what a step touches: the param and
  each state tensor read and written on the distinct rows of its batch, the grad's values and
  indices read once as given.
"""

from __future__ import annotations

import functools
import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from workbench.optim import OPTIMIZERS

from .cases import Case
from .implementations import make_optimizer

DENSE, CLOSURE, SPARSE = "dense", "closure", "sparse"
PROTOCOLS = (DENSE, CLOSURE, SPARSE)

# A rotation of sparse grads holds at most this many batches; with floor(1 / density) batches its
# grads never hold more memory than the params (which dense grads do).
MAX_SPARSE_BATCHES = 64
# The closure's weights spread over two decades, so that its curvature is not one number.
_CLOSURE_WEIGHT_RANGE = (0.01, 1.0)
_INDEX_BYTES = 8  # int64 row indices of a COO grad
_BANDWIDTH_NOTE = (
    "not computed for a closure step: its traffic depends on the iterations and curvature "
    "history the step decides at run time; normalise time by closure_evals_per_step"
)


def protocol_for(optimizer: str) -> str:
    """The step protocol of the optimizer of this name (one of PROTOCOLS)."""
    cls = OPTIMIZERS[optimizer]
    if getattr(cls, "needs_closure", False):
        return CLOSURE
    if getattr(cls, "sparse_grads", False):
        return SPARSE
    return DENSE


@dataclass
class Workload:
    """One optimizer over its own params, and how to take one step as its protocol says.

    ``step()`` returns the closure evaluations it made (closure protocol) or None.
    ``working_set_bytes`` is what the runner weighs against the cache to decide on copies;
    ``minimal_bytes`` is one step's traffic floor for bandwidth (None where unknown).
    """

    protocol: str
    optimizer: torch.optim.Optimizer
    params: list[Tensor]
    step: Callable[[], int | None]
    working_set_bytes: int
    minimal_bytes: int | None
    row: dict[str, Any] = field(default_factory=dict)  # fields for the case's row
    # the dense protocol's grads, as built: the harness gives them back to a step that drops them
    grads: list[Tensor] = field(default_factory=list)


def build_workload(case: Case, device: torch.device, seed: int, *, density: float) -> Workload:
    """Params, grads (or a closure) and optimizer for `case`; `density` for sparse grads."""
    protocol = protocol_for(case.optimizer)
    gen = torch.Generator().manual_seed(seed)
    dtype = getattr(torch, case.dtype)
    if protocol != DENSE:
        params = [_randn(s, gen, device, dtype).requires_grad_(True) for s in case.shapes]
        if protocol == CLOSURE:
            return _closure_workload(case, params, gen)
        return _sparse_workload(case, params, gen, density)
    params = []
    for shape in case.shapes:
        p = _randn(shape, gen, device, dtype).requires_grad_(True)
        p.grad = _randn(shape, gen, device, dtype)
        params.append(p)
    optimizer = make_optimizer(case, params)
    nbytes = class_minimal_bytes(case)
    grads = [p.grad for p in params]
    return Workload(DENSE, optimizer, params, optimizer.step, nbytes, nbytes, grads=grads)


def timed_row_fields(workload: Workload, step_results: list[int | None]) -> dict[str, Any]:
    """Row fields from what the timed steps returned, one entry per step (whichever copy of the
    workload took it)."""
    if workload.protocol != CLOSURE:
        return {}
    evals = [int(n) for n in step_results if n is not None]
    return {
        "closure_evals_per_step": statistics.median(evals) if evals else None,
        "closure_evals_samples": evals,
        "bandwidth_note": _BANDWIDTH_NOTE,
    }


# Workloads' normal values come from one pool drawn once per process, copied out at an offset the
# seed's generator draws (wrapping around for tensors larger than the pool). torch.randn made
# about 0.3 G values/s on this project's VM: 12 s of a 55 s run of one 6-case group went to
# drawing its workloads and their copies afresh each visit; a copy is several times faster. A
# step's time depends on its values only through their kind (finite, normal, not denormal), which
# the pool keeps; which normal value lands where does not matter.
_POOL_NUMEL = 1 << 22


@functools.cache
def _normal_pool() -> Tensor:
    return torch.randn(_POOL_NUMEL, generator=torch.Generator().manual_seed(0))


def _randn(
    shape: tuple[int, ...], gen: torch.Generator, device: torch.device, dtype: torch.dtype
) -> Tensor:
    # made on the CPU so that every device gets the same numbers for a seed
    pool = _normal_pool()
    numel = math.prod(shape)
    out = torch.empty(numel)
    start = int(torch.randint(_POOL_NUMEL, (1,), generator=gen))
    filled = 0
    while filled < numel:
        take = min(numel - filled, _POOL_NUMEL - start)
        out[filled : filled + take].copy_(pool[start : start + take])
        filled, start = filled + take, 0
    return out.view(shape).to(device, dtype)


def class_minimal_bytes(case: Case) -> int:
    """The optimizer class's traffic floor for the case's dense params (its minimal_bytes)."""
    cls = OPTIMIZERS[case.optimizer]
    return int(cls.minimal_bytes(case.numel, getattr(torch, case.dtype), **case.kwargs()))


def _closure_workload(case: Case, params: list[Tensor], gen: torch.Generator) -> Workload:
    low, high = (math.log(v) for v in _CLOSURE_WEIGHT_RANGE)
    weights = [torch.empty(p.shape).uniform_(low, high, generator=gen).exp_().to(p) for p in params]
    targets = [_randn(p.shape, gen, p.device, p.dtype) for p in params]
    scratch = [torch.empty_like(p) for p in params]
    for p in params:
        p.grad = torch.zeros_like(p)
    evaluations = 0
    loss_dtype = torch.promote_types(params[0].dtype, torch.float32)

    def closure() -> Tensor:
        nonlocal evaluations
        evaluations += 1
        loss = torch.zeros((), device=params[0].device, dtype=loss_dtype)
        with torch.no_grad():
            for p, w, target, diff in zip(params, weights, targets, scratch):
                torch.sub(p, target, out=diff)
                torch.mul(diff, w, out=p.grad)
                if p.dtype == torch.float16:
                    # a float16 dot overflows past 65504: sum in float32 (through a copy, which
                    # the step's peak shows)
                    loss += diff.mul_(p.grad).sum(dtype=loss_dtype)
                else:
                    loss += torch.dot(diff.view(-1), p.grad.view(-1))
        return loss.mul_(0.5)

    optimizer = make_optimizer(case, params)

    def step() -> int:
        before = evaluations
        optimizer.step(closure)
        return evaluations - before

    # The class's traffic model (LBFGS: max_iter iterations over a full history) decides on
    # copies only: it is an upper bound, not a floor, so it is not the bandwidth's numerator.
    return Workload(CLOSURE, optimizer, params, step, class_minimal_bytes(case), None)


def _sparse_workload(
    case: Case, params: list[Tensor], gen: torch.Generator, density: float
) -> Workload:
    if any(p.dim() == 0 for p in params):
        raise ValueError(f"{case.size!r} has a 0-dim param: a sparse grad needs rows")
    n_batches = max(1, min(MAX_SPARSE_BATCHES, math.floor(1 / density)))
    reads, writes = OPTIMIZERS[case.optimizer].tensors_moved(**case.kwargs())
    dense_tensors = reads + writes - 1  # param and state, read and written; the grad is apart
    row_bytes = [p[0].numel() * p.element_size() for p in params]
    n_rows = sum(p.shape[0] for p in params)
    rotation: list[list[Tensor]] = []
    step_bytes, touched_fraction = [], []
    ever_touched = [torch.zeros(p.shape[0], dtype=torch.bool) for p in params]
    for _ in range(n_batches):
        grads, nbytes, touched = [], 0, 0
        for p, size, seen in zip(params, row_bytes, ever_touched):
            index, grad = _embedding_like_grad(p, density, gen)
            grads.append(grad)
            distinct = int(index.unique().numel())
            seen[index] = True
            nbytes += dense_tensors * distinct * size + index.numel() * (size + _INDEX_BYTES)
            touched += distinct
        rotation.append(grads)
        step_bytes.append(nbytes)
        touched_fraction.append(touched / n_rows)
    # what the rotation cycles through: the rows any of its batches touches
    working_set = sum(
        dense_tensors * int(seen.sum()) * size for size, seen in zip(row_bytes, ever_touched)
    )
    optimizer = make_optimizer(case, params)
    turn = iter(range(1 << 62))

    def step() -> None:
        grads = rotation[next(turn) % n_batches]
        for p, grad in zip(params, grads):
            p.grad = grad
        optimizer.step()

    row = {
        "sparse_density": density,
        "sparse_batches": n_batches,
        "touched_rows_fraction": statistics.fmean(touched_fraction),
    }
    mean_bytes = round(statistics.fmean(step_bytes))
    return Workload(SPARSE, optimizer, params, step, working_set, mean_bytes, row)


def _embedding_like_grad(p: Tensor, density: float, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """(row indices, grad): random rows of `p` drawn with replacement and random values, as the
    hybrid COO tensor nn.Embedding(sparse=True)'s backward makes (one sparse dim, uncoalesced)."""
    rows = p.shape[0]
    index = torch.randint(rows, (max(1, round(density * rows)),), generator=gen)
    values = torch.randn((index.numel(), *p.shape[1:]), generator=gen)
    grad = torch.sparse_coo_tensor(index.unsqueeze(0), values, p.shape, check_invariants=False)
    return index, grad.to(p.device, p.dtype)
