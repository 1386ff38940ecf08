"""The forloop backend with differentiable=True, for every optimizer in the table that takes it.

Two checks, on cases derived from each table entry's configs (plus the few in SPECS below):

- ``test_step_passes_gradcheck``: one differentiable step, in fp64, passes
  ``torch.autograd.gradcheck`` with respect to the param, its grad, every floating state tensor
  (but 0-dim state the update reads as a number: held fixed) and every tensor hyperparameter of
  the config (lr, betas, SGD's weight_decay).
- ``test_gradients_match_torch``: the gradients of a random weighted sum of the step's outputs (the
  param and every floating state tensor) with respect to the same inputs match those through
  torch.optim's own differentiable step.

A config with tensor hyperparameters is checked twice: with them as gradcheck inputs, and with the
same values as Python floats (the common case). The two take different paths in most updates
(scalars kept on the device, or read on the host).

The step starts from a realistic state, made by plain (non-differentiable) warm-up steps on random
grads: conditions the update relies on, such as second moments above zero or centered RMSprop's
mean square above its squared mean, then hold as they do in training. What is particular to one
optimizer (where its update has kinks, which 0-dim state it reads as a number, which step counts
take other branches, where torch's own step cannot be differentiated) is data in SPECS, not a test
of its own: a new optimizer whose class takes `differentiable` gets every check from its table
entry alone.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
from torch import Tensor

from tests.optim_table import TABLE, OptimEntry, config_id

Config = dict[str, Any]
Tensors = dict[str, Tensor]

NUMEL = 6
# The inputs every case has, first in its input list; the state and hyperparameters follow.
PARAM, GRAD = "param", "grad"
# Finite differences well below the smallest realistic state: Adadelta's acc_delta is about its
# eps (1e-6) after a few steps, and gradcheck's default step of 1e-6 would leave the linear range
# of sqrt(acc_delta + eps). In fp64 the rounding error of a 1e-8 step is still far below the
# tolerances.
GRADCHECK_EPS = 1e-8


def _no_scalars(config: Config, state: Tensors) -> frozenset[str]:
    return frozenset()


def _always(config: Config, warmup: int) -> bool:
    return True


@dataclass(frozen=True)
class Spec:
    """What one optimizer's differentiable step needs beyond its table entry (defaults: nothing)."""

    # warm-up steps before the checked one; 0 checks a first step, on the state it creates
    warmups: tuple[int, ...] = (3,)
    # configs checked beside the table's: those of the per-optimizer tests this file replaced
    configs: tuple[Config, ...] = ()
    # 0-dim state the update reads as a Python number (or branches on) under this config and
    # state: no gradient flows through it, so it is held fixed rather than made an input
    host_scalars: Callable[[Config, Tensors], frozenset[str]] = _no_scalars
    # moves the inputs (in place) away from the update's kinks: finite differences must see one
    # smooth piece of a piecewise update
    away_from_kinks: Callable[[Tensors], None] | None = None
    # what the warm-up state must satisfy for the step to be smooth there (asserted, not forced)
    precondition: Callable[[Config, Tensors], bool] | None = None
    # hyperparameters torch.optim's differentiable step takes only as numbers (it refuses a tensor
    # that requires grad, or reads it on the host): torch gets them detached and their gradient is
    # not compared (gradcheck checks ours)
    torch_numbers: frozenset[str] = field(default_factory=frozenset)
    # whether torch.optim's differentiable step can be backpropagated under (config, warmup)
    torch_backward_works: Callable[[Config, int], bool] = _always


def _asgd_host_scalars(config: Config, state: Tensors) -> frozenset[str]:
    # Off the device path eta is read with .item(), and mu == 1 picks a branch (the average is the
    # iterate itself) whose other side is the general formula: a kink in mu.
    if config.get("capturable", False):
        return frozenset()
    return frozenset({"eta"} | ({"mu"} if state["mu"].item() == 1 else set()))


def _asgd_torch_backward_works(config: Config, warmup: int) -> bool:
    # torch's ASGD multiplies by mu in place, then overwrites mu: its backward fails once the
    # average is past t0 (mu = 1 / max(1, step - t0) below 1)
    return warmup - config.get("t0", 1e6) <= 1


def _nadam_host_scalars(config: Config, state: Tensors) -> frozenset[str]:
    # mu_product stays a tensor on the device path (capturable, or a tensor lr when
    # differentiating); the host path reads it with .item()
    on_device = config.get("capturable", False) or isinstance(config.get("lr"), Tensor)
    return frozenset() if on_device else frozenset({"mu_product"})


def _rprop_away_from_kinks(inputs: Tensors) -> None:
    # sign(grad * prev) picks the step-size factor: a zero prev (where the last step's sign
    # flipped) or a grad near 0 sits on a jump. Both are moved 0.1 away from 0 on their own side.
    for name in (GRAD, "prev"):
        t = inputs[name]
        inputs[name] = torch.where(t >= 0, t + 0.1, t - 0.1)


def _rmsprop_centered_root_exists(config: Config, state: Tensors) -> bool:
    if not config.get("centered", False):
        return True
    return bool((state["square_avg"] > state["grad_avg"] ** 2).all())


def _t(value: float) -> Tensor:
    return torch.tensor(value)


# Each entry's `configs` are those of the per-optimizer tests this file replaced (their tensor lr
# values included); the table entry's own configs are checked first.
SPECS: dict[str, Spec] = {
    "Adadelta": Spec(
        configs=({"lr": _t(0.7), "rho": 0.8, "weight_decay": 0.1},),
        torch_numbers=frozenset({"lr"}),
    ),
    "Adagrad": Spec(
        configs=({"lr": _t(0.3), "lr_decay": 0.1, "weight_decay": 0.1, "maximize": True},),
        torch_numbers=frozenset({"lr"}),
    ),
    # the device path (tensor lr and betas) and, as floats, the host path
    "Adam": Spec(
        configs=(
            {"lr": _t(0.3), "betas": (_t(0.8), _t(0.9)), "weight_decay": 0.1},
            {
                "lr": _t(0.3),
                "betas": (_t(0.8), _t(0.9)),
                "weight_decay": 0.1,
                "amsgrad": True,
                "maximize": True,
            },
        )
    ),
    "AdamW": Spec(
        configs=(
            {"lr": _t(0.3), "betas": (_t(0.8), _t(0.9)), "weight_decay": 0.1},
            {"lr": _t(0.3), "betas": (_t(0.8), _t(0.9)), "weight_decay": 0.1, "amsgrad": True},
        )
    ),
    "Adamax": Spec(torch_numbers=frozenset({"lr"})),
    # t0 = 1 after 3 warm-up steps: mu = 0.5, the average past its start; eta on the host, then
    # on the device
    "ASGD": Spec(
        configs=tuple(
            {"lr": _t(0.2), "lambd": 0.1, "t0": 1, "weight_decay": 0.1, "capturable": capturable}
            for capturable in (False, True)
        ),
        host_scalars=_asgd_host_scalars,
        torch_numbers=frozenset({"lr"}),
        torch_backward_works=_asgd_torch_backward_works,
    ),
    "NAdam": Spec(
        configs=tuple(
            {"lr": _t(0.3), "weight_decay": 0.1, "decoupled_weight_decay": decoupled}
            for decoupled in (False, True)
        ),
        host_scalars=_nadam_host_scalars,
    ),
    # the step after 3 is step 4 (rho_t 3.998: unrectified, r_t is NaN), after 9 step 10
    # (rho_t 9.98: rectified)
    "RAdam": Spec(
        warmups=(3, 9),
        configs=tuple(
            {"lr": _t(0.3), "weight_decay": 0.1, "decoupled_weight_decay": decoupled}
            for decoupled in (False, True)
        ),
    ),
    # centered with momentum: every state tensor at once
    "RMSprop": Spec(
        configs=(
            {
                "lr": _t(0.3),
                "alpha": 0.9,
                "weight_decay": 0.1,
                "momentum": 0.5,
                "centered": True,
                "maximize": True,
            },
        ),
        precondition=_rmsprop_centered_root_exists,
        torch_numbers=frozenset({"lr"}),
    ),
    # torch's Rprop refuses a tensor lr that requires grad (it fills the first step sizes with
    # it); from a warmed-up state ours has no gradient for it either, which gradcheck confirms
    "Rprop": Spec(
        configs=({"etas": (0.4, 1.3), "step_sizes": (1e-3, 5.0)},),
        away_from_kinks=_rprop_away_from_kinks,
        torch_numbers=frozenset({"lr"}),
    ),
    # a first step (no momentum buffer yet: it starts as a detached copy of the grad, as torch's)
    # and a later one
    "SGD": Spec(
        warmups=(0, 1),
        configs=({"lr": _t(0.3), "weight_decay": _t(0.1), "momentum": 0.9, "nesterov": True},),
    ),
}


def _spec(entry: OptimEntry) -> Spec:
    return SPECS.get(entry.name, Spec())


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
    return _spec(entry).torch_backward_works(entry.torch_kwargs(config), warmup)


def _cases(check: str) -> list[Any]:
    """(entry, config, warmup, hypers) for every differentiable entry, as pytest params."""
    cases = []
    for entry in TABLE:
        if "differentiable" not in inspect.signature(entry.ours).parameters:
            continue
        spec = _spec(entry)
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
        # a clone: torch's SGD adds a tensor weight decay into the grad in place
        p.grad = values[GRAD].clone()
        if cls is self.entry.torch_cls:
            numbers = _spec(self.entry).torch_numbers
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
    spec = _spec(entry)
    if hypers == "float":
        config = _as_floats(config)
    gen = torch.Generator().manual_seed(0)
    p = torch.randn(NUMEL, dtype=torch.float64, generator=gen)
    opt = entry.ours([p], backend="forloop", **config)
    for _ in range(warmup):
        p.grad = torch.randn(NUMEL, dtype=torch.float64, generator=gen)
        opt.step()
    state = {n: t.detach() for n, t in opt.state[p].items() if isinstance(t, Tensor)}
    # fp64 throughout, 0-dim state and step included (ASGD's eta and mu are fp32 by default):
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
    numbers = _spec(entry).torch_numbers
    for name, ours, theirs in zip(case.inputs, *grads):
        if name in numbers:
            continue
        # None where no output depends on the input: for both, or it is a mismatch
        if theirs is None:
            assert ours is None or not ours.any(), f"{name}: torch has no gradient, ours does"
        else:
            assert ours is not None, f"{name}: torch has a gradient, ours has none"
            torch.testing.assert_close(ours, theirs, msg=lambda m, name=name: f"{name}: {m}")
