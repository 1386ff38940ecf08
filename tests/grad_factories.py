"""Optimizer factories (``implementation = "tests.grad_factories:<name>"``) that misbehave the way
real ones do, for the harness's checks of what it timed."""

from __future__ import annotations

import os
import time
from typing import Any

import torch


class _DroppingSGD(torch.optim.SGD):
    """SGD that sets every grad to None after its step, as heavyball's optimizers do."""

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = super().step(closure)
        for group in self.param_groups:
            for p in group["params"]:
                p.grad = None
        return loss


def dropping_sgd(params: Any, **flags: Any) -> torch.optim.Optimizer:
    return _DroppingSGD(params, lr=1e-3, **flags)


class _NoOp(torch.optim.Optimizer):
    """A step that changes nothing: the fastest optimizer there is, and a wrong one."""

    def __init__(self, params: Any) -> None:
        super().__init__(params, {})

    def step(self, closure: Any = None) -> Any:
        return None


def no_op(params: Any, **flags: Any) -> torch.optim.Optimizer:
    return _NoOp(params)


# "<numel>:<factor>": the sleepy step of the case with that many params sleeps factor x longer,
# read when it is built: the same case, genuinely slower, the others untouched
SLOWDOWN_ENV = "WORKBENCH_TEST_SLOWDOWN"


class _SleepySGD(torch.optim.SGD):
    """SGD whose step also sleeps SLEEP_S (x the slowdown): a genuine, controllable slowdown that
    contention for the CPU barely moves (a sleep waits, it does not compute)."""

    SLEEP_S = 2e-3

    def __init__(self, params: Any, **flags: Any) -> None:
        super().__init__(params, lr=1e-3, **flags)
        numel = sum(p.numel() for group in self.param_groups for p in group["params"])
        target, _, factor = os.environ.get(SLOWDOWN_ENV, "").partition(":")
        slower = target.isdigit() and int(target) == numel
        self.sleep_s = self.SLEEP_S * (float(factor) if slower else 1.0)

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = super().step(closure)
        time.sleep(self.sleep_s)
        return loss


def sleepy_sgd(params: Any, **flags: Any) -> torch.optim.Optimizer:
    return _SleepySGD(params, **flags)


# how many times failing_sgd was built in this process (tests/test_visits.py)
BUILT = {"failing_sgd": 0}


class _FailingSGD(torch.optim.SGD):
    def step(self, closure: Any = None) -> Any:
        raise RuntimeError("this step always fails")


def failing_sgd(params: Any, **flags: Any) -> torch.optim.Optimizer:
    """An optimizer whose step raises: its row is an error, in every visit."""
    BUILT["failing_sgd"] += 1
    return _FailingSGD(params, lr=0.01)
