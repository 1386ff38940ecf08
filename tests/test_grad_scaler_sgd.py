"""SGD's fused backend driven by torch.amp.GradScaler: the kernel unscales, found_inf skips.

Both CPU implementations of the fused step run: the C kernel and the Triton one under the
interpreter (tests/conftest.py). GradScaler's scales are powers of two: unscaling is exact.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tests.conftest import FUSED_CPU_PATHS
from tests.optim_table import config_id
from workbench.optim import SGD

CONFIGS = [
    {"momentum": 0.9, "nesterov": True, "weight_decay": 0.1},
    {"momentum": 0.9, "dampening": 0.5, "maximize": True},
    {"weight_decay": 0.1},
]


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))


def _snapshot(opt: torch.optim.Optimizer) -> list[torch.Tensor]:
    tensors = [p for group in opt.param_groups for p in group["params"]]
    return [
        t.detach().clone() for t in tensors + [v for s in opt.state.values() for v in s.values()]
    ]


@pytest.mark.parametrize("path", FUSED_CPU_PATHS)
@pytest.mark.parametrize("config", CONFIGS, ids=config_id)
def test_grad_scaler_drives_fused_sgd(config: dict, path: str) -> None:
    ours_model, ref_model = _model(), _model()
    ours = SGD(ours_model.parameters(), lr=0.1, fused=True, **config)
    ref = torch.optim.SGD(ref_model.parameters(), lr=0.1, foreach=False, **config)
    assert ours._step_supports_amp_scaling
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    x = torch.randn(16, 4, generator=torch.Generator().manual_seed(1))
    for step in range(4):
        ours.zero_grad()
        ref.zero_grad()
        scaler.scale(ours_model(x).pow(2).mean()).backward()
        if step == 2:
            ours_model[0].weight.grad[0, 0] = float("inf")
            before = _snapshot(ours)
            scaler.step(ours)
            scaler.update()
            for old, new in zip(before, _snapshot(ours)):  # params and buffers untouched
                assert torch.equal(old, new)
            assert scaler.get_scale() == 2.0**9
            continue
        ref_model(x).pow(2).mean().backward()
        scaler.step(ours)
        scaler.update()
        ref.step()
        for p, q in zip(ours_model.parameters(), ref_model.parameters()):
            torch.testing.assert_close(p.grad, q.grad)  # unscaled in place
            torch.testing.assert_close(p, q)
            for key, value in ref.state[q].items():
                torch.testing.assert_close(ours.state[p][key], value)


@pytest.mark.parametrize("path", FUSED_CPU_PATHS)
def test_skipped_first_step_leaves_no_momentum_buffer(path: str) -> None:
    """The buffer is the first step's gradient: a first step GradScaler skips must not create it
    (torch's fused SGD leaves an uninitialized one behind)."""
    model, ref_model = _model(), _model()
    ours = SGD(model.parameters(), lr=0.1, momentum=0.9, fused=True)
    ref = torch.optim.SGD(ref_model.parameters(), lr=0.1, momentum=0.9, foreach=False)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**4)
    x = torch.randn(16, 4, generator=torch.Generator().manual_seed(1))
    scaler.scale(model(x).pow(2).mean()).backward()
    model[2].bias.grad[0] = float("nan")
    scaler.step(ours)
    scaler.update()
    assert all(len(s) == 0 for s in ours.state.values())
    ours.zero_grad()
    scaler.scale(model(x).pow(2).mean()).backward()
    scaler.step(ours)
    ref_model(x).pow(2).mean().backward()
    ref.step()
    for p, q in zip(model.parameters(), ref_model.parameters()):
        torch.testing.assert_close(p, q)
        torch.testing.assert_close(
            ours.state[p]["momentum_buffer"], ref.state[q]["momentum_buffer"]
        )
