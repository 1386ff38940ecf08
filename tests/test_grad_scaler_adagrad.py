"""Adagrad's fused backend driven by torch.amp.GradScaler: the kernel unscales, found_inf skips
the step, its counter included.

Both CPU implementations of the fused step run: the C kernel and the Triton one under the
interpreter (tests/conftest.py). GradScaler's scales are powers of two: unscaling is exact.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tests.conftest import FUSED_CPU_PATHS
from tests.optim_table import config_id
from workbench.optim import Adagrad

CONFIGS = [
    {"lr_decay": 0.5, "weight_decay": 0.1},
    {"lr": torch.tensor(0.05), "initial_accumulator_value": 0.1, "maximize": True},
]


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))


@pytest.mark.parametrize("path", FUSED_CPU_PATHS)
@pytest.mark.parametrize("config", CONFIGS, ids=config_id)
def test_grad_scaler_drives_fused_adagrad(config: dict, path: str) -> None:
    ours_model, ref_model = _model(), _model()
    ours = Adagrad(ours_model.parameters(), fused=True, **config)
    ref = torch.optim.Adagrad(ref_model.parameters(), foreach=False, **config)
    assert ours._step_supports_amp_scaling
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    x = torch.randn(16, 4, generator=torch.Generator().manual_seed(1))
    for step in range(4):
        ours.zero_grad()
        ref.zero_grad()
        scaler.scale(ours_model(x).pow(2).mean()).backward()
        if step == 1:
            ours_model[2].bias.grad[1] = float("inf")
            params = [p.detach().clone() for p in ours_model.parameters()]
            sums = [ours.state[p]["sum"].clone() for p in ours_model.parameters()]
            scaler.step(ours)
            scaler.update()
            for p, before, old_sum in zip(ours_model.parameters(), params, sums):
                assert torch.equal(p, before)
                assert torch.equal(ours.state[p]["sum"], old_sum)
                assert ours.state[p]["step"].item() == 1  # the skipped step does not count
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
                torch.testing.assert_close(ours.state[p][key].cpu(), value, check_dtype=False)
