"""The workbench's own implementations of the torch.optim family."""

from __future__ import annotations

from ._backends import BACKENDS
from ._optimizer import WorkbenchOptimizer
from .adamax import Adamax

OPTIMIZERS: dict[str, type[WorkbenchOptimizer]] = {
    "Adamax": Adamax,
}

__all__ = ["BACKENDS", "OPTIMIZERS", "Adamax", "WorkbenchOptimizer"]
