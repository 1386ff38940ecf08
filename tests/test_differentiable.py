"""The forloop backend with differentiable=True, for every optimizer in the table that takes it.

Two checks, on cases derived from each table entry's configs (plus the few in its
``differentiable`` field):

- ``test_step_passes_gradcheck``: one differentiable step, in fp64, passes
  ``torch.autograd.gradcheck`` with respect to the param, its grad, every floating state tensor
  (but 0-dim state the update reads as a number: held fixed) and every tensor hyperparameter of
  the config (lr, betas, a tensor weight_decay).
- ``test_gradients_match_torch``: the gradients of a random weighted sum of the step's outputs (the
  param and every floating state tensor) with respect to the same inputs match those through
  torch.optim's own differentiable step.

A config with tensor hyperparameters is checked twice: with them as gradcheck inputs, and with the
same values as Python floats (the common case). The two take different paths in most updates
(scalars kept on the device, or read on the host).

The step starts from a realistic state, made by plain (non-differentiable) warm-up steps on random
grads: conditions the update relies on, such as second moments above zero or a centered mean
square above its squared mean, then hold as they do in training. What is particular to one
optimizer (where its update has kinks, which 0-dim state it reads as a number, which step counts
take other branches, where torch's own step cannot be differentiated) is data in its table entry's
``differentiable`` field (a DifferentiableSpec, tests/optim_table.py), not a test of its own: a new
optimizer whose class takes `differentiable` gets every check from its table entry alone.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from torch import Tensor

from tests.optim_table import TABLE, Config, OptimEntry, Tensors, config_id

NUMEL = 6
# The inputs every case has, first in its input list; the state and hyperparameters follow.
PARAM, GRAD = "param", "grad"
# Finite differences well below the smallest realistic state: an accumulated squared update can
# be about its eps (1e-6) after a few steps, and gradcheck's default step of 1e-6 would leave the
# linear range of sqrt(acc + eps). In fp64 the rounding error of a 1e-8 step is still far below the
# tolerances.
GRADCHECK_EPS = 1e-8


def _tensor_hypers(config: Config) -> Tensors:
    """The config's tensor hyperparameters by input name: "lr", or "betas[0]" inside a tuple."""
    found: Tensors = {}
    for key, value in config.items():
        if isinstance(value, Tensor):
            found[key] = value
        elif isinstance(value, tuple):
            found |= {f"{key}[{i}]": v for i, v in enumerate(value) if isinstance(v, Tensor)}
    return found


def _with_hypers(config: Config, values: dict[str, Any]) -> Config:
    """The config with the hyperparameters named in `values` (as _tensor_hypers names them)
    replaced."""
    out: Config = {}
    for key, value in config.items():
        if isinstance(value, tuple):
            value = tuple(values.get(f"{key}[{i}]", v) for i, v in enumerate(value))
        out[key] = values.get(key, value)
    return out


def _as_floats(config: Config) -> Config:
    return _with_hypers(config, {n: t.item() for n, t in _tensor_hypers(config).items()})


def _compared_with_torch(entry: OptimEntry, config: Config, warmup: int) -> bool:
    # Flags torch.optim refuses on CPU (capturable) are left out of its config: its step is then
    # the non-capturable one, which ours must match whichever path it takes.
    return entry.differentiable.torch_backward_works(entry.torch_kwargs(config), warmup)


def _cases(check: str) -> list[Any]:
    """(entry, config, warmup, hypers) for every differentiable entry, as pytest params."""
    cases = []
    for entry in TABLE:
        if "differentiable" not in inspect.signature(entry.ours).parameters:
            continue
        spec = entry.differentiable
        for config in [*entry.configs, *spec.configs]:
            for warmup in spec.warmups:
                if check == "gradcheck" and warmup == 0 and entry.ours.lazy_state:
                    # state a first step creates from the grad is a detached copy, by design (as
                    # torch's): finite differences see through it, autograd does not. The torch
                    # comparison checks such a step.
                    continue
                if check == "torch" and not _compared_with_torch(entry, config, warmup):
                    continue
                for hypers in ("tensor", "float") if _tensor_hypers(config) else ("float",):
                    case_id = f"{entry.name}-{config_id(config)}-warmup{warmup}-{hypers}"
                    cases.append(pytest.param(entry, config, warmup, hypers, id=case_id))
    return cases


def _state_outputs(entry: OptimEntry, state: dict[str, Any]) -> Tensors:
    """The floating state tensors of a param, in the entry's state_names order."""
    return {
        n: state[n]
        for n in entry.ours.state_names
        if isinstance(state.get(n), Tensor) and state[n].is_floating_point()
    }


@dataclass
class Case:
    """One differentiable step: its inputs (in order, by name) and the state it holds fixed."""

    entry: OptimEntry
    config: Config
    inputs: Tensors
    fixed_state: Tensors

    def step(self, cls: type[torch.optim.Optimizer], *tensors: Tensor) -> Tensors:
        """The param and its floating state, by name, after one differentiable step of `cls`
        (ours or torch's) from `tensors`, the inputs in order."""
        values = dict(zip(self.inputs, tensors))
        p = values[PARAM].clone()
        # a clone: torch's step may add a tensor weight decay into the grad in place
        p.grad = values[GRAD].clone()
        if cls is self.entry.torch_cls:
            numbers = self.entry.differentiable.torch_numbers
            values |= {n: values[n].detach() for n in numbers if n in values}
            kwargs = self.entry.torch_kwargs(_with_hypers(self.config, values))
            kwargs |= self.entry.torch_foreach(False)
        else:
            kwargs = _with_hypers(self.config, values) | {"backend": "forloop"}
        opt = cls([p], differentiable=True, **kwargs)
        # clones: the step updates its state in place, and the inputs must stay as they are
        state = {n: t.clone() for n, t in self.fixed_state.items()}
        state |= {n: values[n].clone() for n in self.inputs if n in self.entry.ours.state_names}
        opt.state[p].update(state)
        opt.step()
        return {PARAM: p} | _state_outputs(self.entry, opt.state[p])


def _make_case(entry: OptimEntry, config: Config, warmup: int, hypers: str, check: str) -> Case:
    spec = entry.differentiable
    if hypers == "float":
        config = _as_floats(config)
    gen = torch.Generator().manual_seed(0)
    p = torch.randn(NUMEL, dtype=torch.float64, generator=gen)
    opt = entry.ours([p], backend="forloop", **config)
    for _ in range(warmup):
        p.grad = torch.randn(NUMEL, dtype=torch.float64, generator=gen)
        opt.step()
    state = {n: t.detach() for n, t in opt.state[p].items() if isinstance(t, Tensor)}
    # fp64 throughout, 0-dim state and step included (some 0-dim state is fp32 by default):
    # finite differences need it, and torch computes its bias corrections in the step's dtype
    state = {n: t.to(torch.float64) if t.is_floating_point() else t for n, t in state.items()}
    if spec.precondition is not None:
        assert spec.precondition(config, state), f"{entry.name}: warm-up state fails the condition"
    # Against torch, what its (non-capturable) step reads as a number is held fixed for both.
    host = spec.host_scalars(entry.torch_kwargs(config) if check == "torch" else config, state)
    inputs = {PARAM: p.clone(), GRAD: torch.randn(NUMEL, dtype=torch.float64, generator=gen)}
    inputs |= {n: state.pop(n) for n in _state_outputs(entry, state) if n not in host}
    if spec.away_from_kinks is not None:
        spec.away_from_kinks(inputs)
    inputs |= {n: t.to(torch.float64) for n, t in _tensor_hypers(config).items()}
    inputs = {n: t.detach().clone().requires_grad_() for n, t in inputs.items()}
    return Case(entry, config, inputs, state)


@pytest.mark.parametrize(("entry", "config", "warmup", "hypers"), _cases("gradcheck"))
def test_step_passes_gradcheck(entry: OptimEntry, config: Config, warmup: int, hypers: str) -> None:
    case = _make_case(entry, config, warmup, hypers, "gradcheck")
    assert torch.autograd.gradcheck(
        lambda *t: tuple(case.step(entry.ours, *t).values()),
        tuple(case.inputs.values()),
        eps=GRADCHECK_EPS,
    )


@pytest.mark.parametrize(("entry", "config", "warmup", "hypers"), _cases("torch"))
def test_gradients_match_torch(entry: OptimEntry, config: Config, warmup: int, hypers: str) -> None:
    case = _make_case(entry, config, warmup, hypers, "torch")
    tensors = tuple(case.inputs.values())
    grads: list[tuple[Tensor | None, ...]] = []
    names: list[list[str]] = []
    for cls in (entry.ours, entry.torch_cls):
        outputs = case.step(cls, *tensors)
        names.append(list(outputs))
        # the same weights for both: one seed, drawn in the same (state_names) order
        weights = torch.Generator().manual_seed(1)
        total = sum(
            (o * torch.rand(o.shape, generator=weights, dtype=o.dtype)).sum()
            for o in outputs.values()
        )
        grads.append(torch.autograd.grad(total, tensors, allow_unused=True))
    assert names[0] == names[1], "the two steps leave different state"
    numbers = entry.differentiable.torch_numbers
    for name, ours, theirs in zip(case.inputs, *grads):
        if name in numbers:
            continue
        # None where no output depends on the input: for both, or it is a mismatch
        if theirs is None:
            assert ours is None or not ours.any(), f"{name}: torch has no gradient, ours does"
        else:
            assert ours is not None, f"{name}: torch has a gradient, ours has none"
            torch.testing.assert_close(ours, theirs, msg=lambda m, name=name: f"{name}: {m}")
