"""torch.amp.GradScaler driving the fused backend of every optimizer that takes its scale.

The optimizers are those of OPTIMIZERS whose class sets ``fused_amp_scaling``
(workbench/optim/_optimizer.py), and those whose table entry (tests/optim_table.py) declares
``amp_configs``: a class that lost the flag fails here instead of dropping out unnoticed. Each
runs its entry's configs against torch.optim's class of the same name, under every skip schedule
below, on both CPU implementations of the fused step: the C kernel and the Triton one under the
interpreter (tests/conftest.py). At each step:

* a step GradScaler lets through: the kernel unscales the grads in place, exactly (GradScaler's
  scales are powers of two), to the grads of the unscaled loss; params and state match torch's;
* a step GradScaler skips (a non-finite grad): params and state stay as they are, the step
  counter does not count it, it creates no state made from a step's data (``lazy_state``: SGD's
  momentum buffer, which torch's fused SGD leaves uninitialized behind), and the scale backs off.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from torch import nn

from tests.conftest import FUSED_CPU_PATHS
from tests.optim_table import TABLE, OptimEntry, config_id
from workbench.optim import OPTIMIZERS

INIT_SCALE = 2.0**10


@dataclass(frozen=True)
class Skip:
    """The non-finite value a skipped step's grads get: GradScaler's found_inf then skips it."""

    param: int  # position in model.parameters()
    index: tuple[int, ...]
    value: float


@dataclass(frozen=True)
class Schedule:
    steps: int
    skips: dict[int, Skip]  # step number -> the grad that makes GradScaler skip it


SCHEDULES = [
    # a skipped first step: the state a step makes from its grads (SGD's buffer) must not exist
    # yet, and the next step must be a first step, as torch's that never saw the skipped one
    pytest.param(Schedule(3, {0: Skip(3, (0,), math.nan)}), id="skip-first"),
    # skips after one step, then after two, each with the state already there: the counter
    # stays at the steps taken, and each skip halves the scale
    pytest.param(
        Schedule(5, {1: Skip(3, (1,), math.inf), 3: Skip(0, (1, 2), math.inf)}), id="skip-later"
    ),
]


def _amp_configs(entry: OptimEntry) -> list[dict[str, Any]]:
    """The entry's GradScaler configs; for an entry without them (a new optimizer that set
    `fused_amp_scaling`), its configs torch.optim takes as they are (no ours-only flag)."""
    if entry.amp_configs is not None:
        return entry.amp_configs
    return [c for c in entry.configs if not set(c) & set(entry.ours_only)]


def _cases() -> list[Any]:
    entries = {entry.name: entry for entry in TABLE}
    names = [name for name, cls in OPTIMIZERS.items() if cls.fused_amp_scaling]
    names += [e.name for e in TABLE if e.amp_configs is not None and e.name not in names]
    missing = [name for name in names if name not in entries]
    assert not missing, f"no tests/optim_table.py entry for {missing}"
    assert names, "no optimizer takes GradScaler's scale: nothing to test"
    return [
        pytest.param(entries[name], config, id=f"{name}-{config_id(config)}")
        for name in names
        for config in _amp_configs(entries[name])
    ]


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))


def _state(opt: torch.optim.Optimizer, p: torch.Tensor) -> dict[str, torch.Tensor]:
    # .get: opt.state is a defaultdict, and indexing it would add the entry looked for
    return {k: v.detach().clone() for k, v in opt.state.get(p, {}).items()}


def _check_skipped(
    opt: torch.optim.Optimizer,
    params: list[torch.Tensor],
    before: list[tuple[torch.Tensor, dict[str, torch.Tensor]]],
    taken: int,
) -> None:
    """What a step GradScaler skipped must have left, `taken` steps having gone through."""
    cls = type(opt)
    # the state a first step sets up before reading any grad: all of it but the lazy part
    initial = set(cls.state_names) - set(cls.lazy_state) | ({"step"} if cls.has_step else set())
    for p, (param, state) in zip(params, before):
        assert torch.equal(p, param)
        after = _state(opt, p)
        if state:
            assert set(after) == set(state)
        else:  # e.g. SGD's: no momentum buffer, so no state at all
            assert set(after) <= initial, f"a skipped first step made {set(after) - initial}"
        for key, value in state.items():
            assert torch.equal(after[key], value), key
        if cls.has_step and after:
            assert after["step"].item() == taken  # the skipped step does not count


@pytest.mark.parametrize("path", FUSED_CPU_PATHS)
@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize(("entry", "config"), _cases())
def test_grad_scaler_drives_fused_step(
    entry: OptimEntry, config: dict[str, Any], schedule: Schedule, path: str
) -> None:
    ours_model, ref_model = _model(), _model()
    ours = entry.ours(ours_model.parameters(), fused=True, **config)
    ref = entry.torch_cls(
        ref_model.parameters(), **entry.torch_foreach(False), **entry.torch_kwargs(config)
    )
    assert ours._step_supports_amp_scaling
    scaler = torch.amp.GradScaler("cpu", init_scale=INIT_SCALE)
    x = torch.randn(16, 4, generator=torch.Generator().manual_seed(1))
    params = list(ours_model.parameters())
    taken = skipped = 0
    for step in range(schedule.steps):
        ours.zero_grad()
        scaler.scale(ours_model(x).pow(2).mean()).backward()
        skip = schedule.skips.get(step)
        if skip is not None:
            params[skip.param].grad[skip.index] = skip.value
            before = [(p.detach().clone(), _state(ours, p)) for p in params]
            scaler.step(ours)
            scaler.update()
            skipped += 1
            _check_skipped(ours, params, before, taken)
            assert scaler.get_scale() == INIT_SCALE / 2**skipped
            continue
        # torch's step on the unscaled loss's own grads, at its own params
        ref.zero_grad()
        ref_model(x).pow(2).mean().backward()
        scale = scaler.get_scale()
        scaled = [p.grad.clone() for p in params]
        scaler.step(ours)
        scaler.update()
        ref.step()
        taken += 1
        for p, q, grad in zip(params, ref_model.parameters(), scaled):
            # unscaled in place, bit for bit: dividing by a power of two is exact
            torch.testing.assert_close(p.grad, grad / scale, rtol=0, atol=0)
            torch.testing.assert_close(p.grad, q.grad)
            torch.testing.assert_close(p, q)
            for key, value in ref.state[q].items():
                torch.testing.assert_close(ours.state[p][key], value)
