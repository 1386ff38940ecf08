"""LBFGS beyond the table: the line search's pieces, refusals, and state_dicts mid-history."""

from __future__ import annotations

import copy
import functools
from typing import Any

import pytest
import torch

from tests.parity_lbfgs import assert_same_lbfgs_state
from workbench.optim import LBFGS
from workbench.optim.lbfgs_line_search import cubic_minimizer


def test_cubic_minimizer_finds_a_cubics_minimum() -> None:
    # f(x) = (x - 1)^2 (a cubic with zero x^3 term): its minimizer from two points is exact
    f = lambda x: (x - 1) ** 2  # noqa: E731
    g = lambda x: 2 * (x - 1)  # noqa: E731
    x1, x2 = torch.tensor(-1.0, dtype=torch.float64), torch.tensor(3.0, dtype=torch.float64)
    t = cubic_minimizer(x1, f(x1), g(x1), x2, f(x2), g(x2))
    assert torch.allclose(torch.as_tensor(t), torch.tensor(1.0, dtype=torch.float64))
    # clamped to the bounds it is given
    assert cubic_minimizer(x1, f(x1), g(x1), x2, f(x2), g(x2), bounds=(2.0, 5.0)) == 2.0


def test_unknown_line_search_is_refused_at_step() -> None:
    x = torch.randn(3, requires_grad=True)
    opt = LBFGS([x], line_search_fn="backtracking")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = x.pow(2).sum()
        loss.backward()
        return loss

    with pytest.raises(RuntimeError, match="only 'strong_wolfe' is supported"):
        opt.step(closure)


def test_step_needs_a_closure() -> None:
    with pytest.raises(TypeError):
        LBFGS([torch.randn(2, requires_grad=True)]).step()  # type: ignore[call-arg]


@pytest.mark.parametrize(
    "backend", ["forloop", pytest.param("compiled", marks=pytest.mark.compile)]
)
@pytest.mark.parametrize("line_search_fn", [None, "strong_wolfe"])
def test_maximize_climbs_to_the_maximum(backend: str, line_search_fn: str | None) -> None:
    target = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    x = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    opt = LBFGS([x], maximize=True, line_search_fn=line_search_fn, backend=backend)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        value = 5 - (x - target).pow(2).sum()  # concave: its maximum, 5, at the target
        value.backward()
        return value

    first = opt.step(closure)
    assert first.item() == pytest.approx(5 - target.pow(2).sum().item())  # the closure's own value
    torch.testing.assert_close(x.detach(), target)


def test_an_empty_param_list_steps_to_the_closures_loss() -> None:
    """As torch 2.14: nothing to optimize, the closure still evaluated once, no state."""
    opt = LBFGS([{"params": []}])
    calls = []
    assert opt.step(lambda: calls.append(1) or torch.tensor(2.5)).item() == 2.5
    assert calls == [1] and not opt.state


# A smooth, well-conditioned problem (a quartic bowl with a coupling term), on which last-bit
# differences stay last-bit (unlike Rosenbrock, see tests/parity_lbfgs.py): the compiled backend
# can be held to torch's trajectory over several steps.
TARGET = torch.linspace(-1, 1, 6, dtype=torch.float64)
COMPILED = pytest.param("compiled", marks=pytest.mark.compile)


def _make(
    cls: type, dtype: torch.dtype = torch.float64, **kwargs: Any
) -> tuple[torch.Tensor, torch.optim.Optimizer]:
    x = torch.zeros(6, dtype=dtype, requires_grad=True)
    kwargs = {"history_size": 2, "max_iter": 4, "lr": 0.5, **kwargs}
    return x, cls([x], **kwargs)


def _steps(x: torch.Tensor, opt: torch.optim.Optimizer, n: int) -> None:
    target = TARGET.to(x.dtype)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = ((x - target) ** 4).sum() + (x[1:] * x[:-1]).sum()
        loss.backward()
        return loss

    for _ in range(n):
        opt.step(closure)


@pytest.mark.parametrize("backend", ["forloop", COMPILED])
@pytest.mark.parametrize("line_search_fn", [None, "strong_wolfe"])
def test_state_dict_crosses_over_with_a_full_history(
    line_search_fn: str | None, backend: str
) -> None:
    """2 steps of ours, then torch's from our state_dict (and back) = 4 steps of torch alone, with
    a history that has filled and shifted (wrapped around the compiled backend's ring)."""
    ref_x, ref = _make(torch.optim.LBFGS, line_search_fn=line_search_fn)
    _steps(ref_x, ref, 4)
    ours = functools.partial(LBFGS, backend=backend)
    for first, second in ((ours, torch.optim.LBFGS), (torch.optim.LBFGS, ours)):
        x, opt = _make(first, line_search_fn=line_search_fn)
        _steps(x, opt, 2)
        y, other = _make(second, line_search_fn=line_search_fn)
        with torch.no_grad():
            y.copy_(x)
        other.load_state_dict(copy.deepcopy(opt.state_dict()))
        if isinstance(other, LBFGS):  # torch's state_dict carries no backend
            other.param_groups[0]["backend"] = backend
        _steps(y, other, 2)
        torch.testing.assert_close(y, ref_x)


@pytest.mark.compile
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("line_search_fn", [None, "strong_wolfe"])
def test_compiled_follows_torch_step_after_step(
    line_search_fn: str | None, dtype: torch.dtype
) -> None:
    """4 steps of 4 iterations with history_size=2: the ring fills, then wraps every iteration;
    each step continues from the state the last one published (no reload), in torch's format."""
    ref_x, ref = _make(torch.optim.LBFGS, dtype, line_search_fn=line_search_fn)
    x, opt = _make(LBFGS, dtype, line_search_fn=line_search_fn, backend="compiled")
    rings = []
    for i in range(4):
        _steps(ref_x, ref, 1)
        _steps(x, opt, 1)
        torch.testing.assert_close(x, ref_x, msg=lambda m, i=i: f"step {i}: {m}")
        state = opt.state[x]
        ref_state = ref.state[ref_x]
        if dtype == torch.float64:
            assert_same_lbfgs_state(state, ref_state, f"after step {i}")
        else:  # fp32 history values carry y = g - g_prev's cancellation: tests/parity_lbfgs.py
            counts = ("n_iter", "func_evals")
            assert [state[k] for k in counts] == [ref_state[k] for k in counts]
            assert len(state["old_dirs"]) == len(ref_state["old_dirs"])
        # the state's lists are views of the ring's rows, not copies
        ring = opt._ring
        assert all(
            y.untyped_storage().data_ptr() == ring.dirs.data_ptr() for y in state["old_dirs"]
        )
        rings.append(ring)
    assert all(r is rings[0] for r in rings)  # published state is taken back as it is
    assert rings[0].ring.tolist()[1] != 0  # the oldest pair is no longer in slot 0: it wrapped


@pytest.mark.compile
def test_compiled_graphs_serve_every_history_length_and_lr() -> None:
    """Three graphs (flat grad, move, direction) from the first step on, through a history that
    grows from 0 to history_size pairs and wraps, and through changes of a tensor and a float lr;
    every step equal to the forloop backend's under the same lr schedule."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    lr = torch.tensor(0.5, dtype=torch.float64)
    runs = [_make(LBFGS, max_iter=1, lr=lr.clone(), backend=b) for b in ("forloop", "compiled")]
    lengths = []
    for i in range(8):
        for x, opt in runs:
            if i == 4:
                opt.param_groups[0]["lr"].fill_(0.25)  # a tensor lr changed in place
            if i >= 6:
                opt.param_groups[0]["lr"] = 0.3 if i == 6 else 0.2  # a float lr, then another
            _steps(x, opt, 1)
        (ref_x, _), (x, opt) = runs
        torch.testing.assert_close(x, ref_x, msg=lambda m, i=i: f"step {i}: {m}")
        lengths.append(len(opt.state[x].get("old_dirs", [])))
        # (step 0: flat grad and move; its direction, the first ever, is -g, eager)
        assert counters["stats"]["unique_graphs"] == (3 if i else 2)
    assert lengths[:3] == [0, 1, 2] and lengths[-1] == 2
    assert runs[1][1]._ring.ring.tolist()[1] != 0  # and the ring wrapped


@pytest.mark.compile
def test_compiled_takes_back_a_history_the_forloop_backend_changed() -> None:
    """compiled, forloop, compiled steps on one optimizer = torch's steps: the ring is rebuilt
    from the lists the forloop step appended to and shifted (and only then)."""
    ref_x, ref = _make(torch.optim.LBFGS)
    x, opt = _make(LBFGS, backend="compiled")
    _steps(ref_x, ref, 5)
    _steps(x, opt, 2)
    ring = opt._ring
    opt.param_groups[0]["backend"] = "forloop"
    _steps(x, opt, 1)
    opt.param_groups[0]["backend"] = "compiled"
    _steps(x, opt, 1)
    rebuilt = opt._ring
    _steps(x, opt, 1)
    torch.testing.assert_close(x, ref_x)
    assert rebuilt is not ring and opt._ring is rebuilt


def test_compiled_refuses_a_history_longer_than_history_size() -> None:
    x, opt = _make(LBFGS, history_size=3)
    _steps(x, opt, 2)  # forloop: 3 pairs
    opt.param_groups[0].update(history_size=2, backend="compiled")
    with pytest.raises(ValueError, match=r"holds 3 curvature pairs .* history_size is 2"):
        _steps(x, opt, 1)
