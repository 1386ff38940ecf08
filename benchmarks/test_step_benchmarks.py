"""Step-time regression benchmarks: every workbench optimizer and backend beside torch.optim.

`make regress` times these with pytest-benchmark and compares the medians with the baseline saved
in results/baselines/ (failing on a median 25% slower); `make regress-baseline` saves a new one.
They live outside tests/ so that `make test` never times anything.

The problem is small and fixed (a small MLP's shapes, random normal params and grads: timing zeros
would hide the work), so the whole sweep takes seconds per case. Optimizers are built the way the
harness builds them (workbench.harness.step_protocols.build_workload), so a benchmark and a run
time the same construction.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Iterator

import pytest
import torch

from workbench.harness.cases import Case
from workbench.harness.step_protocols import Workload, build_workload
from workbench.optim import OPTIMIZERS

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
if DEVICE == "cpu":
    # One thread: a gate wants stable numbers, and OpenMP's barriers collapse when other processes
    # share the cores (seen here: 2 threads, load 10 on 2 cores, p90 step 300 ms vs median 0.25).
    torch.set_num_threads(1)
# A two-layer MLP and a classifier head: ~135k fp32 elements in 6 tensors of mixed sizes.
SHAPES = ((256, 256), (256,), (256, 256), (256,), (10, 256), (10,))
# State is created lazily on the first step and `compiled` compiles on it: keep both untimed.
WARMUP_STEPS = 3
# `compiled` compiles once per optimizer, 10-30 s each on a 2-core CPU: for all optimizers that is
# minutes, so it is opt-in (make regress REGRESS_BACKENDS=forloop,foreach,fused,compiled). A
# baseline only compares with runs of the same selection.
BACKENDS = os.environ.get("REGRESS_BACKENDS", "forloop,foreach,fused").split(",")
# torch.optim's backends, by the constructor flag each needs
_TORCH_FLAG = {"forloop": "foreach", "foreach": "foreach", "fused": "fused"}


def _params() -> Iterator[pytest.param]:
    for name in sorted(OPTIMIZERS):
        for backend in (b for b in OPTIMIZERS[name].backends if b in BACKENDS):
            marks = []
            if backend == "fused" and DEVICE == "cpu" and OPTIMIZERS[name].cpu_kernel is None:
                # without a C kernel the Triton one runs in its interpreter on CPU: a numerics
                # check, not a timing
                marks.append(pytest.mark.skip(reason="fused has no CPU kernel: Triton on CUDA"))
            yield pytest.param(name, "workbench", backend, id=f"{name}-workbench-{backend}",
                               marks=marks)  # fmt: skip
        torch_cls = getattr(torch.optim, name, None)
        accepted = inspect.signature(torch_cls).parameters if torch_cls else {}
        for backend, flag in _TORCH_FLAG.items():
            if backend in BACKENDS and flag in accepted:
                yield pytest.param(name, "torch", backend, id=f"{name}-torch-{backend}")


def _build(optimizer: str, implementation: str, backend: str) -> Workload:
    """The optimizer over SHAPES, stepped as the harness steps it: fixed dense grads, or its
    closure (LBFGS), or sparse grads (SparseAdam, 1% of the rows)."""
    # Muon steps matrices only (torch's refuses anything else): the MLP's weights
    matrices_only = getattr(OPTIMIZERS[optimizer], "matrices_only", False)
    shapes = tuple(s for s in SHAPES if len(s) == 2) if matrices_only else SHAPES
    case = Case(optimizer, implementation, backend, size="mlp", shapes=shapes, dtype="float32",
                device=DEVICE, flags=(), repeat=0)  # fmt: skip
    return build_workload(case, torch.device(DEVICE), seed=0, density=0.01)


@pytest.mark.parametrize(("optimizer", "implementation", "backend"), list(_params()))
def test_step(benchmark, optimizer: str, implementation: str, backend: str) -> None:
    try:
        workload = _build(optimizer, implementation, backend)
    except RuntimeError as e:  # e.g. torch's fused on a device it has no kernel for
        pytest.skip(f"{implementation} {backend} cannot be built here: {e}")
    opt = workload.optimizer
    for _ in range(WARMUP_STEPS):
        workload.step()
    step: Callable[[], object] = workload.step
    if DEVICE == "cuda":

        def step() -> None:  # the timer is on the host: wait for the kernels it launched
            workload.step()
            torch.cuda.synchronize()

    numel = sum(p.numel() for g in opt.param_groups for p in g["params"])
    benchmark.extra_info.update(device=DEVICE, numel=numel, threads=torch.get_num_threads())
    benchmark(step)
    assert all(bool(torch.isfinite(p).all()) for g in opt.param_groups for p in g["params"])
