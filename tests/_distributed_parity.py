"""One rank of tests/test_distributed.py (run as ``python -m tests._distributed_parity OUT.json``
with torchrun's environment): a small MLP trained a few steps sharded (FSDP2 and ZeRO) with
workbench optimizers, against the same model trained in one process; rank 0 writes the worst
differences per configuration to OUT.json."""

from __future__ import annotations

import json
import os
import sys

import torch
import torch.distributed as dist
from torch.distributed.fsdp import fully_shard
from torch.distributed.optim import ZeroRedundancyOptimizer
from torch.distributed.tensor import DTensor

import workbench.optim as wo

STEPS = 3
# (compiled: its compile time is covered elsewhere.) SGD with momentum: state made by the update
# from the local shard (lazy_state) goes back into the optimizer as a DTensor.
OPTIMIZERS = ("Adamax", "Adam", "SGD")
CONFIGS = [(n, b) for n in OPTIMIZERS for b in ("forloop", "foreach", "fused")]
STATE = {"Adamax": "exp_avg", "Adam": "exp_avg", "SGD": "momentum_buffer"}


def mlp() -> torch.nn.Sequential:
    torch.manual_seed(0)
    # 10 x 6, 10, 3 x 10, 3: odd first dims, so the shards are uneven (2 + 1 rows of 3)
    return torch.nn.Sequential(torch.nn.Linear(6, 10), torch.nn.Tanh(), torch.nn.Linear(10, 3))


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return torch.randn(8, 6, generator=gen), torch.randn(8, 3, generator=gen)


def train(model: torch.nn.Module, opt: torch.optim.Optimizer, rank: int, world: int) -> None:
    x, y = batch()
    x, y = x.chunk(world)[rank], y.chunk(world)[rank]  # each rank its half of the batch
    for _ in range(STEPS):
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        if not any(isinstance(p, DTensor) for p in model.parameters()) and world > 1:
            for p in model.parameters():  # ZeRO without DDP: average the grads ourselves
                dist.all_reduce(p.grad)
                p.grad /= world
        opt.step()


def kwargs(name: str, backend: str) -> dict:
    extra = {"momentum": 0.9} if name == "SGD" else {}
    return {"lr": 0.05, "backend": backend, "weight_decay": 0.01, **extra}


def main(out: str) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    results: dict[str, dict] = {}
    for name, backend in CONFIGS:
        cls = wo.OPTIMIZERS[name]
        reference = mlp()
        train(reference, cls(reference.parameters(), **kwargs(name, backend)), 0, 1)
        expected = [p.detach() for p in reference.parameters()]
        moved = max(
            float((a - b.detach()).abs().max()) for a, b in zip(expected, mlp().parameters())
        )

        model = mlp()
        for layer in model:
            if isinstance(layer, torch.nn.Linear):
                fully_shard(layer)
        fully_shard(model)
        opt = cls(model.parameters(), **kwargs(name, backend))
        train(model, opt, rank, world)
        got = [p.full_tensor() for p in model.parameters()]
        p0 = next(iter(model.parameters()))
        state_types = sorted({type(v).__name__ for v in opt.state[p0].values()})
        # torch.optim loads our sharded state_dict (DTensor state, plain step) and keeps it
        sd = opt.state_dict()
        theirs = getattr(torch.optim, name)(model.parameters(), lr=0.05)
        theirs.load_state_dict(sd)
        key = STATE[name]
        loaded = theirs.state[p0][key]
        fsdp = {
            "max_diff": max(float((a - b).abs().max()) for a, b in zip(got, expected)),
            "state_types": state_types,
            "local_state_numel": opt.state[p0][key].to_local().numel(),
            "loads_into_torch": isinstance(loaded, DTensor)
            and bool(torch.equal(loaded.to_local(), sd["state"][0][key].to_local())),
        }

        model = mlp()
        zero = ZeroRedundancyOptimizer(
            model.parameters(), optimizer_class=cls, **kwargs(name, backend)
        )
        train(model, zero, rank, world)
        local_params = sum(p.numel() for g in zero.optim.param_groups for p in g["params"])
        zero_result = {
            "max_diff": max(
                float((a.detach() - b).abs().max()) for a, b in zip(model.parameters(), expected)
            ),
            "local_params": local_params,
        }
        results[f"{name}/{backend}"] = {"fsdp": fsdp, "zero": zero_result, "moved": moved}
    gathered: list = [None] * world
    dist.all_gather_object(gathered, results)
    if rank == 0:
        with open(out, "w") as f:
            json.dump(gathered, f)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
    # Skip the interpreter's teardown, as workbench.harness.distributed_worker does: there, now and
    # then (torch 2.13, gloo), a C++ thread's destructor aborts after the results are written.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
