"""The workbench's own implementations of the torch.optim family."""

from __future__ import annotations

from ._backends import BACKENDS
from ._optimizer import WorkbenchOptimizer
from .adadelta import Adadelta
from .adafactor import Adafactor
from .adagrad import Adagrad
from .adam import Adam
from .adamax import Adamax
from .adamw import AdamW
from .asgd import ASGD
from .lbfgs import LBFGS
from .lion import Lion
from .muon import Muon
from .nadam import NAdam
from .radam import RAdam
from .rmsprop import RMSprop
from .rprop import Rprop
from .sgd import SGD
from .sparse_adam import SparseAdam

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
    "Muon": Muon,
    "Adagrad": Adagrad,
    "RMSprop": RMSprop,
    "Adafactor": Adafactor,
    "LBFGS": LBFGS,
    "SparseAdam": SparseAdam,
    "Lion": Lion,
}

__all__ = [
    "ASGD",
    "BACKENDS",
    "LBFGS",
    "Lion",
    "OPTIMIZERS",
    "Adadelta",
    "Adafactor",
    "Adagrad",
    "Adam",
    "AdamW",
    "Adamax",
    "Muon",
    "NAdam",
    "RAdam",
    "RMSprop",
    "Rprop",
    "SGD",
    "SparseAdam",
    "WorkbenchOptimizer",
]
