"""Who can build an optimizer for a case: ours, torch.optim's, a peer library's, or a user's.

An implementation is named in a suite as `workbench`, `torch`, `heavyball`, `pytorch_optimizer`,
or `module:factory`, where `factory(params, **flags)` returns a torch.optim.Optimizer.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from workbench.optim import OPTIMIZERS

from .cases import Case


class ImplementationError(Exception):
    """The case cannot be built (a peer not installed, an unknown factory): an error row."""


_TORCH_BACKEND_FLAGS = {
    "forloop": {"foreach": False},
    "foreach": {"foreach": True},
    "fused": {"fused": True},
}


def make_optimizer(case: Case, params: list[Tensor]) -> torch.optim.Optimizer:
    flags: dict[str, Any] = dict(case.flags)
    impl = case.implementation
    if impl == "workbench":
        return OPTIMIZERS[case.optimizer](params, backend=case.backend, **flags)
    if impl == "torch":
        cls = getattr(torch.optim, case.optimizer)
        return cls(params, **_TORCH_BACKEND_FLAGS[case.backend], **flags)
    if impl in ("heavyball", "pytorch_optimizer"):
        module = _import(impl)
        cls = getattr(module, case.optimizer, None)
        if cls is None:
            raise ImplementationError(f"{impl} has no optimizer named {case.optimizer}")
        return cls(params, **flags)
    return _factory(impl)(params, **flags)


def _import(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except ImportError as e:
        raise ImplementationError(f"implementation {name!r} is not installed ({e})") from None


def _factory(spec: str) -> Callable[..., torch.optim.Optimizer]:
    module_name, _, attr = spec.partition(":")
    factory = getattr(_import(module_name), attr, None)
    if not callable(factory):
        raise ImplementationError(f"{spec!r}: {module_name} has no callable {attr!r}")
    return factory
