"""Adam's and AdamW's fused backend driven by torch.amp.GradScaler: the kernel unscales the grads
in place, and found_inf skips the whole step, its counter included.

Both CPU implementations of the fused step run: the C kernel and the Triton one under the
interpreter (tests/conftest.py). GradScaler's scales are powers of two: unscaling is exact, so
the grads equal the reference's bit for bit.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tests.conftest import FUSED_CPU_PATHS
from tests.optim_table import config_id
from workbench.optim import Adam, AdamW

CASES = [
    pytest.param(cls, config, id=f"{cls.__name__}-{config_id(config)}")
    for cls, config in [
        (Adam, {}),
        (Adam, {"weight_decay": 0.1, "amsgrad": True, "maximize": True}),
        (AdamW, {"lr": torch.tensor(0.01), "amsgrad": True}),
    ]
]


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))


def _state(opt: torch.optim.Optimizer, p: torch.Tensor) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in opt.state[p].items()}


@pytest.mark.parametrize("path", FUSED_CPU_PATHS)
@pytest.mark.parametrize(("cls", "config"), CASES)
def test_grad_scaler_drives_fused_adam(cls: type[Adam], config: dict, path: str) -> None:
    ours_model, ref_model = _model(), _model()
    ours = cls(ours_model.parameters(), fused=True, **config)
    ref = getattr(torch.optim, cls.__name__)(ref_model.parameters(), foreach=False, **config)
    assert ours._step_supports_amp_scaling
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    x = torch.randn(16, 4, generator=torch.Generator().manual_seed(1))
    for step in range(4):
        ours.zero_grad()
        scaler.scale(ours_model(x).pow(2).mean()).backward()
        if step == 2:
            ours_model[0].weight.grad[1, 2] = float("inf")
            params = [p.detach().clone() for p in ours_model.parameters()]
            states = [_state(ours, p) for p in ours_model.parameters()]
            scaler.step(ours)
            scaler.update()
            for p, before, state in zip(ours_model.parameters(), params, states):
                assert torch.equal(p, before)
                after = _state(ours, p)
                assert set(after) == set(state)
                assert all(torch.equal(after[k], v) for k, v in state.items())
                assert after["step"].item() == 2  # the skipped step does not count
            assert scaler.get_scale() == 2.0**9
            continue
        # the reference steps on the same gradients, unscaled (exactly: the scale is 2^k)
        scale = scaler.get_scale()
        for p, q in zip(ours_model.parameters(), ref_model.parameters()):
            q.grad = p.grad / scale
        scaler.step(ours)
        scaler.update()
        ref.step()
        for p, q in zip(ours_model.parameters(), ref_model.parameters()):
            torch.testing.assert_close(p.grad, q.grad, rtol=0, atol=0)  # unscaled in place
            torch.testing.assert_close(p, q)
            for key, value in ref.state[q].items():
                torch.testing.assert_close(ours.state[p][key].cpu(), value, check_dtype=False)
