"""Properties of the backends themselves: differentiability, launches, recompiles, capture."""

from __future__ import annotations

import sys

import pytest
import torch

from tests.conftest import FUSED_CPU_PATHS
from tests.optim_table import TABLE, OptimEntry
from workbench.optim import Adamax
from workbench.optim._kernels import _multi_tensor
from workbench.optim._kernels import cpu as cpu_kernels

ENTRIES = [pytest.param(e, id=e.name) for e in TABLE]


def _with_grads(*shapes: tuple[int, ...], dtype: torch.dtype = torch.float32) -> list[torch.Tensor]:
    params = [torch.randn(s, dtype=dtype, requires_grad=True) for s in shapes]
    for p in params:
        p.grad = torch.randn_like(p)
    return params


def test_adamax_forloop_is_differentiable() -> None:
    """Gradients flow from the updated param and state back to param, grad and state."""

    def one_step(p, grad, exp_avg, exp_inf, lr):
        p = p.clone()
        p.grad = grad
        opt = Adamax([p], lr=lr, weight_decay=0.1, differentiable=True)
        opt.state[p].update(
            {"step": torch.tensor(3.0, dtype=torch.float64), "exp_avg": exp_avg.clone(),
             "exp_inf": exp_inf.clone()}
        )  # fmt: skip
        opt.step()
        return p, opt.state[p]["exp_avg"], opt.state[p]["exp_inf"]

    torch.manual_seed(0)
    inputs = [torch.rand(6, dtype=torch.float64, requires_grad=True) for _ in range(4)]
    lr = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(one_step, (*inputs, lr))
    # and a float lr, the common case
    assert torch.autograd.gradcheck(lambda *t: one_step(*t, 0.9), tuple(inputs))


@pytest.mark.parametrize("path", FUSED_CPU_PATHS)
@pytest.mark.parametrize("entry", ENTRIES)
def test_fused_is_one_launch_per_device_dtype_group(
    entry: OptimEntry, path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if "fused" not in entry.ours.backends:
        pytest.skip(f"{entry.name} has no fused backend")
    if path == "native" and entry.ours.cpu_kernel is None:
        pytest.skip(f"{entry.name}'s fused backend has no C kernel: Triton only")
    params = _with_grads((3, 4), (5,), (2, 2, 2)) + _with_grads((7,), (1,), dtype=torch.float64)
    opt = entry.ours(params, backend="fused")
    opt.step()  # imports the optimizer's kernel module

    launches: list[int] = []
    real_launch = cpu_kernels.launch if path == "native" else _multi_tensor.launch

    def counting_launch(kernel, element_roles, *args, **kwargs):
        launches.append(len(element_roles[0]))
        return real_launch(kernel, element_roles, *args, **kwargs)

    if path == "native":
        # the optimizers call it as cpu_kernels.launch
        monkeypatch.setattr(cpu_kernels, "launch", counting_launch)
    # Triton kernel modules import `launch` by name: patch it wherever it was bound
    for name, module in list(sys.modules.items()):
        if (
            name.startswith("workbench.optim._kernels")
            and module.__dict__.get("launch") is real_launch
        ):
            monkeypatch.setattr(module, "launch", counting_launch)
    opt.step()
    assert sorted(launches) == [2, 3]


@pytest.mark.parametrize("path", FUSED_CPU_PATHS)
@pytest.mark.parametrize("entry", ENTRIES)
def test_fused_step_counts_as_an_in_place_change_of_the_params(
    entry: OptimEntry, path: str
) -> None:
    """Kernels write through raw pointers; autograd must still see the params change, so that a
    backward through a graph that saved them before the step is refused, as after torch's."""
    if "fused" not in entry.ours.backends:
        pytest.skip(f"{entry.name} has no fused backend")
    if path == "native" and entry.ours.cpu_kernel is None:
        pytest.skip(f"{entry.name}'s fused backend has no C kernel: Triton only")
    (param,) = _with_grads((3, 2))
    saved = (param * param).sum()  # saves param for its backward
    entry.ours([param], backend="fused").step()
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        saved.backward()


@pytest.mark.compile
@pytest.mark.parametrize("entry", ENTRIES)
def test_compiled_does_not_recompile_when_lr_changes(entry: OptimEntry) -> None:
    from torch._dynamo.utils import counters

    if "compiled" not in entry.ours.backends:
        pytest.skip(f"{entry.name} has no compiled backend")
    if entry.closure_step:  # its step evaluates a loss, and it compiles three graphs, not one
        pytest.skip(f"{entry.name}: tests/test_lbfgs.py checks its graphs and a changing lr")
    torch._dynamo.reset()
    counters.clear()
    params = _with_grads(*(entry.shape(s) for s in [(4, 3), (5,)]))
    opt = entry.ours(params, backend="compiled", lr=0.1)
    scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    for _ in range(4):
        opt.step()
        scheduler.step()
    assert counters["stats"]["unique_graphs"] == 1
    # a new group structure (another shape) compiles once more, then is reused
    opt2 = entry.ours(_with_grads((2, 2)), backend="compiled", lr=0.1)
    opt2.step()
    opt2.step()
    assert counters["stats"]["unique_graphs"] == 2


@pytest.mark.cuda
@pytest.mark.parametrize("backend", ["foreach", "fused"])
@pytest.mark.parametrize("entry", ENTRIES)
def test_capturable_step_replays_in_a_cuda_graph(entry: OptimEntry, backend: str) -> None:
    """A captured step replayed N times equals N eager steps (step and lr read on the device)."""
    if backend not in entry.ours.backends:
        pytest.skip(f"{entry.name} has no {backend} backend")
    torch.manual_seed(0)
    shapes = [(1024, 3), (17,), (0,)]
    eager = [torch.randn(s, device="cuda", requires_grad=True) for s in shapes]
    graphed = [p.detach().clone().requires_grad_() for p in eager]
    for a, b in zip(eager, graphed):
        a.grad = torch.randn_like(a)
        b.grad = a.grad.clone()
    kwargs = {"lr": torch.tensor(0.01, device="cuda"), "capturable": True, "backend": backend}
    if "capturable" not in entry.ours([torch.zeros(1)]).defaults:
        # torch's SGD and Adagrad have no such flag; their fused step (lr and step read on the
        # device) is capturable all the same, their foreach step is not (it reads lr on the host)
        if backend != "fused":
            pytest.skip(f"{entry.name} has no capturable flag")
        del kwargs["capturable"]
    opt_eager = entry.ours(eager, **kwargs)
    opt_graphed = entry.ours(graphed, **kwargs)
    opt_graphed.step()  # warm-up outside capture: creates state and the launch table
    opt_eager.step()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.stream(stream), torch.cuda.graph(graph):
        opt_graphed.step()
    torch.cuda.current_stream().wait_stream(stream)
    for _ in range(5):
        graph.replay()
        opt_eager.step()
    torch.cuda.synchronize()
    for a, b in zip(eager, graphed):
        torch.testing.assert_close(a, b)
