"""The workbench's own implementations of the torch.optim family."""

from __future__ import annotations

from ._backends import BACKENDS
from ._optimizer import WorkbenchOptimizer
from .adadelta import Adadelta
from .adagrad import Adagrad
from .adam import Adam
from .adamax import Adamax
from .adamw import AdamW
from .asgd import ASGD
from .nadam import NAdam
from .radam import RAdam
from .rmsprop import RMSprop
from .rprop import Rprop
from .sgd import SGD

OPTIMIZERS: dict[str, type[WorkbenchOptimizer]] = {
    "Adamax": Adamax,
    "Adam": Adam,
    "AdamW": AdamW,
    "Adadelta": Adadelta,
    "ASGD": ASGD,
    "Rprop": Rprop,
    "NAdam": NAdam,
    "RAdam": RAdam,
    "SGD": SGD,
    "Adagrad": Adagrad,
    "RMSprop": RMSprop,
}

__all__ = [
    "ASGD",
    "BACKENDS",
    "OPTIMIZERS",
    "Adadelta",
    "Adagrad",
    "Adam",
    "AdamW",
    "Adamax",
    "NAdam",
    "RAdam",
    "RMSprop",
    "Rprop",
    "SGD",
    "WorkbenchOptimizer",
]
