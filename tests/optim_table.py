"""One table of optimizers and the configurations their tests run.

Each entry pairs our class with torch.optim's and lists the flag combinations torch's own optimizer
tests use for that class (its OptimizerInfo inputs, the CUDA-only capturable ones included: ours
are capturable on CPU too, and are compared with torch's non-capturable run). A new optimizer adds
one entry here; the parity and contract tests pick it up.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from workbench.optim import OPTIMIZERS


@dataclass(frozen=True)
class OptimEntry:
    name: str
    configs: list[dict[str, Any]]
    # kwargs that only ours understands, or that torch.optim refuses on CPU
    ours_only: tuple[str, ...] = ("capturable",)
    # a bad-input table: (kwargs, error type, message regex)
    errors: list[tuple[dict[str, Any], type[Exception], str]] = field(default_factory=list)

    @property
    def ours(self) -> type[torch.optim.Optimizer]:
        return OPTIMIZERS[self.name]

    @property
    def torch_cls(self) -> type[torch.optim.Optimizer]:
        return getattr(torch.optim, self.name)

    def torch_kwargs(self, config: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in config.items() if k not in self.ours_only}


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
)

TABLE: list[OptimEntry] = [ADAMAX]
