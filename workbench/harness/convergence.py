"""Convergence cases: step an optimizer on a test problem and record how the loss falls.

Per case the problem's params are made from the suite's seed, the implementation builds its
optimizer, and ``steps`` full steps run (loss, backward, optimizer step). Every per-step list is
indexed by the number of steps taken: entry 0 is the start, entry k the point after k steps, so a
finished case has ``steps + 1`` entries and one cut short by divergence fewer.

A step follows the optimizer's step protocol (workbench.harness.step_protocols): a closure
optimizer (LBFGS) takes one ``step(closure)`` per step, however many times it calls the closure
(each call a forward and backward), and ``evals_curve`` counts those calls so that curves can be
compared per gradient evaluation as well as per step (for every other optimizer it is 0, 1, 2,
...); a sparse-grad optimizer (SparseAdam) differentiates the problem's loss with sparse grads,
which only some problems offer. On a mini-batch problem a step differentiates that step's batch,
and the recorded loss is the full-batch loss, evaluated outside the timed region.

Every case is also compared with a reference run: torch.optim's class of that name, per-tensor
(``foreach=False``), with the same flags, seed, dtype and device (the workbench's forloop backend
for an optimizer torch.optim lacks). ``distance_curve`` is the relative distance between the two
param vectors after each step and ``distance_to_reference`` its largest value: a correct backend
shows rounding (0 or ~1e-8 per step in float32, which some dynamics amplify: torch's own foreach
backend of one Adam variant ends 5e-4 from its forloop on the quadratic), a peer with other
defaults or a wrong formula shows a real difference from the first step on.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch
from torch import Tensor

from workbench.problems import PROBLEMS, Problem

from .cases import Case
from .implementations import make_optimizer
from .measure import CaseFailure, check_runnable
from .step_protocols import CLOSURE, SPARSE, protocol_for
from .suite import Suite
from .timing import sync

# Added to the reference's norm so that a reference at the origin (Rastrigin's optimum) does not
# divide by zero; far below any float32 rounding of a param vector of norm ~1.
_EPS = 1e-12


@dataclass
class Steps:
    """What one run of an optimizer on a problem went through."""

    losses: list[float]  # loss after k steps, k = 0, 1, ...
    times_s: list[float]  # seconds spent in the first k steps (forward, backward, step)
    points: Tensor  # [len(losses), numel]: the params after k steps, flattened, on the CPU
    diverged_step: int | None  # the first k whose loss or params are not finite
    evals: list[int] = dataclasses.field(default_factory=list)  # gradient evaluations in k steps


def _flat(params: Sequence[Tensor]) -> Tensor:
    return torch.cat([p.detach().reshape(-1) for p in params]).cpu()


def run_steps(
    problem: Problem,
    make: Callable[[list[Tensor]], torch.optim.Optimizer],
    steps: int,
    *,
    seed: int,
    dtype: torch.dtype,
    device: torch.device,
    protocol: str = "dense",
) -> Steps:
    """Take `steps` optimizer steps on `problem`, stopping at the first non-finite loss or param.

    `protocol` is the optimizer's step protocol (step_protocols.PROTOCOLS).
    """
    params = problem.make_params(seed, dtype, device)
    optimizer = make(params)
    sparse = protocol == SPARSE
    full_batch = problem.step_loss is None
    losses: list[float] = []
    times = [0.0]
    evals = [0]
    points: list[Tensor] = []
    diverged = None
    for k in range(steps + 1):
        points.append(_flat(params))  # outside the timed region: recording is not the work
        last = k == steps
        # The loss at this point: a full-batch step computes it as its first forward (timed: it is
        # the work); a mini-batch step differentiates its batch's, so it is evaluated apart,
        # outside the timed region, as is the last point's.
        recorded = None
        if last or not full_batch:
            with torch.no_grad():
                recorded = problem.loss(params)
        start = time.perf_counter()
        if not last:
            objective = functools.partial(problem.training_loss, params, k, sparse)
            loss, n = _step(optimizer, protocol, objective)
            recorded = loss if full_batch else recorded
        sync(device)
        elapsed = time.perf_counter() - start
        assert recorded is not None
        losses.append(float(recorded.detach()))
        if not (math.isfinite(losses[-1]) and bool(torch.isfinite(points[-1]).all())):
            diverged = k
            break
        if not last:
            times.append(times[-1] + elapsed)
            evals.append(evals[-1] + n)
    return Steps(losses, times, torch.stack(points), diverged, evals)


def _step(
    optimizer: torch.optim.Optimizer, protocol: str, objective: Callable[[], Tensor]
) -> tuple[Tensor, int]:
    """One optimizer step on `objective`: (the loss at the params it started from, the number of
    times the loss and its gradient were evaluated)."""
    if protocol != CLOSURE:
        loss = objective()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.detach(), 1
    losses: list[Tensor] = []

    @torch.enable_grad()
    def closure() -> Tensor:
        optimizer.zero_grad(set_to_none=True)
        loss = objective()
        loss.backward()
        losses.append(loss.detach())
        return loss

    optimizer.step(closure)
    # the first evaluation is at the params the step started from, whatever the step returns
    return losses[0], len(losses)


def relative_distances(points: Tensor, reference: Tensor) -> list[float]:
    """||x_k - r_k|| / (||r_k|| + eps) for each step k where both runs are finite.

    Both runs stop at their first non-finite point, so the finite steps are a common prefix.
    """
    n = min(len(points), len(reference))
    x, r = points[:n].double(), reference[:n].double()
    finite = torch.isfinite(x).all(1) & torch.isfinite(r).all(1)
    n = int(finite.long().cumprod(0).sum())
    distance = torch.linalg.vector_norm(x[:n] - r[:n], dim=1)
    return (distance / (torch.linalg.vector_norm(r[:n], dim=1) + _EPS)).tolist()


def reference_case(case: Case) -> Case:
    """The case whose run every other implementation of `case` is measured against."""
    if hasattr(torch.optim, case.optimizer):
        return dataclasses.replace(case, implementation="torch", backend="forloop")
    return dataclasses.replace(case, implementation="workbench", backend="forloop")


def reference_label(case: Case) -> str:
    ref = reference_case(case)
    if ref.implementation == "torch":
        return f"torch.optim.{case.optimizer}(foreach=False)"
    return f"workbench.optim.{case.optimizer}(backend='forloop')"


class ReferenceCache:
    """Reference runs of one sweep, the most recent few kept.

    The suite orders implementations and backends innermost, so the cases sharing a reference run
    back to back and a handful of entries is enough; more would hold every trajectory of a long
    sweep in memory.
    """

    def __init__(self, max_entries: int = 4) -> None:
        self.max_entries = max_entries
        self._runs: OrderedDict[Hashable, Steps] = OrderedDict()

    def get(self, key: Hashable, compute: Callable[[], Steps]) -> Steps:
        if key in self._runs:
            self._runs.move_to_end(key)
            return self._runs[key]
        run = self._runs[key] = compute()
        while len(self._runs) > self.max_entries:
            self._runs.popitem(last=False)
        return run

    def put(self, key: Hashable, run: Steps) -> None:
        self.get(key, lambda: run)


def run_convergence_case(
    case: Case, suite: Suite, references: ReferenceCache | None = None
) -> dict[str, Any]:
    """Run one convergence case; the row's fields (status "diverged" with the step, not raised,
    so that the curve up to the blow-up is kept)."""
    check_runnable(case)
    device = torch.device(case.device)
    if case.problem is None:
        raise CaseFailure("error", "a convergence case needs a problem")
    problem = PROBLEMS[case.problem]
    settings = suite.convergence
    dtype = getattr(torch, case.dtype)

    protocol = protocol_for(case.optimizer)  # the reference is the same optimizer: same protocol
    if protocol == SPARSE and not problem.sparse_grads:
        raise CaseFailure("error", f"{case.optimizer} needs sparse grads; {problem.name} has none")

    def run(c: Case) -> Steps:
        return run_steps(
            problem,
            lambda params: make_optimizer(c, params),
            settings.steps,
            seed=settings.seed,
            dtype=dtype,
            device=device,
            protocol=protocol,
        )

    references = references or ReferenceCache(max_entries=1)
    ref_case = reference_case(case)
    # Everything the reference run depends on: its axes but the repeat, and the settings.
    key = (dataclasses.replace(ref_case, repeat=0), settings.steps, settings.seed)
    steps = run(case)
    if (case.implementation, case.backend) == (ref_case.implementation, ref_case.backend):
        references.put(key, steps)  # this case is its own reference: no second run
    reference = references.get(key, lambda: run(ref_case))
    return _fields(problem, settings.steps, settings.seed, steps, reference, reference_label(case))


def _fields(
    problem: Problem, n_steps: int, seed: int, steps: Steps, reference: Steps, label: str
) -> dict[str, Any]:
    """The case's measurements: what measure.case_row puts in its row after its id and axes (as
    measure.finish_case's are for a latency case)."""
    finite = [v for v in steps.losses if math.isfinite(v)]
    distances = relative_distances(steps.points, reference.points)
    hit = next((k for k, v in enumerate(steps.losses) if v <= problem.target_loss), None)
    row: dict[str, Any] = {
        "steps": n_steps,
        "seed": seed,
        "loss_curve": steps.losses,
        "loss_time_s": steps.times_s,
        "evals_curve": steps.evals,
        "evaluations": steps.evals[-1],
        "final_loss": steps.losses[-1],
        "best_loss": min(finite) if finite else math.nan,
        "target_loss": problem.target_loss,
        "optimum_loss": problem.optimum_loss,
        "steps_to_target": hit,
        "time_to_target_s": steps.times_s[hit] if hit is not None else None,
        "first_step_s": steps.times_s[1] if len(steps.times_s) > 1 else None,
        "total_time_s": steps.times_s[-1],
        "diverged_step": steps.diverged_step,
        "trajectory": steps.points.double().tolist() if problem.is_2d else None,
        "reference": label,
        # Per step, since the dynamics amplify differences: rounding shows as ~1e-8 after one
        # step and may grow (adaptive methods near a minimum follow gradient signs), a wrong
        # formula is large from the first step on.
        "distance_curve": distances,
        "distance_to_reference": max(distances) if distances else None,
    }
    if steps.diverged_step is not None:
        row["status"] = "diverged"
        row["error"] = f"loss or params not finite after {steps.diverged_step} steps"
    return row


def convergence_table(df: pd.DataFrame) -> pd.DataFrame:
    """One line per convergence case with the figures a reader looks at first."""
    cols = {
        "optimizer": "optimizer",
        "implementation": "impl",
        "backend": "backend",
        "problem": "problem",
        "dtype": "dtype",
        "device": "device",
        "final_loss": "final loss",
        "best_loss": "best loss",
        "steps_to_target": "steps to target",
        "time_to_target_s": "s to target",
        "total_time_s": "total s",
        "distance_to_reference": "vs reference",
        "status": "status",
    }
    return df[[c for c in cols if c in df.columns]].rename(columns=cols)
