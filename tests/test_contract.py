"""What every workbench optimizer owes its users beyond the math: the torch.optim contract.

Driven by the same table as the parity tests: state_dicts that cross over with torch.optim both
ways, named params, param groups, hooks, backend choice, and clear errors for bad input.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from tests.optim_table import TABLE, OptimEntry
from workbench.optim import OPTIMIZERS

ENTRIES = [pytest.param(e, id=e.name) for e in TABLE]
EAGER_BACKENDS = ("forloop", "foreach", "fused")


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 2))


def _train(model: nn.Module, opt: torch.optim.Optimizer, steps: int, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        opt.zero_grad()
        x = torch.randn(8, 4, generator=gen)
        model(x).pow(2).mean().backward()
        opt.step()


def test_table_covers_every_exported_optimizer() -> None:
    assert {e.name for e in TABLE} == set(OPTIMIZERS)
    for name, cls in OPTIMIZERS.items():
        assert cls.__name__ == name
        assert issubclass(cls, torch.optim.Optimizer)


@pytest.mark.parametrize("backend", EAGER_BACKENDS)
@pytest.mark.parametrize("entry", ENTRIES)
def test_state_dict_crosses_over_both_ways(entry: OptimEntry, backend: str) -> None:
    """3 steps here, 3 steps there gives what 6 steps of torch.optim alone give."""
    reference = _model()
    ref_opt = entry.torch_cls(reference.parameters(), lr=0.01)
    _train(reference, ref_opt, 3, seed=1)
    _train(reference, ref_opt, 3, seed=2)

    # ours first, then torch.optim
    first = _model()
    ours = entry.ours(first.parameters(), lr=0.01, backend=backend)
    _train(first, ours, 3, seed=1)
    second = copy.deepcopy(first)
    theirs = entry.torch_cls(second.parameters(), lr=0.01)
    theirs.load_state_dict(ours.state_dict())
    _train(second, theirs, 3, seed=2)
    for p, q in zip(second.parameters(), reference.parameters()):
        torch.testing.assert_close(p, q)

    # torch.optim first, then ours
    first = _model()
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
    models = [_model(), _model()]
    ours = entry.ours(models[0].parameters())
    theirs = entry.torch_cls(models[1].parameters())
    _train(models[0], ours, 1, seed=0)
    _train(models[1], theirs, 1, seed=0)
    a, b = ours.state_dict(), theirs.state_dict()
    assert set(a["param_groups"][0]) - {"backend"} == set(b["param_groups"][0])
    for pid, state in b["state"].items():
        assert set(a["state"][pid]) == set(state)
        for key, value in state.items():
            assert a["state"][pid][key].dtype == value.dtype, key
            assert a["state"][pid][key].shape == value.shape, key


@pytest.mark.parametrize("entry", ENTRIES)
def test_named_parameters_and_groups(entry: OptimEntry) -> None:
    model = _model()
    ours = entry.ours(model.named_parameters(), lr=0.01)
    assert ours.state_dict()["param_groups"][0]["param_names"] == [
        n for n, _ in model.named_parameters()
    ]
    # each group keeps its own hyperparameters and backend
    model = _model()
    ours = entry.ours(
        [
            {"params": model[0].parameters(), **entry.frozen, "backend": "foreach"},
            {"params": model[2].parameters()},
        ],
        lr=0.01,
    )
    before = [p.detach().clone() for p in model.parameters()]
    _train(model, ours, 2, seed=0)
    after = list(model.parameters())
    assert all(torch.equal(b, a) for b, a in zip(before[:2], after[:2]))  # frozen: unchanged
    assert not any(torch.equal(b, a) for b, a in zip(before[2:], after[2:]))
    assert ours.resolve_backend(ours.param_groups[0], after[:2]) == "foreach"


@pytest.mark.parametrize("entry", ENTRIES)
def test_step_hooks_and_closure(entry: OptimEntry) -> None:
    model = _model()
    ours = entry.ours(model.parameters())
    calls: list[str] = []
    ours.register_step_pre_hook(lambda opt, args, kwargs: calls.append("pre"))
    ours.register_step_post_hook(lambda opt, args, kwargs: calls.append("post"))
    x = torch.randn(3, 4)

    def closure() -> torch.Tensor:
        ours.zero_grad()
        loss = model(x).pow(2).sum()
        loss.backward()
        calls.append("closure")
        return loss

    loss = ours.step(closure)
    assert calls == ["pre", "closure", "post"]
    assert loss.item() > 0


@pytest.mark.parametrize("entry", ENTRIES)
def test_params_without_grads_are_untouched(entry: OptimEntry) -> None:
    a, b = torch.randn(3, requires_grad=True), torch.randn(3, requires_grad=True)
    before = b.detach().clone()
    ours = entry.ours([a, b])
    a.grad = torch.ones_like(a)
    ours.step()
    assert torch.equal(b, before)
    # which params have a state entry is torch's: usually `a` only, but none at all for SGD
    # without momentum, and both from construction on for Adagrad
    a_ref, b_ref = a.detach().clone().requires_grad_(), b.detach().clone().requires_grad_()
    theirs = entry.torch_cls([a_ref, b_ref])
    a_ref.grad = torch.ones_like(a_ref)
    theirs.step()
    assert (a in ours.state, b in ours.state) == (a_ref in theirs.state, b_ref in theirs.state)
    assert set(ours.state_dict()["state"]) == set(theirs.state_dict()["state"])


def test_backend_choice() -> None:
    p = [torch.randn(2, requires_grad=True)]
    for cls in OPTIMIZERS.values():
        assert cls(p).resolve_backend(cls(p).param_groups[0], p) == "forloop"  # CPU: like torch
        assert cls(p, foreach=True).param_groups[0]["backend"] == "foreach"
        assert cls(p, fused=True).param_groups[0]["backend"] == "fused"
        assert cls(p, backend="compiled").param_groups[0]["backend"] == "compiled"


@pytest.mark.parametrize("entry", ENTRIES)
def test_hyperparameter_errors_match_torch(entry: OptimEntry) -> None:
    p = [torch.randn(2, requires_grad=True)]
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
    with pytest.raises(error, match=message):
        entry.ours([torch.randn(2, requires_grad=True)], **kwargs)


@pytest.mark.parametrize("entry", ENTRIES)
def test_fused_refuses_a_device_it_cannot_run_on(
    entry: OptimEntry, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="fused.*runs on CUDA tensors.*got a param on cpu"):
        entry.ours([torch.randn(2, requires_grad=True)], backend="fused")
    with pytest.raises(RuntimeError, match="floating-point"):
        entry.ours([torch.ones(2, dtype=torch.int64)], backend="fused")


@pytest.mark.parametrize("backend", EAGER_BACKENDS)
@pytest.mark.parametrize("entry", ENTRIES)
def test_sparse_grad_is_refused_before_any_update(entry: OptimEntry, backend: str) -> None:
    dense = torch.randn(4, requires_grad=True)
    sparse = torch.randn(4, requires_grad=True)
    before = dense.detach().clone()
    ours = entry.ours([dense, sparse], backend=backend)
    dense.grad = torch.ones(4)
    sparse.grad = torch.ones(4).to_sparse()
    with pytest.raises(RuntimeError, match=f"{entry.name} does not support sparse gradients"):
        ours.step()
    assert torch.equal(dense, before)
