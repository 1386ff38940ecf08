"""One table of optimizers and the configurations their tests run.

Each entry pairs our class with torch.optim's and lists the flag combinations torch's own optimizer
tests use for that class (its OptimizerInfo inputs, the CUDA-only capturable ones included: ours
are capturable on CPU too, and are compared with torch's non-capturable run). A new optimizer adds
one entry here; the parity and contract tests pick it up.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from tests.parity_lbfgs import lbfgs_parity
from tests.parity_special import sparse_adam_side_by_side
from tests.reference_optimizers import LionReference
from workbench.optim import OPTIMIZERS

Config = dict[str, Any]
Tensors = dict[str, torch.Tensor]


def _no_scalars(config: Config, state: Tensors) -> frozenset[str]:
    return frozenset()


def _always(config: Config, warmup: int) -> bool:
    return True


@dataclass(frozen=True)
class DifferentiableSpec:
    """What one optimizer's differentiable step (tests/test_differentiable.py) needs beyond its
    table entry (defaults: nothing)."""

    # warm-up steps before the checked one; 0 checks a first step, on the state it creates
    warmups: tuple[int, ...] = (3,)
    # configs checked beside the table's (which are checked first): those of the per-optimizer
    # tests tests/test_differentiable.py replaced, their tensor lr values included
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


def _t(value: float) -> torch.Tensor:
    return torch.tensor(value)


@dataclass(frozen=True)
class OptimEntry:
    name: str
    configs: list[dict[str, Any]]
    # kwargs that only ours understands, or that torch.optim refuses on CPU
    ours_only: tuple[str, ...] = ("capturable",)
    # flags ours takes that torch.optim's class takes only from a later release (LBFGS's
    # maximize, torch 2.14): where the installed torch lacks one, its group has no such key and
    # its parity runs against torch on an equivalent problem (see the entry's side_by_side)
    later_torch_flags: tuple[str, ...] = ()
    # a bad-input table: (kwargs, error type, message regex)
    errors: list[tuple[dict[str, Any], type[Exception], str]] = field(default_factory=list)
    # group hyperparameters under which a step leaves the params as they are (Rprop: lr only sets
    # the first step size, which is then clamped to at least step_sizes[0])
    frozen: dict[str, Any] = field(default_factory=lambda: {"lr": 0.0})
    # whether torch.optim takes complex params (Adafactor refuses them) and empty ones (Adafactor
    # divides by their numel): the parity problems leave out what it cannot step
    complex_params: bool = True
    empty_params: bool = True
    # For optimizers the generic parity procedure cannot drive: a function (entry, backend,
    # config, dtype) comparing ours with torch's side by side (tests/parity_special.py)
    side_by_side: Callable[..., None] | None = None
    # step(closure) only, the closure called many times per step (LBFGS)
    closure_step: bool = False
    # grads must be sparse-layout (SparseAdam): the contract tests use nn.Embedding(sparse=True)
    sparse_grads: bool = False
    # torch.optim refuses more than one param group (LBFGS)
    one_group: bool = False
    # torch.optim refuses params that are not 2-D (Muon): the tests make theirs matrices (`shape`)
    matrices_only: bool = False
    # the GradScaler tests' configs (tests/test_grad_scaler.py): set for an optimizer whose
    # fused backend takes GradScaler's grad_scale / found_inf (`fused_amp_scaling`), which
    # these tests then require; None: not declared, its configs torch.optim takes as they are
    amp_configs: list[dict[str, Any]] | None = None
    # the fused C kernel's configs on big ragged tensors that two threads split
    # (tests/test_fused_cpu.py): set for every optimizer with a CPU kernel (`cpu_kernel`), which
    # that file requires; and the steps each of them takes there
    fused_cpu_configs: list[dict[str, Any]] = field(default_factory=list)
    fused_cpu_steps: int = 4
    # the non-finite gradient tests' configs besides the default (tests/test_nonfinite.py): the
    # flags that route through other code (weight decay added to the gradient, maximize, the
    # optional buffers and their branches); and the backends not exact on non-finite values,
    # each with why (backend -> reason)
    nonfinite_configs: list[dict[str, Any]] = field(default_factory=list)
    nonfinite_skips: dict[str, str] = field(default_factory=dict)
    # whether tests/test_compiled_codegen.py checks that the compiled backend computes this
    # optimizer's per-step scalars (fp64 bias corrections: pow of the step count) outside the
    # element loops
    compiled_codegen: bool = False
    # for an optimizer torch.optim lacks: the reference it is checked against instead, written
    # from its paper (tests/reference_optimizers.py); everything here calls it "torch"
    reference: type[torch.optim.Optimizer] | None = None
    # what its differentiable step needs beyond the above (tests/test_differentiable.py checks
    # every optimizer whose class takes `differentiable`)
    differentiable: DifferentiableSpec = field(default_factory=DifferentiableSpec)

    @property
    def ours(self) -> type[torch.optim.Optimizer]:
        return OPTIMIZERS[self.name]

    @property
    def torch_cls(self) -> type[torch.optim.Optimizer]:
        return self.reference or getattr(torch.optim, self.name)

    def shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """A test param's shape, as a matrix for a matrices-only optimizer: () -> (1, 1),
        (n,) -> (n, 1), (a, b, c) -> (a, b * c)."""
        if not self.matrices_only or len(shape) == 2:
            return shape
        return (shape[0] if shape else 1, math.prod(shape[1:]))

    def torch_foreach(self, foreach: bool) -> dict[str, Any]:
        """torch's `foreach=` where its class takes one (Muon's does not: it runs per tensor)."""
        takes = inspect.signature(self.torch_cls).parameters
        return {"foreach": foreach} if "foreach" in takes else {}

    def torch_kwargs(self, config: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in config.items() if k not in self.ours_only}

    def torch_lacks(self) -> set[str]:
        """The later-torch flags the installed torch.optim class does not take."""
        takes = inspect.signature(self.torch_cls).parameters
        return {flag for flag in self.later_torch_flags if flag not in takes}


def config_id(config: dict[str, Any]) -> str:
    if not config:
        return "default"
    parts = []
    for k, v in config.items():
        if isinstance(v, torch.Tensor):
            v = f"tensor({v.item():g})"
        parts.append(f"{k}={v}")
    return ",".join(parts)


ADAMAX = OptimEntry(
    name="Adamax",
    configs=[
        {},
        {"lr": 0.1},
        {"weight_decay": 0.1},
        {"maximize": True},
        {"weight_decay": 0.1, "maximize": True},
        {"lr": torch.tensor(0.05)},
        {"capturable": True},
        {"weight_decay": 0.9, "maximize": True, "capturable": True},
        {"weight_decay": 0, "maximize": True, "capturable": True},
        {"weight_decay": 0.9, "maximize": False, "capturable": True},
        {"lr": torch.tensor(0.001), "weight_decay": 0.9, "capturable": True},
        {"betas": (0.0, 0.5), "eps": 1e-3},
    ],
    errors=[
        ({"lr": -1.0}, ValueError, "Invalid learning rate: -1.0"),
        ({"eps": -1e-8}, ValueError, "Invalid epsilon value"),
        ({"betas": (1.0, 0.99)}, ValueError, "Invalid beta parameter at index 0: 1.0"),
        ({"betas": (0.0, 1.0)}, ValueError, "Invalid beta parameter at index 1: 1.0"),
        ({"betas": (-0.1, 0.99)}, ValueError, "Invalid beta parameter at index 0"),
        ({"weight_decay": -0.5}, ValueError, "Invalid weight_decay value: -0.5"),
        ({"lr": torch.tensor([0.001, 0.001])}, ValueError, "Tensor lr must be 1-element"),
    ],
    fused_cpu_configs=[{"weight_decay": 0.1, "maximize": True}],
    nonfinite_configs=[{"weight_decay": 0.1, "maximize": True}],
    differentiable=DifferentiableSpec(torch_numbers=frozenset({"lr"})),
)

ADADELTA = OptimEntry(
    name="Adadelta",
    configs=[
        {},
        {"lr": 0.01},
        {"weight_decay": 0.1},
        {"maximize": True},
        {"weight_decay": 0.1, "maximize": True},
        {"rho": 0.95, "weight_decay": 0.9},
        {"capturable": True},
        {"weight_decay": 0.1, "capturable": True},
        {"lr": torch.tensor(0.001), "capturable": True},
        # ours: a tensor lr read on the host, rho = 0 (the average is the last square)
        {"lr": torch.tensor(0.5), "rho": 0.0, "eps": 1e-3, "weight_decay": 0.1, "maximize": True},
    ],
    errors=[
        ({"lr": -1.0}, ValueError, "Invalid learning rate: -1.0"),
        ({"lr": 1e-2, "rho": 1.1}, ValueError, "Invalid rho value: 1.1"),
        ({"rho": -0.1}, ValueError, "Invalid rho value: -0.1"),
        ({"eps": -1e-6}, ValueError, "Invalid epsilon value"),
        ({"weight_decay": -0.5}, ValueError, "Invalid weight_decay value: -0.5"),
        ({"lr": torch.tensor([0.001, 0.001])}, ValueError, "Tensor lr must be 1-element"),
    ],
    fused_cpu_configs=[{"weight_decay": 0.1, "maximize": True}, {"lr": 0.5, "rho": 0.8}],
    nonfinite_configs=[{"weight_decay": 0.1, "maximize": True}],
    differentiable=DifferentiableSpec(
        configs=({"lr": _t(0.7), "rho": 0.8, "weight_decay": 0.1},),
        torch_numbers=frozenset({"lr"}),
    ),
)


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


ASGD = OptimEntry(
    name="ASGD",
    configs=[
        {},
        {"lambd": 0.1},
        {"lr": 0.02},
        {"t0": 100},
        {"maximize": True},
        {"weight_decay": 0.1},
        {"weight_decay": 0.1, "maximize": True},
        {"capturable": True},
        {"maximize": True, "capturable": True},
        {"weight_decay": 0.1, "capturable": True},
        {"weight_decay": 0.1, "maximize": True, "capturable": True},
        {"lr": torch.tensor(0.001), "weight_decay": 0.1, "maximize": True, "capturable": True},
        # ours: averaging that starts within the test's steps (mu < 1 from step 4 on), with a
        # tensor lr read on the host, then on the device
        {"t0": 2, "lambd": 0.1, "lr": torch.tensor(0.05)},
        {"t0": 2, "lambd": 0.1, "weight_decay": 0.1, "capturable": True},
    ],
    errors=[
        ({"lr": -1.0}, ValueError, "Invalid learning rate: -1.0"),
        ({"lr": 1e-2, "weight_decay": -0.5}, ValueError, "Invalid weight_decay value: -0.5"),
        ({"lr": torch.tensor([0.001, 0.001])}, ValueError, "Tensor lr must be 1-element"),
    ],
    # averaging (mu < 1) from step 4 with t0 = 1, from step 3 with t0 = 0; an fp32 tensor lr
    fused_cpu_configs=[
        {"t0": 1, "lambd": 0.1, "weight_decay": 0.1, "maximize": True},
        {"t0": 0, "lambd": 0.5, "alpha": 0.5, "lr": torch.tensor(0.05)},
    ],
    nonfinite_configs=[{"t0": 0, "weight_decay": 0.1, "maximize": True}],  # t0 = 0: averaging runs
    nonfinite_skips={
        "foreach": "folds the decay into the gradient as torch's foreach ASGD does: an inf "
        "param gives inf - inf = nan where the forloop keeps inf (workbench/optim/asgd.py)",
    },
    # t0 = 1 after 3 warm-up steps: mu = 0.5, the average past its start; eta on the host, then
    # on the device
    differentiable=DifferentiableSpec(
        configs=tuple(
            {"lr": _t(0.2), "lambd": 0.1, "t0": 1, "weight_decay": 0.1, "capturable": capturable}
            for capturable in (False, True)
        ),
        host_scalars=_asgd_host_scalars,
        torch_numbers=frozenset({"lr"}),
        torch_backward_works=_asgd_torch_backward_works,
    ),
)


def _rprop_away_from_kinks(inputs: Tensors) -> None:
    # sign(grad * prev) picks the step-size factor: a zero prev (where the last step's sign
    # flipped) or a grad near 0 sits on a jump. Both (the checked step's grad input and the prev
    # state) are moved 0.1 away from 0 on their own side.
    for name in ("grad", "prev"):
        t = inputs[name]
        inputs[name] = torch.where(t >= 0, t + 0.1, t - 0.1)


RPROP = OptimEntry(
    name="Rprop",
    configs=[
        {},
        {"lr": 2e-4},
        {"etas": (0.5, 1.5)},
        {"step_sizes": (2e-6, 100)},
        {"maximize": True},
        {"capturable": True},
        {"lr": torch.tensor(0.001), "capturable": True},
        # ours: step sizes that hit both clamps, a tensor lr read on the host, maximize
        {"lr": torch.tensor(0.05), "etas": (0.3, 1.7), "step_sizes": (1e-3, 0.1), "maximize": True},
    ],
    errors=[
        ({"lr": -1.0}, ValueError, "Invalid learning rate: -1.0"),
        ({"lr": 1e-2, "etas": (1.0, 0.5)}, ValueError, "Invalid eta values: 1.0, 0.5"),
        ({"etas": (0.5, 1.0)}, ValueError, "Invalid eta values: 0.5, 1.0"),
        ({"lr": torch.tensor([0.001, 0.001])}, ValueError, "Tensor lr must be 1-element"),
    ],
    frozen={"lr": 0.0, "step_sizes": (0.0, 0.0)},
    # step sizes that hit both clamps (and a min above the first step size), maximize
    fused_cpu_configs=[
        {"etas": (0.3, 1.7), "step_sizes": (1e-3, 0.02), "maximize": True},
        {"lr": 1e-4, "etas": (0.5, 3.0), "step_sizes": (2e-4, 50)},
    ],
    nonfinite_configs=[{"maximize": True}],
    nonfinite_skips={
        "foreach": "prev = grad * keep: an inf gradient where the sign flipped stores nan, "
        "not 0; exact would need a where per tensor (workbench/optim/rprop.py)",
    },
    # torch's Rprop refuses a tensor lr that requires grad (it fills the first step sizes with
    # it); from a warmed-up state ours has no gradient for it either, which gradcheck confirms
    differentiable=DifferentiableSpec(
        configs=({"etas": (0.4, 1.3), "step_sizes": (1e-3, 5.0)},),
        away_from_kinks=_rprop_away_from_kinks,
        torch_numbers=frozenset({"lr"}),
    ),
)


def _nadam_host_scalars(config: Config, state: Tensors) -> frozenset[str]:
    # mu_product stays a tensor on the device path (capturable, or a tensor lr when
    # differentiating); the host path reads it with .item()
    on_device = config.get("capturable", False) or isinstance(config.get("lr"), torch.Tensor)
    return frozenset() if on_device else frozenset({"mu_product"})


NADAM = OptimEntry(
    name="NAdam",
    configs=[
        {},
        {"lr": 1e-3},
        {"momentum_decay": 6e-3},
        {"weight_decay": 0.1},
        {"weight_decay": 0.1, "momentum_decay": 6e-3},
        {"weight_decay": 0.1, "momentum_decay": 6e-3, "decoupled_weight_decay": True},
        {"weight_decay": 0.1, "maximize": True},
        {"capturable": True},
        {"weight_decay": 0.9, "momentum_decay": 6e-3, "capturable": True},
        {"weight_decay": 0.9, "momentum_decay": 6e-3, "decoupled_weight_decay": True,
         "capturable": True},
        {"lr": torch.tensor(0.001), "weight_decay": 0.9, "momentum_decay": 6e-3,
         "decoupled_weight_decay": True, "capturable": True},
        # ours: maximize on the device path, and beta1 = 0 (mu_product stays 0)
        {"betas": (0.0, 0.9), "maximize": True, "capturable": True},
    ],
    errors=[
        ({"lr": -1.0}, ValueError, "Invalid learning rate: -1.0"),
        ({"eps": -1e-8}, ValueError, "Invalid epsilon value"),
        ({"lr": 1e-2, "betas": (1.0, 0.0)}, ValueError, "Invalid beta parameter at index 0: 1.0"),
        ({"betas": (0.0, 1.0)}, ValueError, "Invalid beta parameter at index 1: 1.0"),
        ({"weight_decay": -0.5}, ValueError, "Invalid weight_decay value: -0.5"),
        ({"lr": 1e-2, "momentum_decay": -0.2}, ValueError, "Invalid momentum_decay value: -0.2"),
        ({"lr": torch.tensor([0.001, 0.001])}, ValueError, "Tensor lr must be 1-element"),
    ],
    fused_cpu_configs=[
        {"weight_decay": 0.1},
        {"weight_decay": 0.1, "decoupled_weight_decay": True},
    ],
    nonfinite_configs=[
        {"weight_decay": 0.1, "maximize": True},
        {"weight_decay": 0.1, "decoupled_weight_decay": True},
    ],
    compiled_codegen=True,
    differentiable=DifferentiableSpec(
        configs=tuple(
            {"lr": _t(0.3), "weight_decay": 0.1, "decoupled_weight_decay": decoupled}
            for decoupled in (False, True)
        ),
        host_scalars=_nadam_host_scalars,
    ),
)  # fmt: skip

RADAM = OptimEntry(
    name="RAdam",
    configs=[
        {},
        {"lr": 2e-3},
        {"eps": 1e-6},
        {"weight_decay": 0.1},
        {"weight_decay": 0.1, "decoupled_weight_decay": True},
        {"weight_decay": 0.1, "maximize": True},
        {"capturable": True},
        {"capturable": True, "weight_decay": 0.1},
        {"capturable": True, "weight_decay": 0.1, "decoupled_weight_decay": True},
        {"lr": torch.tensor(0.001), "capturable": True, "weight_decay": 0.1,
         "decoupled_weight_decay": True},
        # ours: maximize on the device path, and beta1 = 0 with a short rho_inf (19)
        {"betas": (0.0, 0.9), "eps": 1e-3, "maximize": True, "capturable": True},
    ],
    errors=[
        ({"lr": -1.0}, ValueError, "Invalid learning rate: -1.0"),
        ({"eps": -1e-8}, ValueError, "Invalid epsilon value"),
        ({"lr": 1e-2, "betas": (1.0, 0.0)}, ValueError, "Invalid beta parameter at index 0: 1.0"),
        ({"betas": (0.0, 1.0)}, ValueError, "Invalid beta parameter at index 1: 1.0"),
        ({"lr": 1e-2, "weight_decay": -1}, ValueError, "Invalid weight_decay value: -1"),
        ({"lr": torch.tensor([0.001, 0.001])}, ValueError, "Tensor lr must be 1-element"),
    ],
    # (rectified from step 6 on: see fused_cpu_steps)
    fused_cpu_configs=[
        {"betas": (0.0, 0.9), "weight_decay": 0.1, "maximize": True},
        {"weight_decay": 0.1, "decoupled_weight_decay": True},
    ],
    # 4 steps do not reach every form of the update: the rectified one starts at step 6
    fused_cpu_steps=7,
    nonfinite_configs=[
        {"weight_decay": 0.1, "maximize": True},
        {"weight_decay": 0.1, "decoupled_weight_decay": True},
    ],
    compiled_codegen=True,
    # the step after 3 is step 4 (rho_t 3.998: unrectified, r_t is NaN), after 9 step 10
    # (rho_t 9.98: rectified)
    differentiable=DifferentiableSpec(
        warmups=(3, 9),
        configs=tuple(
            {"lr": _t(0.3), "weight_decay": 0.1, "decoupled_weight_decay": decoupled}
            for decoupled in (False, True)
        ),
    ),
)  # fmt: skip


# torch's Adam configs (optim_inputs_func_adam; AdamW's are the same), the CUDA-only capturable
# ones included; ours add what they leave out.
_ADAM_CONFIGS: list[dict] = [
    {},
    {"lr": 0.01},
    {"weight_decay": 0.1},
    {"weight_decay": 0.1, "maximize": True},
    {"weight_decay": 0.1, "amsgrad": True},
    {"capturable": True},
    {"weight_decay": 0.1, "amsgrad": True, "capturable": True},
    {"lr": torch.tensor(0.001), "amsgrad": True, "capturable": True},
    {"lr": torch.tensor(0.001), "betas": (torch.tensor([[[0.9]]]), torch.tensor([[0.99]])),
     "amsgrad": True, "capturable": True},
    {"lr": torch.tensor(0.001), "betas": (torch.tensor(0.9), torch.tensor(0.99)),
     "amsgrad": False, "capturable": True},
]  # fmt: skip
_ADAM_ERRORS: list[tuple[dict, type[Exception], str]] = [
    ({"lr": -1.0}, ValueError, "Invalid learning rate: -1.0"),
    ({"eps": -1e-8}, ValueError, "Invalid epsilon value"),
    ({"lr": 1e-2, "betas": (1.0, 0.0)}, ValueError, "Invalid beta parameter at index 0: 1.0"),
    ({"betas": (0.0, 1.0)}, ValueError, "Invalid beta parameter at index 1: 1.0"),
    ({"lr": 1e-2, "weight_decay": -1}, ValueError, "Invalid weight_decay value: -1"),
    ({"lr": torch.tensor([0.001, 0.001])}, ValueError, "Tensor lr must be 1-element"),
    ({"lr": torch.tensor(0.001), "foreach": True}, ValueError,
     "lr as a Tensor is not supported for capturable=False and foreach=True"),
    ({"lr": 1e-2, "betas": (0.9, torch.tensor(0.99))}, ValueError,
     "betas must be either both floats or both Tensors"),
    ({"lr": 1e-2, "betas": (torch.tensor(0.9), 0.99)}, ValueError,
     "betas must be either both floats or both Tensors"),
    ({"lr": 1e-2, "betas": (torch.tensor(0.9), torch.tensor(0.99)), "foreach": True}, ValueError,
     r"betas\[0\] as a Tensor is not supported for capturable=False and foreach=True"),
    ({"fused": True, "differentiable": True}, RuntimeError,
     "`fused` does not support `differentiable`"),
    ({"fused": True, "foreach": True}, RuntimeError,
     "`fused` and `foreach` cannot be `True` together"),
]  # fmt: skip

ADAM = OptimEntry(
    name="Adam",
    configs=_ADAM_CONFIGS + [
        # ours: a tensor lr read on the host, with Adam's own decoupled decay; beta1 = 0 with
        # everything else on; the decoupled decay on the device path
        {"lr": torch.tensor(0.01), "weight_decay": 0.1, "decoupled_weight_decay": True},
        {"betas": (0.0, 0.5), "eps": 1e-3, "weight_decay": 0.1, "maximize": True, "amsgrad": True},
        {"weight_decay": 0.1, "decoupled_weight_decay": True, "maximize": True, "capturable": True},
    ],
    errors=_ADAM_ERRORS,
    amp_configs=[{}, {"weight_decay": 0.1, "amsgrad": True, "maximize": True}],
    fused_cpu_configs=[{}, {"amsgrad": True, "weight_decay": 0.1, "maximize": True}],
    nonfinite_configs=[
        {"weight_decay": 0.1, "amsgrad": True, "maximize": True},
        {"weight_decay": 0.1, "decoupled_weight_decay": True},
    ],
    compiled_codegen=True,
    # the device path (tensor lr and betas) and, as floats, the host path
    differentiable=DifferentiableSpec(
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
)  # fmt: skip

ADAMW = OptimEntry(
    name="AdamW",
    configs=_ADAM_CONFIGS + [
        # ours: as for Adam (AdamW's decay is always decoupled, 1e-2 by default)
        {"lr": torch.tensor(0.01)},
        {"betas": (0.0, 0.5), "eps": 1e-3, "weight_decay": 0.1, "maximize": True, "amsgrad": True},
        {"weight_decay": 0.1, "maximize": True, "capturable": True},
    ],
    errors=_ADAM_ERRORS,
    amp_configs=[{"lr": torch.tensor(0.01), "amsgrad": True}],
    fused_cpu_configs=[{"weight_decay": 0.1, "amsgrad": True}],
    nonfinite_configs=[{"amsgrad": True, "maximize": True}],
    differentiable=DifferentiableSpec(
        configs=(
            {"lr": _t(0.3), "betas": (_t(0.8), _t(0.9)), "weight_decay": 0.1},
            {"lr": _t(0.3), "betas": (_t(0.8), _t(0.9)), "weight_decay": 0.1, "amsgrad": True},
        )
    ),
)  # fmt: skip

# torch.optim's refusals for its own `fused` flag (SGD, Adagrad, Adam, AdamW), on any device
_FUSED_FLAG_ERRORS: list[tuple[dict, type[Exception], str]] = [
    ({"foreach": True, "fused": True}, RuntimeError,
     "`fused` and `foreach` cannot be `True` together"),
    ({"fused": True, "differentiable": True}, RuntimeError,
     "`fused` does not support `differentiable`"),
]  # fmt: skip

SGD = OptimEntry(
    name="SGD",
    configs=[
        {},
        {"lr": 1e-2},
        {"lr": torch.tensor(0.001)},
        {"weight_decay": 0.5},
        {"momentum": 0.9},
        {"weight_decay": 0.1, "maximize": True},
        {"momentum": 0.9, "dampening": 0.5},
        {"momentum": 0.9, "weight_decay": 0.1},
        {"momentum": 0.9, "nesterov": True, "weight_decay": 0.1},
        # ours: a tensor weight decay (torch 2.13 takes one), with momentum and a tensor lr
        {"lr": torch.tensor(0.01), "momentum": 0.5, "weight_decay": torch.tensor(0.1)},
    ],
    errors=[
        ({"lr": -1.0}, ValueError, "Invalid learning rate: -1.0"),
        ({"lr": 1e-2, "momentum": -0.5}, ValueError, "Invalid momentum value: -0.5"),
        ({"weight_decay": -0.5}, ValueError, "Invalid weight_decay value: -0.5"),
        ({"nesterov": True}, ValueError,
         "Nesterov momentum requires a momentum and zero dampening"),
        ({"momentum": 0.9, "dampening": 0.1, "nesterov": True}, ValueError,
         "Nesterov momentum requires a momentum and zero dampening"),
        ({"lr": torch.tensor([0.001, 0.001])}, ValueError, "Tensor lr must be 1-element"),
        *_FUSED_FLAG_ERRORS,
    ],
    # the last: plain momentum, for a skipped first step (its buffer is the first grad)
    amp_configs=[
        {"lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 0.1},
        {"lr": 0.1, "momentum": 0.9, "dampening": 0.5, "maximize": True},
        {"lr": 0.1, "weight_decay": 0.1},
        {"lr": 0.1, "momentum": 0.9},
    ],
    fused_cpu_configs=[{"momentum": 0.9, "nesterov": True, "weight_decay": 0.1}, {"lr": 0.05}],
    nonfinite_configs=[{"momentum": 0.9, "nesterov": True, "weight_decay": 0.1, "maximize": True}],
    # a first step (no momentum buffer yet: it starts as a detached copy of the grad, as torch's)
    # and a later one
    differentiable=DifferentiableSpec(
        warmups=(0, 1),
        configs=({"lr": _t(0.3), "weight_decay": _t(0.1), "momentum": 0.9, "nesterov": True},),
    ),
)  # fmt: skip

ADAGRAD = OptimEntry(
    name="Adagrad",
    configs=[
        {},
        {"weight_decay": 0.1},
        {"weight_decay": 0.1, "maximize": True},
        {"lr": 0.1},
        {"initial_accumulator_value": 0.1, "weight_decay": 0.1},
        {"lr": 0.1, "lr_decay": 0.5, "weight_decay": 0.1},
        {"lr": torch.tensor(0.001)},
        # ours: lr_decay with a tensor lr (read on the device by fused and compiled)
        {"lr": torch.tensor(0.1), "lr_decay": 0.5, "maximize": True},
    ],
    errors=[
        ({"lr": -1.0}, ValueError, "Invalid learning rate: -1.0"),
        ({"lr": 1e-2, "lr_decay": -0.5}, ValueError, "Invalid lr_decay value: -0.5"),
        ({"weight_decay": -0.5}, ValueError, "Invalid weight_decay value: -0.5"),
        ({"initial_accumulator_value": -1.0}, ValueError,
         "Invalid initial_accumulator_value value: -1.0"),
        ({"eps": -1e-10}, ValueError, "Invalid epsilon value"),
        ({"lr": torch.tensor([0.001, 0.001])}, ValueError, "Tensor lr must be 1-element"),
        *_FUSED_FLAG_ERRORS,
    ],
    amp_configs=[
        {"lr_decay": 0.5, "weight_decay": 0.1},
        {"lr": torch.tensor(0.05), "initial_accumulator_value": 0.1, "maximize": True},
    ],
    fused_cpu_configs=[{"lr_decay": 0.01, "weight_decay": 0.1, "maximize": True}],
    nonfinite_configs=[{"weight_decay": 0.1, "lr_decay": 0.01, "maximize": True}],
    differentiable=DifferentiableSpec(
        configs=({"lr": _t(0.3), "lr_decay": 0.1, "weight_decay": 0.1, "maximize": True},),
        torch_numbers=frozenset({"lr"}),
    ),
)  # fmt: skip


def _rmsprop_centered_root_exists(config: Config, state: Tensors) -> bool:
    if not config.get("centered", False):
        return True
    return bool((state["square_avg"] > state["grad_avg"] ** 2).all())


RMSPROP = OptimEntry(
    name="RMSprop",
    configs=[
        {},
        {"lr": 1e-3},
        {"weight_decay": 0.1},
        {"maximize": True},
        {"weight_decay": 0.1, "centered": True},
        {"maximize": True, "weight_decay": 0.1},
        # torch's CUDA-only ones (ours are capturable on CPU too)
        {"capturable": True},
        {"weight_decay": 0.1, "maximize": True, "capturable": True},
        {"lr": torch.tensor(0.001), "capturable": True},
        # ours: momentum without centering (the buffer in the grad_avg's place), a tensor lr
        {"momentum": 0.5, "lr": torch.tensor(0.01)},
        # torch's last two: second to last is the low-precision tests' widest case
        {"weight_decay": 0.1, "centered": True, "momentum": 0.1},
        {"weight_decay": 0.1, "centered": True, "momentum": 0.1, "maximize": True},
    ],
    errors=[
        ({"lr": -1.0}, ValueError, "Invalid learning rate: -1.0"),
        ({"eps": -1e-8}, ValueError, "Invalid epsilon value"),
        ({"lr": 1e-2, "momentum": -1.0}, ValueError, "Invalid momentum value: -1.0"),
        ({"weight_decay": -0.5}, ValueError, "Invalid weight_decay value: -0.5"),
        ({"alpha": -0.1}, ValueError, "Invalid alpha value: -0.1"),
        ({"lr": torch.tensor([0.001, 0.001])}, ValueError, "Tensor lr must be 1-element"),
    ],
    fused_cpu_configs=[
        {},
        {"centered": True, "weight_decay": 0.1, "maximize": True},
        {"momentum": 0.9, "weight_decay": 0.1},
        {"momentum": 0.5, "centered": True, "alpha": 0.9, "maximize": True},
    ],
    nonfinite_configs=[{"momentum": 0.9, "centered": True, "weight_decay": 0.1, "maximize": True}],
    # centered with momentum: every state tensor at once
    differentiable=DifferentiableSpec(
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
)  # fmt: skip

# torch's LBFGS configs (optim_inputs_func_lbfgs); ours add a short history (it fills, then
# shifts) with the line search, few iterations per step, a zero lr, and maximize (with and
# without the line search)
LBFGS = OptimEntry(
    name="LBFGS",
    configs=[
        {},
        {"lr": 0.01},
        {"lr": torch.tensor(0.001)},
        {"tolerance_grad": 1e-6},
        {"line_search_fn": "strong_wolfe"},
        {"history_size": 2, "max_iter": 6, "line_search_fn": "strong_wolfe"},
        {"history_size": 3, "max_iter": 5, "max_eval": 7, "lr": torch.tensor(0.5)},
        {"maximize": True},
        {"maximize": True, "history_size": 2, "max_iter": 6, "line_search_fn": "strong_wolfe"},
    ],
    ours_only=(),
    later_torch_flags=("maximize",),
    errors=[
        ({"lr": -1.0}, ValueError, "Invalid learning rate: -1.0"),
        ({"lr": torch.tensor([0.001, 0.001])}, ValueError, "Tensor lr must be 1-element"),
    ],
    side_by_side=lbfgs_parity,  # per backend: see tests/parity_lbfgs.py
    closure_step=True,
    one_group=True,
)

# torch's SparseAdam configs (optim_inputs_func_sparseadam); ours add betas and eps together.
# (Its refusals of sparse and complex params are about the params: tests/test_sparse_adam.py.)
SPARSE_ADAM = OptimEntry(
    name="SparseAdam",
    configs=[
        {},
        {"lr": 0.01},
        {"lr": torch.tensor(0.001)},
        {"maximize": True},
        {"betas": (0.5, 0.9), "eps": 1e-3, "lr": torch.tensor(0.05), "maximize": True},
    ],
    ours_only=(),
    errors=[
        ({"lr": -1.0}, ValueError, "Invalid learning rate: -1.0"),
        ({"lr": 0.0}, ValueError, "Invalid learning rate: 0.0"),
        ({"eps": 0.0}, ValueError, "Invalid epsilon value: 0.0"),
        ({"lr": 1e-2, "betas": (1.0, 0.0)}, ValueError, "Invalid beta parameter at index 0: 1.0"),
        ({"betas": (0.0, 1.0)}, ValueError, "Invalid beta parameter at index 1: 1.0"),
        ({"lr": torch.tensor([0.001, 0.001])}, ValueError, "Tensor lr must be 1-element"),
    ],
    side_by_side=sparse_adam_side_by_side,
    sparse_grads=True,
)

# torch's Adafactor configs (optim_inputs_func_adafactor) and errors (optim_error_inputs_func_
# adafactor; its step-time refusal of complex params is in tests/test_adafactor.py)
ADAFACTOR = OptimEntry(
    name="Adafactor",
    configs=[
        {},
        {"weight_decay": 0.1, "lr": 0.01},
        {"weight_decay": 0.1, "maximize": True},
        {"beta2_decay": -1.0},
        {"d": 1.5},
        # ours: a tensor lr above 1/sqrt(t) for the first steps (read on the device by compiled);
        # an explicit eps1 large enough that both clamps bite, with clipping at d = 1
        {"lr": torch.tensor(0.5), "weight_decay": 0.1, "maximize": True},
        {"eps": (1e-2, 1e-2), "beta2_decay": -0.5, "d": 1.0},
    ],
    errors=[
        ({"lr": torch.tensor([0.001, 0.001])}, ValueError, "Tensor lr must be 1-element"),
        ({"eps": (-1e-30, 1e-3)}, ValueError, "epsilon1 should be >= 0"),
        ({"d": 0.0}, ValueError, "Clipping threshold d should be >= 1"),
        ({"beta2_decay": 0.8}, ValueError, "beta2_decay should be <= 0"),
        # ours: the other checks of torch's constructor
        ({"lr": -1.0}, ValueError, "Learning rate should be >= 0 but is: -1.0"),
        ({"eps": (None, -1.0)}, ValueError, "epsilon2 should be >= 0"),
        ({"weight_decay": -0.5}, ValueError, "weight_decay should be >= 0 but is: -0.5"),
    ],
    complex_params=False,
    empty_params=False,
)


def _takes_adjust_lr_fn(name: str) -> bool:
    try:
        torch.optim.Muon([torch.zeros(2, 2, requires_grad=True)], adjust_lr_fn=name)
    except ValueError:
        return False
    return True


_MUON_SPECTRAL = _takes_adjust_lr_fn("spectral_unclamped")

# torch's Muon configs (optim_inputs_func_muon); ours add plain momentum, the lr adjustments,
# and everything at once with a tensor lr. (Its refusals of params that are not 2-D or real are
# about the params: tests/test_muon.py.) Second to last is the low-precision tests' widest case:
# nesterov stays on there, see test_muon.py for bf16 without it.
MUON = OptimEntry(
    name="Muon",
    configs=[
        {},
        {"lr": 0.01},
        {"lr": torch.tensor(0.001)},
        {"weight_decay": 0.2},
        {"momentum": 0.8},
        {"ns_steps": 6},
        {"ns_coefficients": (3.4, -4.7, 2.0)},
        {"nesterov": False, "lr": 0.02},
        {"adjust_lr_fn": "original", "lr": 0.02},
        # from torch 2.14 (before, tests/test_muon.py checks it without torch)
        *([{"adjust_lr_fn": "spectral_unclamped", "weight_decay": 0.05}] if _MUON_SPECTRAL else []),
        {"lr": torch.tensor(0.01), "momentum": 0.5, "nesterov": False, "weight_decay": 0.05,
         "adjust_lr_fn": "match_rms_adamw", "ns_steps": 3, "eps": 1e-3},
        {"adjust_lr_fn": "match_rms_adamw", "momentum": 0.9, "weight_decay": 0.05},
        {"lr": 0.05, "eps": 0.5},
    ],
    ours_only=(),
    errors=[
        ({"lr": -1.0}, ValueError, "Learning rate should be >= 0 but is: -1.0"),
        ({"momentum": -0.5}, ValueError, "momentum should be >= 0 but is: -0.5"),
        ({"weight_decay": -0.5}, ValueError, "weight decay should be >= 0 but is: -0.5"),
        ({"adjust_lr_fn": "arbitrary"}, ValueError,
         "Adjust learning rate function arbitrary is not supported"),
        ({"lr": torch.tensor([0.001, 0.001])}, ValueError, "Tensor lr must be 1-element"),
    ],
    complex_params=False,
    matrices_only=True,
)  # fmt: skip

LION = OptimEntry(
    name="Lion",
    reference=LionReference,
    configs=[
        {},
        {"lr": 1e-2},
        {"lr": 1e-2, "weight_decay": 0.1},
        {"lr": 1e-2, "maximize": True},
        {"lr": 1e-2, "betas": (0.5, 0.9), "weight_decay": 0.5, "maximize": True},
        {"lr": 1e-2, "betas": (0.0, 0.0)},  # the sign of the gradient itself; m = g
        {"lr": torch.tensor(0.01), "weight_decay": 0.1},
        {"lr": 1e-2, "weight_decay": 0.1, "capturable": True},
    ],
    errors=[
        ({"lr": -1.0}, ValueError, "Invalid learning rate: -1.0"),
        ({"betas": (1.0, 0.99)}, ValueError, "Invalid beta parameter at index 0: 1.0"),
        ({"betas": (0.9, -0.1)}, ValueError, "Invalid beta parameter at index 1"),
        ({"weight_decay": -0.5}, ValueError, "Invalid weight_decay value: -0.5"),
    ],
    fused_cpu_configs=[{"lr": 1e-2, "weight_decay": 0.1, "maximize": True}, {"lr": 1e-3}],
    nonfinite_configs=[{"lr": 1e-2, "weight_decay": 0.1, "maximize": True}],
)  # fmt: skip

TABLE: list[OptimEntry] = [
    ADAMAX, ADAM, ADAMW, ADADELTA, ASGD, RPROP, NADAM, RADAM, SGD, ADAGRAD, RMSPROP,
    LBFGS, SPARSE_ADAM, ADAFACTOR, MUON, LION,
]  # fmt: skip
