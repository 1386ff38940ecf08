"""Test-wide setup. Runs before any test module imports torch's or triton's kernels."""

from __future__ import annotations

import os

import pytest
import torch

# Without a GPU, the fused backend's Triton kernels run on CPU tensors through Triton's
# interpreter. It must be switched on before triton is first imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

HAS_CUDA = torch.cuda.is_available()

# The fused backend has two CPU implementations for the optimizers with a C kernel: the C kernel
# (what a CPU user runs) and the Triton kernel under the interpreter (what a GPU user runs, checked
# here). Tests of the fused backend run both: the second marked `fused_triton`.
FUSED_CPU_PATHS = [
    pytest.param("native", id="native"),
    pytest.param("triton", id="triton", marks=pytest.mark.fused_triton),
]


@pytest.fixture(autouse=True)
def _fused_cpu_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Send CPU tensors of a `fused_triton` test to the Triton kernels, not the C ones."""
    if request.node.get_closest_marker("fused_triton") is not None:
        monkeypatch.setenv("WORKBENCH_FUSED_CPU", "triton")


def _second_tier_compiled_parity(item: pytest.Item) -> bool:
    """Compiled-backend parity cases beyond the first tier `make test` runs.

    Every compiled case is an inductor compile (seconds each on 2 cores, cold cache). `make test`
    runs the compiled backend on every config in fp32, on the default config in fp64, and in bf16;
    the rest (fp64 and fp16 for the other configs) is marked slow and runs in `make test-all`.
    """
    params = getattr(getattr(item, "callspec", None), "params", {})
    if params.get("backend") != "compiled" or "entry" not in params:
        return False
    dtype = params.get("dtype")
    if dtype == torch.float16:
        return True
    return dtype == torch.float64 and params.get("config") != params["entry"].configs[0]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    slow = pytest.mark.slow
    for item in items:
        if item.module.__name__.endswith("test_parity") and _second_tier_compiled_parity(item):
            item.add_marker(slow)
        # the kernel-compile tests check Triton kernels, reached through steps on CPU tensors
        if item.module.__name__.split(".")[-1].startswith("test_kernel_compile"):
            item.add_marker(pytest.mark.fused_triton)
    if HAS_CUDA:
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
