"""LBFGS beyond the table: the line search's pieces, refusals, and state_dicts mid-history."""

from __future__ import annotations

import copy

import pytest
import torch

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


@pytest.mark.parametrize("line_search_fn", [None, "strong_wolfe"])
def test_state_dict_crosses_over_with_a_full_history(line_search_fn: str | None) -> None:
    """2 steps of ours, then torch's from our state_dict (and back) = 4 steps of torch alone, with
    a history that has filled and shifted."""
    target = torch.linspace(-1, 1, 6, dtype=torch.float64)

    def make(cls: type) -> tuple[torch.Tensor, torch.optim.Optimizer]:
        x = torch.zeros(6, dtype=torch.float64, requires_grad=True)
        kwargs = {"history_size": 2, "max_iter": 4, "line_search_fn": line_search_fn, "lr": 0.5}
        return x, cls([x], **kwargs)

    def steps(x: torch.Tensor, opt: torch.optim.Optimizer, n: int) -> None:
        def closure() -> torch.Tensor:
            opt.zero_grad()
            loss = ((x - target) ** 4).sum() + (x[1:] * x[:-1]).sum()
            loss.backward()
            return loss

        for _ in range(n):
            opt.step(closure)

    ref_x, ref = make(torch.optim.LBFGS)
    steps(ref_x, ref, 4)
    for first, second in ((LBFGS, torch.optim.LBFGS), (torch.optim.LBFGS, LBFGS)):
        x, opt = make(first)
        steps(x, opt, 2)
        y, other = make(second)
        with torch.no_grad():
            y.copy_(x)
        other.load_state_dict(copy.deepcopy(opt.state_dict()))
        steps(y, other, 2)
        torch.testing.assert_close(y, ref_x)
