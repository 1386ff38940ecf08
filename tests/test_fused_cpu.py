"""The fused backend's C kernels (workbench/optim/_kernels/cpu): what the parity tables, with
their small tensors, do not reach.

The parity tables (tests/test_parity.py) run every config through these kernels on tiny tensors,
which one thread updates. Here: tensors big enough that the threads split them (cut inside a
tensor, across tensors, ragged lengths), params joining SGD's momentum later, and the build's
errors and cache.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.optim_table import TABLE
from workbench.optim import OPTIMIZERS
from workbench.optim._kernels import cpu as cpu_kernels
from workbench.optim._kernels.cpu import build

KERNEL_OPTIMIZERS = sorted(n for n, cls in OPTIMIZERS.items() if cls.cpu_kernel is not None)

# each optimizer's configs and steps here: its table entry's fused_cpu_configs / fused_cpu_steps
CONFIGS = {e.name: e.fused_cpu_configs for e in TABLE if e.fused_cpu_configs}
STEPS = {e.name: e.fused_cpu_steps for e in TABLE}


@pytest.fixture
def two_threads():
    """The parallel path: every kernel call splits its work between two OpenMP threads."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_every_kernel_optimizer_is_covered_here() -> None:
    assert sorted(CONFIGS) == KERNEL_OPTIMIZERS


def _steps(name: str, config: dict, backend: str, dtype: torch.dtype, shapes: list) -> list:
    torch.manual_seed(0)
    params = [torch.randn(s, dtype=dtype) for s in shapes]
    params[2] = params[2].t()  # dense but transposed: walked in memory order
    opt = OPTIMIZERS[name](params, backend=backend, **config)
    gen = torch.Generator().manual_seed(1)
    for _ in range(STEPS[name]):
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen, dtype=dtype)
        opt.step()
    return params + [v for p in params for v in opt.state[p].values()]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize(
    ("name", "config"), [(n, c) for n in KERNEL_OPTIMIZERS for c in CONFIGS.get(n, [])], ids=str
)
def test_threads_split_big_ragged_tensors_like_forloop(
    name: str, config: dict, dtype: torch.dtype, two_threads: None
) -> None:
    # 40001 + 17 + 300*101 + 0 + 1 elements: above the serial threshold, none a multiple of 16,
    # so each thread's stretch starts and ends inside a tensor
    shapes = [(40001,), (17,), (101, 300), (0,), ()]
    fused = _steps(name, config, "fused", dtype, shapes)
    forloop = _steps(name, config, "forloop", dtype, shapes)
    assert len(fused) == len(forloop) >= len(shapes)
    for i, (a, b) in enumerate(zip(fused, forloop)):
        torch.testing.assert_close(a, b, check_dtype=False, msg=lambda m, i=i: f"tensor {i}: {m}")


def test_sgd_momentum_buffers_start_where_params_join(two_threads: None) -> None:
    """A param whose first grad comes later starts its buffer then, in the same step as others
    update theirs: the kernel runs its first-step loop for some tensors only."""
    shapes = [(50000,), (33,), (20000,)]
    runs = {}
    for backend in ("fused", "forloop"):
        torch.manual_seed(0)
        params = [torch.randn(s) for s in shapes]
        opt = OPTIMIZERS["SGD"](params, lr=0.1, momentum=0.9, dampening=0.2, backend=backend)
        gen = torch.Generator().manual_seed(1)
        for step in range(4):
            for i, p in enumerate(params):
                joined = i != 1 or step >= 2  # param 1 gets its first grad at step 2
                p.grad = torch.randn(p.shape, generator=gen) if joined else None
            opt.step()
        runs[backend] = (params, [opt.state[p].get("momentum_buffer") for p in params])
    for a, b in zip(*(params for params, _ in runs.values())):
        torch.testing.assert_close(a, b)
    for a, b in zip(*(bufs for _, bufs in runs.values())):
        torch.testing.assert_close(a, b)


def test_a_source_the_compiler_refuses_is_named_with_its_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "broken.c").write_text('#include "multi_tensor.h"\nint oops = ;\n')
    (tmp_path / "multi_tensor.h").write_text((build.SOURCE_DIR / "multi_tensor.h").read_text())
    monkeypatch.setattr(build, "SOURCE_DIR", tmp_path)
    monkeypatch.setenv("WORKBENCH_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(build.CpuKernelBuildError, match=r"broken\.c.*failed for dtype f32") as e:
        build.load.__wrapped__("broken", "f32")
    assert "oops" in str(e.value)  # the compiler's own diagnostic comes along
    assert not list((tmp_path / "cache").glob("*/*.so"))  # nothing half-built is left to load


def test_a_build_is_cached_once_per_kernel_and_dtype(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WORKBENCH_CACHE_DIR", str(tmp_path))
    defines = OPTIMIZERS["Adamax"].spec.c_defines()  # the ABI names its source reads
    first = build.load.__wrapped__("adamax", "f64", defines)
    built = sorted(tmp_path.glob("*/*"))
    assert [p.name for p in built] == [build.library_path("adamax", "f64", defines).name]
    mtime = built[0].stat().st_mtime_ns
    second = build.load.__wrapped__("adamax", "f64", defines)  # a new process would do this
    assert built[0].stat().st_mtime_ns == mtime and sorted(tmp_path.glob("*/*")) == built
    assert first.adamax_f64 is not None and second.adamax_f64 is not None
    # another ABI (a spec that changed its order) is another library, never the stale one
    assert build.library_path("adamax", "f64", defines[::-1]).name != built[0].name


def test_without_a_compiler_cpu_tensors_go_to_triton_or_are_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(cpu_kernels, "compiler", lambda: None)
    assert not cpu_kernels.runs_on(torch.device("cpu"), "adam")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="needs a C compiler"):
        OPTIMIZERS["Adam"]([torch.zeros(3, requires_grad=True)], backend="fused")


def test_mixed_step_dtypes_are_refused_by_name() -> None:
    params = [torch.zeros(4), torch.zeros(4)]
    grads = [torch.ones(4), torch.ones(4)]
    steps = [torch.tensor(0.0), torch.tensor(0.0, dtype=torch.float64)]
    with pytest.raises(TypeError, match=r"fused adamax on CPU: .*\(step counters\) must all be"):
        cpu_kernels.launch(
            "adamax", [params, grads, [torch.zeros(4)] * 2, [torch.zeros(4)] * 2], [steps],
            hyper=[0.1, 0.9, 0.999, 1e-8, 0.0], flags=[0],
        )  # fmt: skip
    assert all(s.item() == 0 for s in steps)  # refused before anything was counted
