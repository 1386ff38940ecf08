"""UpdateSpec: what an optimizer declares once about its update, and what follows from it.

The update functions of every backend take parallel tensor lists in one order: param, grad, the
param-shaped state tensors (`state`), then the per-param 0-dim state (`scalars`, the step count
first). The spec names them, and the fused kernels' inputs: the float hyperparameters in the
order the kernels receive them (`hyper`) and the integer flags (`flags`). From those names come:

- the C kernel's indices (`c_defines`): each kernel is compiled with ``-DWB_ROW_<ROLE>=i``,
  ``-DWB_H_<HYPER>=i`` and ``-DWB_F_<FLAG>=i``, so its source reads ``hyper[WB_H_LR]``, never a
  position written by hand on two sides of the ABI;
- the positional lists the C launch passes (`c_hyper`, `c_flags`);
- the minimal bytes one step moves (`reads`, `writes`: param-sized tensors), hence the achieved
  bandwidth the harness reports;
- the state_dict keys: ``step`` (when the spec has it) and `state`;
- the optimizer class's boilerplate (see WorkbenchOptimizer): its backends and update functions
  (`forloop`, `foreach`, and the fused one built from the spec), the keywords its update takes
  from a param group (`group_keywords`), the state a param starts with (`enabled_state`) and the
  bytes a step moves under given flags (`moved`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

# What every backend's update is: tensor lists, then keyword-only hyperparameters.
UpdateFn = Callable[..., None]

# A hyperparameter the kernels take that the update's keywords do not hold as such: computed from
# them (a decoupled weight decay's factor 1 - lr * weight_decay, rounded as the forloop rounds it).
Derived = Callable[[Mapping[str, Any]], float]

# Whether an optional state tensor is kept, from a param group, or from the constructor keywords
# `tensors_moved` is given (which may leave out those at their defaults: read them with .get).
Condition = Callable[[Mapping[str, Any]], bool]

# Keywords of the update that no param group holds under their name: the base class passes
# `maximize` with capturable and differentiable, torch.amp.GradScaler gives `grad_scale`, and the
# fused backend sets `first_step` (lazy state).
_SUPPLIED = frozenset({"maximize", "grad_scale", "first_step"})


def decoupled_decay_factor(hyper: Mapping[str, Any]) -> float:
    """1 - lr * weight_decay, the factor of a decoupled weight decay, as the forloop backend and
    torch.optim compute it: in lr's dtype when lr is a tensor (an fp32 lr rounds it to fp32)."""
    return float(1 - hyper["lr"] * hyper["weight_decay"])


@dataclass(frozen=True)
class UpdateSpec:
    """One optimizer's update, declared once (see the module docstring).

    kernel:   the fused kernels' name: ``_kernels/<kernel>.py`` defines ``<kernel>_fused_step``
              (Triton), ``_kernels/cpu/<kernel>.c`` the C one; None without a fused backend.
    forloop / foreach: the update functions of those backends (the class's fused one is
              ``fused.update(spec)``, its compiled one the compiled forloop).
    state:    param-shaped state tensors, in the update functions' list order.
    optional: those of them that a flag turns on (amsgrad's max_exp_avg_sq), each with the
              condition on the group's settings: absent from the state and an empty list to the
              update otherwise, and read and written once more per step when on.
    lazy:     those of them the update creates at a param's first step, from that step's data
              (SGD's momentum buffer): None in their list until then. The fused backend
              allocates them and calls the kernel with ``first_step`` true for those params.
    scalars:  per-param 0-dim state lists after them, ``step`` last where there is one (the base
              class appends the step list last); the C kernel advances the step.
    hyper:    the kernels' float hyperparameters, in ABI order: update keywords, or `derived`.
    flags:    the kernels' integer flags (bools), in ABI order: update keywords, or `derived`.
    triton_scalars: the scalar lists the Triton kernel reads (the step is advanced before it
              runs, by the fused backend); the others are not passed to it.
    triton_counts_steps: the Triton step advances the step itself (a scalar kernel of its own,
              with the product of momentum coefficients, in one launch).
    triton_finish: work the Triton path does after its launch, given the scalar lists by name
              and the update's keywords (ASGD's new eta and mu: a program cannot replace values
              that other programs of the same tensor may not have read yet).
    amp:      the fused kernels take torch.amp.GradScaler's grad_scale / found_inf, as torch's
              fused Adam, AdamW, SGD and Adagrad do: they unscale the grads (and write them back
              unscaled), and a step with an inf found is skipped and not counted. The C kernel
              gets the scale as hyperparameter ``grad_scale`` (0: none).
    reads / writes: param-sized tensors one step reads and writes at least.
    """

    kernel: str | None
    state: tuple[str, ...]
    reads: int
    writes: int
    forloop: UpdateFn | None = None
    foreach: UpdateFn | None = None
    scalars: tuple[str, ...] = ("step",)
    optional: Mapping[str, Condition] = field(default_factory=dict)
    lazy: tuple[str, ...] = ()
    hyper: tuple[str, ...] = ()
    flags: tuple[str, ...] = ("maximize",)
    derived: Mapping[str, Derived] = field(default_factory=dict)
    triton_scalars: tuple[str, ...] = ("step",)
    triton_counts_steps: bool = False
    triton_finish: Callable[[Mapping[str, list[Any]], Mapping[str, Any]], None] | None = None
    amp: bool = False

    def __post_init__(self) -> None:
        if "step" in self.scalars and self.scalars[-1] != "step":
            raise ValueError(f"UpdateSpec({self.kernel}): 'step' must be the last scalar list")
        if not set(self.optional) <= set(self.state):
            raise ValueError(f"UpdateSpec({self.kernel}): optional state must be in `state`")

    @property
    def roles(self) -> tuple[str, ...]:
        """The element-wise tensor lists, in order: param, grad, state."""
        return ("param", "grad", *self.state)

    @property
    def has_step(self) -> bool:
        return "step" in self.scalars

    @property
    def state_names(self) -> tuple[str, ...]:
        """Per-param state besides ``step``, in list order: the param-shaped, then 0-dim."""
        return self.state + tuple(name for name in self.scalars if name != "step")

    @property
    def group_keywords(self) -> tuple[str, ...]:
        """The update's keywords that come from the param group (`_hyperparameters`): the
        hyperparameters and flags the kernels take, but those derived from others or supplied
        by the step itself."""
        return tuple(
            name
            for name in (*self.hyper, *self.flags)
            if name not in self.derived and name not in _SUPPLIED
        )

    def enabled_state(self, values: Mapping[str, Any]) -> tuple[str, ...]:
        """The param-shaped state kept under these settings (a group, or constructor keywords)."""
        return tuple(
            name for name in self.state if name not in self.optional or self.optional[name](values)
        )

    def moved(self, values: Mapping[str, Any]) -> tuple[int, int]:
        """(param-sized tensors read, written) by one step under these settings: each optional
        buffer that is on is read and written once more."""
        extra = sum(1 for condition in self.optional.values() if condition(values))
        return self.reads + extra, self.writes + extra

    def c_defines(self) -> tuple[str, ...]:
        """The C kernel's names for its table rows, hyperparameters and flags, as -D options.

        Rows: the element roles, then the scalar rows, then `WB_ROWS` (where the numels start).
        Flags: the spec's, then one dtype code per scalar row (`WB_F_<ROW>_DTYPE`), as
        `cpu.launch` appends them."""
        rows = [*self.roles, *self.scalars]
        flags = [*self.flags, *(f"{row}_dtype" for row in self.scalars)]
        defines = [f"WB_ROW_{name.upper()}={i}" for i, name in enumerate(rows)]
        defines.append(f"WB_ROWS={len(rows)}")
        defines += [f"WB_H_{name.upper()}={i}" for i, name in enumerate(self.hyper)]
        defines += [f"WB_F_{name.upper()}={i}" for i, name in enumerate(flags)]
        return tuple(defines)

    def c_hyper(self, values: Mapping[str, Any]) -> list[float]:
        """The float hyperparameters in ABI order, from the update's keywords."""
        return [
            float(self.derived[name](values)) if name in self.derived else float(values[name])
            for name in self.hyper
        ]

    def c_flags(self, values: Mapping[str, Any]) -> list[int]:
        """The integer flags in ABI order, from the update's keywords (or `derived`)."""
        return [
            int(bool(self.derived[name](values) if name in self.derived else values[name]))
            for name in self.flags
        ]
