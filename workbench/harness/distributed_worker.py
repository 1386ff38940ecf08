"""One rank of a sharded case (``world_size > 1``): ``python -m workbench.harness.distributed_worker
SPEC.json``, launched by the runner (see ``distributed.launch``) with torchrun's environment.

The params are sharded as FSDP2 shards them: each full tensor split along dim 0 in
``world_size`` chunks (``torch.chunk``, the last ones shorter or empty), held as DTensors with
``Shard(0)`` over a 1-D device mesh; grads likewise. The optimizer steps those DTensors (ours
unwraps them to the local shards; torch.optim's runs DTensor ops).

Measured on every rank, then gathered to rank 0, which writes the row:
- step latency: a fixed number of steps agreed by all ranks, each preceded by a barrier so that
  the ranks start it together; one sample per step per rank (timing.time_calls: perf_counter;
  CUDA: synchronized). The row's figures of the samples are every latency row's
  (timing.sample_fields).
- communication: the collectives one FSDP2 training step adds around this optimizer step, over a
  flat buffer of all the params (FSDP2 groups params per module; one group here): the
  reduce-scatter of the full gradients to the shards and the all-gather of the updated shards
  into full params. Each is timed on its own after a barrier (wall time of the call, synchronized
  on CUDA), median over up to COMM_REPEATS calls. The row's comm_s is the largest per-rank sum of
  the two; comm_bytes the size of the full buffer.
- memory: exact optimizer-state bytes of this rank (its local shards, plus the step counters), and
  the step's peak above its inputs (memory.step_peak_bytes).
"""

from __future__ import annotations

import json
import math
import os
import statistics
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

# torch and the stdlib only, like this module: nothing here imports triton (see main)
from workbench.harness.timing import Timing, sample_fields, time_calls

# a test-only fault: this rank sleeps instead of stepping (the runner must end the case)
HANG_ENV = "WORKBENCH_TEST_HANG_RANK"
# collectives over all params are long on big models: a median of this many calls at most
COMM_REPEATS = 20


def _shard(full: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    if full.dim() == 0:
        return full.clone()
    pieces = list(torch.chunk(full, world, dim=0))
    pieces += [full[0:0]] * (world - len(pieces))
    return pieces[rank].clone()


def sharded_params(
    shapes: Any, dtype: torch.dtype, device: torch.device, mesh: Any, seed: int = 0
) -> list[torch.Tensor]:
    """The case's params and grads (the same numbers as a single-process case), as DTensors."""
    from torch.distributed.tensor import DTensor, Replicate, Shard

    rank, world = dist.get_rank(), dist.get_world_size()
    gen = torch.Generator().manual_seed(seed)
    params = []
    for shape in shapes:
        full = torch.randn(shape, generator=gen).to(device, dtype)
        grad = torch.randn(shape, generator=gen).to(device, dtype)
        placements = [Shard(0)] if full.dim() else [Replicate()]

        def wrap(t: torch.Tensor, full: torch.Tensor = full, placements: Any = placements) -> Any:
            return DTensor.from_local(
                _shard(t, rank, world), mesh, placements, run_check=False,
                shape=full.shape, stride=full.stride(),
            )  # fmt: skip

        p = torch.nn.Parameter(wrap(full))
        p.grad = wrap(grad)
        params.append(p)
    return params


def _padded_chunk(shape: Any, world: int) -> int:
    if not shape:
        return 1
    return math.ceil(shape[0] / world) * math.prod(shape[1:])


def _together(call: Any, n: int, device: torch.device) -> list[float]:
    """`n` timed calls, every rank starting each one at once (a barrier before it)."""
    return time_calls(call, n, device, before=dist.barrier)


def run_rank(spec: dict[str, Any]) -> dict[str, Any] | None:
    """This rank's measurements of the spec's case; on rank 0, the case's row (else None)."""
    from torch.distributed.device_mesh import init_device_mesh

    # imported here, not at the top: they import workbench.optim, and through it triton, which
    # must not be imported before main() has set TRITON_INTERPRET from the spec
    from workbench.harness import launches, memory
    from workbench.harness.cases import Case
    from workbench.harness.implementations import make_optimizer

    c = spec["case"]
    case = Case(
        **{
            **c,
            "shapes": tuple(tuple(s) for s in c["shapes"]),
            "flags": tuple((k, tuple(v) if isinstance(v, list) else v) for k, v in c["flags"]),
        }
    )
    timing, measure = spec["timing"], spec["measure"]
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device(case.device)
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank)))
        torch.cuda.set_device(device)
    mesh = init_device_mesh(device.type, (world,))
    dtype = getattr(torch, case.dtype)
    params = sharded_params(case.shapes, dtype, device, mesh)
    optimizer = make_optimizer(case, params)
    if os.environ.get(HANG_ENV) == str(rank):
        time.sleep(1e6)

    # first call: state creation (and compilation for "compiled")
    (first_call_s,) = _together(optimizer.step, 1, device)

    # how many steps: from the slowest rank's short warm-up, the same count on every rank
    warm = _together(optimizer.step, 3, device)
    per_step = torch.tensor([max(statistics.median(warm), 1e-6)], dtype=torch.float64)
    dist.all_reduce(per_step, op=dist.ReduceOp.MAX)
    n_warm = min(1000, math.ceil(timing["warmup_s"] / per_step.item()))
    n = math.ceil(timing["budget_s"] / per_step.item())
    n = max(timing["min_steps"], min(timing["max_steps"], n))
    for _ in range(n_warm):
        optimizer.step()
    steps = _together(optimizer.step, n, device)
    if not all(bool(torch.isfinite(p.to_local()).all()) for p in params):
        raise RuntimeError(f"rank {rank}: a param became NaN or inf during the timed steps")

    # the collectives of a sharded training step, on one flat buffer of all params
    shard_numel = sum(p.to_local().numel() for p in params)
    # each param padded to world_size equal chunks of dim 0, as FSDP2 pads its shards
    per_rank = max(1, sum(_padded_chunk(p.shape, world) for p in params))
    shard = torch.zeros(per_rank, dtype=dtype, device=device)
    full = torch.zeros(per_rank * world, dtype=dtype, device=device)
    reps = min(n, COMM_REPEATS)
    gather = _together(lambda: dist.all_gather_into_tensor(full, shard), reps, device)
    scatter = _together(lambda: dist.reduce_scatter_tensor(shard, full), reps, device)

    mine: dict[str, Any] = {
        "first_call_s": first_call_s,
        "samples_s": steps,
        "median_s": statistics.median(steps),
        "all_gather_s": statistics.median(gather),
        "reduce_scatter_s": statistics.median(scatter),
        "shard_numel": shard_numel,
        "comm_bytes": per_rank * world * torch.empty((), dtype=dtype).element_size(),
    }
    if measure["memory"]:
        mine["state_bytes"] = memory.state_bytes(optimizer)
        mine["step_peak_bytes"] = memory.step_peak_bytes(optimizer.step, device)
    if measure["launches"]:
        mine["launches"] = launches.kernel_launches(optimizer.step, device)
        mine["launch_unit"] = launches.launch_unit(device)
    ranks: list[Any] = [None] * world
    dist.all_gather_object(ranks, mine)
    return combine(ranks) if rank == 0 else None


def combine(ranks: list[dict[str, Any]]) -> dict[str, Any]:
    """One row from every rank's measurements: per-rank lists, and the figure a sharded step is
    judged by (a step ends when its slowest rank does: per-step maximum over ranks)."""
    samples = [max(per_step) for per_step in zip(*(r["samples_s"] for r in ranks))]
    slowest = Timing(first_call_s=max(r["first_call_s"] for r in ranks), samples_s=samples)
    row: dict[str, Any] = {
        **sample_fields(slowest),
        "working_set_copies": 1,
        "rank_median_s": [r["median_s"] for r in ranks],
        "rank_shard_numel": [r["shard_numel"] for r in ranks],
        "all_gather_s": max(r["all_gather_s"] for r in ranks),
        "reduce_scatter_s": max(r["reduce_scatter_s"] for r in ranks),
        "comm_s": max(r["all_gather_s"] + r["reduce_scatter_s"] for r in ranks),
        "rank_comm_s": [r["all_gather_s"] + r["reduce_scatter_s"] for r in ranks],
        "comm_bytes": ranks[0]["comm_bytes"],
    }
    if "state_bytes" in ranks[0]:
        row["state_bytes"] = max(r["state_bytes"] for r in ranks)  # per rank, the largest
        row["rank_state_bytes"] = [r["state_bytes"] for r in ranks]
        peaks = [r["step_peak_bytes"] for r in ranks]
        row["step_peak_bytes"] = max(peaks) if None not in peaks else None
        row["rank_step_peak_bytes"] = peaks
    if "launches" in ranks[0]:  # rank 0's count (every rank steps the same number of tensors)
        row["launches"], row["launch_unit"] = ranks[0]["launches"], ranks[0]["launch_unit"]
    return row


def spec_for(case: Any, suite: Any, out: Path) -> dict[str, Any]:
    return {
        "case": asdict(case),
        "timing": asdict(suite.timing),
        "measure": asdict(suite.measure),
        "backend": suite.distributed.backend,
        "out": str(out),
    }


def main(argv: list[str]) -> int:
    spec = json.loads(Path(argv[0]).read_text())
    if "TRITON_INTERPRET" in spec:  # before anything imports triton
        os.environ["TRITON_INTERPRET"] = spec["TRITON_INTERPRET"]
    dist.init_process_group(spec["backend"])
    try:
        row = run_rank(spec)
        if row is not None:
            Path(spec["out"]).write_text(json.dumps(row))
    finally:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    code = main(sys.argv[1:])
    # Skip the interpreter's teardown: there, now and then (torch 2.13, gloo, after a profiled
    # step), a C++ thread's destructor aborts ("terminate called without an active exception")
    # after the row is written, which would turn a measured case into an error row.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
