"""Run a suite: every case becomes one row in the run store, measured or failed, never lost.

Per case: params and grads are built on the device (random normals: timing zeros would hide the
work) as the optimizer's step protocol asks (fixed dense grads, a closure, or sparse grads: see
step_protocols), the implementation builds its optimizer, and the probes the suite asks for run:
latency, the optimizer's exact state bytes, the step's peak memory above its inputs, kernel
launches, and achieved bandwidth against a streaming probe measured once per device in the same
run. Every probe takes the step as its protocol does (a closure step with its closure).
"""

from __future__ import annotations

import gc
import math
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch

from workbench.results.store import RunStore

from . import bandwidth, launches, memory
from .cases import Case
from .implementations import ImplementationError
from .step_protocols import (
    DENSE,
    Workload,
    build_workload,
    class_minimal_bytes,
    protocol_for,
    timed_row_fields,
)
from .suite import Suite
from .timing import Timing, time_steps

# A working set smaller than this many times the last-level cache is replicated and the copies
# stepped in turn, so each timed step streams from memory as a real model's step would.
_CACHE_MULTIPLE = 4
_MAX_COPIES = 64


def cache_bytes(device: torch.device) -> int:
    """The cache a small working set could live in: GPU L2, or the CPU's last-level cache."""
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).L2_cache_size)
    return bandwidth.last_level_cache_bytes() or 32 << 20


class CaseFailure(Exception):
    def __init__(self, status: str, message: str):
        super().__init__(message)
        self.status = status


@dataclass
class PreparedCase:
    """A case's workload (and its cache-defeating copies), ready to be timed: ``step`` takes the
    next copy's step and remembers what it returned (closure evaluations)."""

    case: Case
    device: torch.device
    workload: Workload
    copies: list[Workload]
    returned: list[int | None] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._steps = [copy.step for copy in self.copies]
        self._counter = iter(range(1 << 62))

    def step(self) -> None:
        self.returned.append(self._steps[next(self._counter) % len(self._steps)]())

    def drop_copies(self) -> None:
        """Free the copies once timed: the probes that follow step the first one only."""
        del self.copies[1:], self._steps[1:]


def check_runnable(case: Case) -> None:
    """Raise CaseFailure for a case this machine cannot run (before anything is built)."""
    if case.device == "cuda" and not torch.cuda.is_available():
        raise CaseFailure("skipped", "CUDA is not available on this machine")


def prepare_case(case: Case, suite: Suite) -> PreparedCase:
    """Build the case's workload, replicated while its working set would fit the cache."""
    device = torch.device(case.device)

    def build(seed: int) -> Workload:
        return build_workload(case, device, seed, density=suite.sparse.density)

    workload = build(0)
    copies = [workload]
    working_set = workload.working_set_bytes
    llc = cache_bytes(device)
    if 0 < working_set < _CACHE_MULTIPLE * llc:
        n = min(_MAX_COPIES, math.ceil(_CACHE_MULTIPLE * llc / working_set))
        copies += [build(seed=i) for i in range(1, n)]
    return PreparedCase(case, device, workload, copies)


def finish_case(
    prepared: PreparedCase, timing: Timing, suite: Suite, probe_bw: float | None
) -> dict[str, Any]:
    """The case's row from its timing, then the memory and launch probes (untimed)."""
    workload, device = prepared.workload, prepared.device
    if not all(bool(torch.isfinite(p).all()) for p in workload.params):
        raise CaseFailure("nan", "a param became NaN or inf during the timed steps")
    nbytes = workload.minimal_bytes or 0
    row: dict[str, Any] = {
        "first_call_s": timing.first_call_s,
        "median_s": timing.median_s,
        "iqr_s": timing.iqr_s,
        "min_s": min(timing.samples_s),
        "n_samples": len(timing.samples_s),
        "samples_s": timing.samples_s,
        "working_set_copies": len(prepared.copies),
        "minimal_bytes": nbytes or None,
        **workload.row,
        **timed_row_fields(workload, prepared.returned[-len(timing.samples_s) :]),
    }
    if nbytes:
        row["achieved_bw"] = nbytes / timing.median_s
        row["bw_fraction"] = row["achieved_bw"] / probe_bw if probe_bw else None
    prepared.drop_copies()
    if suite.measure.memory:
        row["state_bytes"] = memory.state_bytes(workload.optimizer)
        row["step_peak_bytes"] = memory.step_peak_bytes(workload.step, device)
    if suite.measure.launches:
        row["launches"] = launches.kernel_launches(workload.step, device)
        row["launch_unit"] = launches.launch_unit(device)  # CPU counts aten ops, not kernels
    return row


def run_case(case: Case, suite: Suite, probe_bw: float | None) -> dict[str, Any]:
    """Measure one case; raises CaseFailure (or anything) for the caller to turn into a row."""
    check_runnable(case)
    if case.world_size > 1:
        if protocol_for(case.optimizer) != DENSE:
            raise CaseFailure("error", f"{case.optimizer}'s step protocol cannot be sharded")
        return run_sharded_case(case, suite, probe_bw)
    prepared = prepare_case(case, suite)
    t = suite.timing
    timing = time_steps(
        prepared.step,
        prepared.device,
        warmup_s=t.warmup_s,
        min_steps=t.min_steps,
        max_steps=t.max_steps,
        budget_s=t.budget_s,
    )
    return finish_case(prepared, timing, suite, probe_bw)


def run_sharded_case(case: Case, suite: Suite, probe_bw: float | None) -> dict[str, Any]:
    """A case sharded over ``world_size`` ranks: one process per rank (distributed_worker), rank 0
    writes the row; a rank that fails or outlives ``[distributed] timeout_s`` ends the case."""
    import json
    import tempfile
    from pathlib import Path

    from .distributed import LaunchError, launch
    from .distributed_worker import spec_for

    if case.device == "cuda" and case.world_size > torch.cuda.device_count():
        raise CaseFailure(
            "skipped",
            f"world_size={case.world_size} needs {case.world_size} GPUs; "
            f"{torch.cuda.device_count()} visible",
        )
    if not torch.distributed.is_available():
        raise CaseFailure("skipped", "this torch build has no torch.distributed")
    with tempfile.TemporaryDirectory(prefix="workbench-dist-") as tmp:
        out = Path(tmp) / "row.json"
        spec = Path(tmp) / "spec.json"
        spec.write_text(json.dumps(spec_for(case, suite, out)))
        try:
            launch(
                "workbench.harness.distributed_worker",
                [str(spec)],
                case.world_size,
                timeout_s=suite.distributed.timeout_s,
            )
        except LaunchError as e:
            raise CaseFailure(e.status, str(e)) from None
        row: dict[str, Any] = json.loads(out.read_text())
    nbytes = class_minimal_bytes(case)
    row["minimal_bytes"] = nbytes or None
    row["distributed_backend"] = suite.distributed.backend
    if nbytes:
        # bytes every rank moves together per step, over the step time of the slowest rank
        row["achieved_bw"] = nbytes / row["median_s"]
        row["bw_fraction"] = row["achieved_bw"] / probe_bw if probe_bw else None
    return row


def _release(device_type: str) -> None:
    gc.collect()
    if device_type == "cuda" and torch.cuda.is_available():
        torch.cuda.empty_cache()


def run_cases(
    suite: Suite,
    store: RunStore,
    cases: Iterable[Case],
    on_case_done: Callable[[Case, dict[str, Any]], None] = lambda case, row: None,
) -> None:
    """Run the cases the store does not hold yet, appending one row per case as it finishes.

    The suite's kind says what a case measures: step latency (run_case, or run_interleaved for
    a group of cases timed side by side when ``[timing] interleave`` is on) or convergence on a
    test problem (run_convergence_case, whose reference runs are shared by the cases of one run).
    """
    from .convergence import ReferenceCache, run_convergence_case  # it imports CaseFailure
    from .interleave import interleave_groups, run_interleaved  # it imports this module

    done = store.done_case_ids()
    pending = [case for case in cases if case.case_id not in done]
    probes: dict[str, float | None] = dict(store.manifest.get("stream_bandwidth", {}))
    references = ReferenceCache()
    interleave = suite.kind == "latency" and suite.timing.interleave
    for unit in interleave_groups(pending) if interleave else [[case] for case in pending]:
        device = unit[0].device
        outcomes: list[tuple[Case, Callable[[], dict[str, Any]]]]
        try:
            if suite.measure.bandwidth_probe and device not in probes:
                probes[device] = _probe(device)
                store.manifest["stream_bandwidth"] = probes
                store.write_manifest()
        except Exception as e:  # the probe's failure is each case's row, as any other
            outcomes = [(case, failed_outcome(e)) for case in unit]
        else:
            probe = probes.get(device)
            if len(unit) > 1:
                outcomes = run_interleaved(unit, suite, probe)
            elif suite.kind == "convergence":
                outcomes = [(unit[0], partial(run_convergence_case, unit[0], suite, references))]
            else:
                outcomes = [(unit[0], partial(run_case, unit[0], suite, probe))]
        for case, outcome in outcomes:
            row = _row(case, outcome)
            store.append(row)
            on_case_done(case, row)
        del outcomes
        _release(device)


def _row(case: Case, outcome: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """The case's row: what `outcome` measured, or the failure it raised."""
    row: dict[str, Any] = {"case_id": case.case_id, **case.axes()}
    try:
        row.update(outcome())
        # a diverged convergence case returns its status, to keep its curve in the row
        row.setdefault("status", "ok")
        row.setdefault("error", None)
    except (CaseFailure, ImplementationError) as e:
        row["status"], row["error"] = e.status, str(e)
    except torch.OutOfMemoryError as e:
        row["status"], row["error"] = "oom", str(e).splitlines()[0]
    except Exception as e:  # a failing case is a row; the sweep goes on
        row["status"] = "error"
        row["error"] = f"{type(e).__name__}: {e}"
        row["traceback"] = traceback.format_exc(limit=8)
    return row


def failed_outcome(error: Exception) -> Callable[[], dict[str, Any]]:
    """An outcome that raises `error` when its row is built (see _row)."""

    def outcome() -> dict[str, Any]:
        raise error

    return outcome


def _probe(device: str) -> float | None:
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        return None
    return bandwidth.stream_bandwidth(dev)
