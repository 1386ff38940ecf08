"""Who can build an optimizer for a case: ours, torch.optim's, a peer library's, or a user's.

An implementation is named in a suite as `workbench`, `torch`, `heavyball`, `pytorch_optimizer`,
or `module:factory`, where `factory(params, **flags)` returns a torch.optim.Optimizer.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from workbench.optim import OPTIMIZERS

from .cases import Case


class ImplementationError(Exception):
    """The case cannot be built (an unknown factory, a flag the peer lacks): an error row."""

    status = "error"


class NotInstalled(ImplementationError):
    """An optional peer that this machine does not have: a skipped row, not a failure."""

    status = "skipped"


# Peers that name an optimizer differently from torch.optim.
_PEER_NAMES = {"pytorch_optimizer": {"Adamax": "AdaMax"}}


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
        backend_flags = _TORCH_BACKEND_FLAGS[case.backend]
        if case.backend == "forloop" and "foreach" not in inspect.signature(cls).parameters:
            backend_flags = {}  # Muon takes no foreach: it runs per tensor only
        return cls(params, **backend_flags, **flags)
    if impl in ("heavyball", "pytorch_optimizer"):
        module = _import(impl, optional=True)
        name = _PEER_NAMES.get(impl, {}).get(case.optimizer, case.optimizer)
        cls = getattr(module, name, None)
        if cls is None:
            raise ImplementationError(f"{impl} has no optimizer named {name}")
        _check_flags(f"{impl}.{name}", cls, flags)
        return cls(params, **flags)
    return _factory(impl)(params, **flags)


def _check_flags(where: str, cls: Any, flags: dict[str, Any]) -> None:
    """A peer silently swallowing a flag (via **kwargs) would time a different update."""
    accepted = inspect.signature(cls).parameters
    unknown = sorted(set(flags) - set(accepted))
    if unknown:
        raise ImplementationError(f"{where} does not take {unknown}: not the same update")


def _import(name: str, *, optional: bool) -> Any:
    try:
        return importlib.import_module(name)
    except ImportError as e:
        error = NotInstalled if optional else ImplementationError
        raise error(f"implementation {name!r} is not installed ({e})") from None


def _factory(spec: str) -> Callable[..., torch.optim.Optimizer]:
    module_name, _, attr = spec.partition(":")
    factory = getattr(_import(module_name, optional=False), attr, None)
    if not callable(factory):
        raise ImplementationError(f"{spec!r}: {module_name} has no callable {attr!r}")
    return factory
