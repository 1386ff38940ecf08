"""What every workbench optimizer owes its users beyond the math: the torch.optim contract.

Driven by the same table as the parity tests: state_dicts that cross over with torch.optim both
ways, named params, param groups, hooks, backend choice, and clear errors for bad input.
"""

from __future__ import annotations

import copy
import inspect

import pytest
import torch
from torch import nn

from tests.optim_table import TABLE, OptimEntry
from workbench.optim import OPTIMIZERS

ENTRIES = [pytest.param(e, id=e.name) for e in TABLE]
EAGER_BACKENDS = ("forloop", "foreach", "fused")


def _model(seed: int = 0, entry: OptimEntry | None = None) -> nn.Module:
    torch.manual_seed(seed)
    if entry is not None and entry.sparse_grads:
        # two lookup tables whose grads are sparse-layout (SparseAdam takes nothing else)
        return nn.Sequential(
            nn.Embedding(10, 5, sparse=True), nn.Tanh(), nn.Embedding(10, 2, sparse=True)
        )
    bias = entry is None or not entry.matrices_only  # Muon takes the weights only
    return nn.Sequential(nn.Linear(4, 5, bias=bias), nn.Tanh(), nn.Linear(5, 2, bias=bias))


def _loss(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    if isinstance(model[0], nn.Embedding):
        rows = (x[:, :2].abs() * 7).long() % 10
        hidden = model[1](model[0](rows[:, 0])).sum(1, keepdim=True)
        return (hidden * model[2](rows[:, 1])).pow(2).mean()
    return model(x).pow(2).mean()


def _train(model: nn.Module, opt: torch.optim.Optimizer, steps: int, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(8, 4, generator=gen)

        # through a closure, which every optimizer takes and LBFGS needs (it calls it many times)
        def closure(x: torch.Tensor = x) -> torch.Tensor:
            opt.zero_grad()
            loss = _loss(model, x)
            loss.backward()
            return loss

        opt.step(closure)


def _skip_unless_backend(entry: OptimEntry, backend: str) -> None:
    if backend not in entry.ours.backends:
        pytest.skip(f"{entry.name} has no {backend} backend")


def test_table_covers_every_exported_optimizer() -> None:
    assert {e.name for e in TABLE} == set(OPTIMIZERS)
    for name, cls in OPTIMIZERS.items():
        assert cls.__name__ == name
        assert issubclass(cls, torch.optim.Optimizer)


@pytest.mark.parametrize("backend", EAGER_BACKENDS)
@pytest.mark.parametrize("entry", ENTRIES)
def test_state_dict_crosses_over_both_ways(entry: OptimEntry, backend: str) -> None:
    """3 steps here, 3 steps there gives what 6 steps of torch.optim alone give."""
    _skip_unless_backend(entry, backend)
    reference = _model(entry=entry)
    ref_opt = entry.torch_cls(reference.parameters(), lr=0.01)
    _train(reference, ref_opt, 3, seed=1)
    _train(reference, ref_opt, 3, seed=2)

    # ours first, then torch.optim
    first = _model(entry=entry)
    ours = entry.ours(first.parameters(), lr=0.01, backend=backend)
    _train(first, ours, 3, seed=1)
    second = copy.deepcopy(first)
    theirs = entry.torch_cls(second.parameters(), lr=0.01)
    theirs.load_state_dict(ours.state_dict())
    _train(second, theirs, 3, seed=2)
    for p, q in zip(second.parameters(), reference.parameters()):
        torch.testing.assert_close(p, q)

    # torch.optim first, then ours
    first = _model(entry=entry)
    theirs = entry.torch_cls(first.parameters(), lr=0.01)
    _train(first, theirs, 3, seed=1)
    second = copy.deepcopy(first)
    ours = entry.ours(second.parameters(), lr=0.01, backend=backend)
    ours.load_state_dict(theirs.state_dict())
    assert ours.param_groups[0]["backend"] is None  # torch's state_dict carries no backend key
    ours.param_groups[0]["backend"] = backend
    _train(second, ours, 3, seed=2)
    for p, q in zip(second.parameters(), reference.parameters()):
        torch.testing.assert_close(p, q)


@pytest.mark.parametrize("entry", ENTRIES)
def test_state_dict_keys_and_dtypes_match_torch(entry: OptimEntry) -> None:
    models = [_model(entry=entry), _model(entry=entry)]
    ours = entry.ours(models[0].parameters())
    theirs = entry.torch_cls(models[1].parameters())
    _train(models[0], ours, 1, seed=0)
    _train(models[1], theirs, 1, seed=0)
    a, b = ours.state_dict(), theirs.state_dict()
    ours_alone = {"backend"} | entry.torch_lacks()
    assert set(a["param_groups"][0]) - ours_alone == set(b["param_groups"][0])
    for pid, state in b["state"].items():
        assert set(a["state"][pid]) == set(state)
        for key, value in state.items():
            mine = a["state"][pid][key]
            if not isinstance(value, torch.Tensor):  # LBFGS's counters and lists, an int step
                assert type(mine) is type(value), key
                continue
            assert mine.dtype == value.dtype, key
            assert mine.shape == value.shape, key


@pytest.mark.parametrize("entry", ENTRIES)
def test_named_parameters_and_groups(entry: OptimEntry) -> None:
    model = _model(entry=entry)
    ours = entry.ours(model.named_parameters(), lr=0.01)
    assert ours.state_dict()["param_groups"][0]["param_names"] == [
        n for n, _ in model.named_parameters()
    ]
    # each group keeps its own hyperparameters and backend
    model = _model(entry=entry)
    groups = [{"params": list(model[0].parameters())}, {"params": list(model[2].parameters())}]
    if entry.one_group:  # LBFGS: refused, in torch's words
        for cls in (entry.torch_cls, entry.ours):
            with pytest.raises(ValueError, match="doesn't support per-parameter options"):
                cls(copy.deepcopy(groups), lr=0.01)
        return
    backend = "foreach" if "foreach" in entry.ours.backends else entry.ours.backends[0]
    ours = entry.ours(
        [
            {"params": model[0].parameters(), **entry.frozen, "backend": backend},
            {"params": model[2].parameters()},
        ],
        lr=0.01,
    )
    before = [p.detach().clone() for p in model.parameters()]
    _train(model, ours, 2, seed=0)
    after = list(model.parameters())
    n = len(list(model[0].parameters()))  # the frozen group's params come first
    assert all(torch.equal(b, a) for b, a in zip(before[:n], after[:n]))  # frozen: unchanged
    assert not any(torch.equal(b, a) for b, a in zip(before[n:], after[n:]))
    assert ours.resolve_backend(ours.param_groups[0], after[:n]) == backend


@pytest.mark.parametrize("entry", ENTRIES)
def test_step_hooks_and_closure(entry: OptimEntry) -> None:
    model = _model(entry=entry)
    ours = entry.ours(model.parameters())
    calls: list[str] = []
    ours.register_step_pre_hook(lambda opt, args, kwargs: calls.append("pre"))
    ours.register_step_post_hook(lambda opt, args, kwargs: calls.append("post"))
    x = torch.randn(3, 4)

    def closure() -> torch.Tensor:
        ours.zero_grad()
        loss = _loss(model, x)
        loss.backward()
        calls.append("closure")
        return loss

    loss = ours.step(closure)
    if entry.closure_step:  # LBFGS re-evaluates the loss as often as its iterations need
        assert calls[0] == "pre" and calls[-1] == "post"
        assert len(calls) > 2 and set(calls[1:-1]) == {"closure"}
    else:
        assert calls == ["pre", "closure", "post"]
    assert loss.item() > 0


@pytest.mark.parametrize("entry", ENTRIES)
def test_params_without_grads_are_untouched(entry: OptimEntry) -> None:
    a, b = (torch.randn(entry.shape((3,)), requires_grad=True) for _ in range(2))
    before = b.detach().clone()
    ours = entry.ours([a, b])
    _step_with_grad_of_ones(entry, ours, a)
    assert torch.equal(b, before)
    # which params have a state entry is torch's: usually `a` only, but none at all for SGD
    # without momentum, and both from construction on for Adagrad
    a_ref, b_ref = a.detach().clone().requires_grad_(), b.detach().clone().requires_grad_()
    theirs = entry.torch_cls([a_ref, b_ref])
    _step_with_grad_of_ones(entry, theirs, a_ref)
    assert (a in ours.state, b in ours.state) == (a_ref in theirs.state, b_ref in theirs.state)
    assert set(ours.state_dict()["state"]) == set(theirs.state_dict()["state"])


def _step_with_grad_of_ones(entry: OptimEntry, opt: torch.optim.Optimizer, p: torch.Tensor) -> None:
    """One step in which only `p` has a grad (of ones, in the layout the optimizer takes)."""

    def closure() -> torch.Tensor:
        ones = torch.ones_like(p)
        p.grad = ones.to_sparse() if entry.sparse_grads else ones
        return p.detach().sum()

    if entry.closure_step:
        opt.step(closure)
    else:
        closure()
        opt.step()


def test_backend_choice() -> None:
    for cls in OPTIMIZERS.values():
        shape = (2, 1) if getattr(cls, "matrices_only", False) else (2,)  # Muon: matrices only
        p = [torch.randn(shape, requires_grad=True)]
        assert cls(p).resolve_backend(cls(p).param_groups[0], p) == "forloop"  # CPU: like torch
        # (the flags an optimizer has: LBFGS and SparseAdam implement forloop only)
        if "foreach" in cls.backends:
            # (Muon has a foreach backend, but no foreach= argument, as torch's)
            takes_flag = "foreach" in inspect.signature(cls).parameters
            kwargs = {"foreach": True} if takes_flag else {"backend": "foreach"}
            assert cls(p, **kwargs).param_groups[0]["backend"] == "foreach"
        if "fused" in cls.backends:
            assert cls(p, fused=True).param_groups[0]["backend"] == "fused"
        if "compiled" in cls.backends:
            assert cls(p, backend="compiled").param_groups[0]["backend"] == "compiled"


@pytest.mark.parametrize("entry", ENTRIES)
def test_hyperparameter_errors_match_torch(entry: OptimEntry) -> None:
    p = [torch.randn(entry.shape((2,)), requires_grad=True)]
    for kwargs, error, message in entry.errors:
        with pytest.raises(error, match=message):
            entry.torch_cls(p, **kwargs)
        with pytest.raises(error, match=message):
            entry.ours(p, **kwargs)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"backend": "turbo"}, ValueError, "backend='turbo' is not a backend"),
        ({"backend": "forloop", "foreach": True}, ValueError, "foreach=True contradicts"),
        ({"backend": "foreach", "fused": True}, ValueError, "fused=True contradicts"),
        # (SGD and Adagrad say it in torch's words: `fused` and `foreach` cannot be `True` together)
        ({"foreach": True, "fused": True}, RuntimeError, "cannot both be True|cannot be `True`"),
        ({"differentiable": True, "foreach": True}, RuntimeError, "differentiable=True needs"),
        ({"differentiable": True, "backend": "fused"}, RuntimeError, "differentiable=True needs"),
        ({"differentiable": True, "backend": "compiled"}, RuntimeError, "differentiable"),
    ],
)
@pytest.mark.parametrize("entry", ENTRIES)
def test_backend_errors(entry: OptimEntry, kwargs: dict, error: type, message: str) -> None:
    takes = inspect.signature(entry.ours).parameters
    if missing := [k for k in kwargs if k not in takes]:
        pytest.skip(f"{entry.name} takes no {missing}, as torch's")
    with pytest.raises(error, match=message):
        entry.ours([torch.randn(2, requires_grad=True)], **kwargs)


@pytest.mark.parametrize("entry", ENTRIES)
def test_fused_refuses_a_device_it_cannot_run_on(
    entry: OptimEntry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CPU tensors need the optimizer's C kernel (and a compiler), or the Triton interpreter."""
    _skip_unless_backend(entry, "fused")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    refusal = "fused.*runs on CUDA tensors.*got a param on cpu"
    if entry.ours.cpu_kernel is not None:
        entry.ours([torch.randn(2, requires_grad=True)], backend="fused")  # the C kernel takes it
        monkeypatch.setenv("WORKBENCH_FUSED_CPU", "triton")
        refusal = "fused.*runs on CUDA tensors.*C compiler.*got a param on cpu"
    with pytest.raises(RuntimeError, match=refusal):
        entry.ours([torch.randn(2, requires_grad=True)], backend="fused")
    with pytest.raises(RuntimeError, match="floating-point"):
        entry.ours([torch.ones(2, dtype=torch.int64)], backend="fused")


@pytest.mark.parametrize("backend", EAGER_BACKENDS)
@pytest.mark.parametrize("entry", ENTRIES)
def test_sparse_grad_is_refused_before_any_update(entry: OptimEntry, backend: str) -> None:
    _skip_unless_backend(entry, backend)
    if entry.sparse_grads or entry.closure_step:
        # SparseAdam wants them (tests/test_sparse_adam.py), torch's LBFGS densifies them
        pytest.skip(f"torch.optim.{entry.name} takes sparse grads")
    dense, sparse = (torch.randn(entry.shape((4,)), requires_grad=True) for _ in range(2))
    before = dense.detach().clone()
    ours = entry.ours([dense, sparse], backend=backend)
    dense.grad = torch.ones_like(dense)
    sparse.grad = torch.ones_like(sparse).to_sparse()
    with pytest.raises(RuntimeError, match=f"{entry.name} does not support sparse gradients"):
        ours.step()
    assert torch.equal(dense, before)
