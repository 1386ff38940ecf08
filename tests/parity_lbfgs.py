"""LBFGS's side-by-side parity with torch.optim.LBFGS, per backend (the table's side_by_side).

forloop does torch's ops in torch's order: parity_special.lbfgs_side_by_side runs both apart for
several steps and compares everything at the default tolerances.

compiled cannot be held to that. Its kernels round differently in the last bit (their own
reduction order in the dot products, fused multiply-adds), and L-BFGS amplifies last-bit
differences by orders of magnitude per iteration on these problems: y = g - g_prev cancels, and
1 / y.s scales what is left. Seen here, with the ring's graphs run eagerly (no inductor):
Rosenbrock in fp64 drifts 1e-13 -> 1e-11 -> 6e-7 -> 1e-4 over four steps of 20 iterations; in
fp32 a single step's 20 iterations already drift 6e-3. (torch.optim.LBFGS itself, started one ulp
away in fp32, leaves its own path on Rosenbrock after one step: losses 0.768 vs 0.841 next.)

So every step here starts from torch's state (ours loads torch's state_dict, params copied): each
step's iterations are compared, not a trajectory, and every step crosses a torch state_dict
(mid-history, or a wrapped history) into the ring. In fp64 a step runs the config's iterations; in
fp32 one iteration per step (as many steps as the history needs to wrap), the granularity at which
fp32 rounding stays within fp32 tolerance. In fp32 ``al`` is compared by layout only: torch
recomputes every entry before reading it (scratch), and its values are the most
cancellation-prone numbers of the iteration (7e-4 apart at lr=1e-3).
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from tests.parity_special import (
    _closure,
    _least_squares_mlp,
    _rosenbrock,
    assert_same_loss_and_params,
    assert_same_state,
    lbfgs_pair,
    lbfgs_side_by_side,
)


def lbfgs_parity(entry: Any, backend: str, config: dict, dtype: torch.dtype) -> None:
    if backend == "compiled":
        compiled_side_by_side(entry, config, dtype)
    else:
        lbfgs_side_by_side(entry, backend, config, dtype)


def compiled_side_by_side(entry: Any, config: dict, dtype: torch.dtype) -> None:
    one_iteration = dtype != torch.float64
    if one_iteration:
        config = {**config, "max_iter": 1, "max_eval": config.get("max_eval", 25)}
    steps = 8 if one_iteration else 4
    for make in (_rosenbrock, _least_squares_mlp):
        (params, loss_fn), (ref_params, ref_loss_fn) = make(dtype), make(dtype)
        ours = entry.ours(params, backend="compiled", **config)
        loss_fn, ref, ref_loss_fn, sign = lbfgs_pair(
            entry, config, loss_fn, ref_params, ref_loss_fn
        )
        ours_maximize = config.get("maximize", False)
        for i in range(steps):
            if i:
                ours.load_state_dict(copy.deepcopy(ref.state_dict()))
                # (torch's state_dict has no backend, nor maximize before torch 2.14)
                ours.param_groups[0].update(backend="compiled", maximize=ours_maximize)
                with torch.no_grad():
                    for p, q in zip(params, ref_params):
                        p.copy_(q)
            got = ours.step(_closure(ours, loss_fn))
            want = ref.step(_closure(ref, ref_loss_fn))
            where = f"{make.__name__}, step {i} from torch's state"
            assert_same_loss_and_params(got, sign * want, params, ref_params, where)
            mine, theirs = ours.state[params[0]], ref.state[ref_params[0]]
            assert_same_lbfgs_state(mine, theirs, where, al_values=not one_iteration)


def assert_same_lbfgs_state(
    mine: dict[str, Any], theirs: dict[str, Any], where: str, al_values: bool = True
) -> None:
    """parity_special.assert_same_state; with ``al_values=False``, ``al`` by its layout only
    (which entries hold a value), the scratch values left out (see the module docstring)."""
    mine, theirs = dict(mine), dict(theirs)
    if not al_values and "al" in theirs:
        layout = [[v is None for v in state.pop("al", [])] for state in (mine, theirs)]
        assert layout[0] == layout[1], f"state[al] {where}: {layout[0]} != {layout[1]}"
    assert_same_state(mine, theirs, where)
