"""Reference implementations for the optimizers torch.optim lacks, written from their papers.

The table (tests/optim_table.py) compares ours with torch.optim's class of the same name; where
torch has none, an entry names one of these instead. Each follows its published algorithm in the
plainest form, one tensor at a time, with no backend of its own: it is what the forloop is checked
against, so it shares no code with workbench.optim. Flags torch.optim gives every optimizer
(maximize, differentiable) are taken as torch.optim takes them; `foreach` and `capturable` are
accepted and kept in the groups (so state_dicts look like torch.optim's) but change nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch


class LionReference(torch.optim.Optimizer):
    """Lion, Algorithm 2 of Chen et al., "Symbolic Discovery of Optimization Algorithms" (2023):

        c = beta1 * m + (1 - beta1) * g
        theta = theta * (1 - lr * weight_decay) - lr * sign(c)
        m = beta2 * m + (1 - beta2) * g

    with the defaults of the paper's reference code (lr 1e-4, betas (0.9, 0.99), no decay)."""

    def __init__(
        self,
        params: Iterable[Any],
        lr: float | torch.Tensor = 1e-4,
        betas: tuple[float, float] = (0.9, 0.99),
        weight_decay: float = 0.0,
        *,
        foreach: bool | None = None,
        maximize: bool = False,
        capturable: bool = False,
        differentiable: bool = False,
    ) -> None:
        if not lr >= 0.0:
            raise ValueError(f"Invalid learning rate: {lr}")
        for i, beta in enumerate(betas):
            if not 0.0 <= beta < 1.0:
                raise ValueError(f"Invalid beta parameter at index {i}: {beta}")
        if not weight_decay >= 0.0:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        # foreach and capturable are kept, as torch.optim keeps them in every group, and do
        # nothing: this is one plain per-tensor implementation
        defaults = {"lr": lr, "betas": betas, "weight_decay": weight_decay, "foreach": foreach,
                    "maximize": maximize, "capturable": capturable,
                    "differentiable": differentiable}  # fmt: skip
        super().__init__(params, defaults)

    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, (beta1, beta2) = group["lr"], group["betas"]
            with torch.set_grad_enabled(group["differentiable"]):
                for p in group["params"]:
                    if p.grad is None:
                        continue
                    grad = -p.grad if group["maximize"] else p.grad
                    state = self.state[p]
                    if not state:
                        state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    m = state["exp_avg"]
                    if torch.is_complex(p):  # elementwise on the real view, as torch.optim does
                        p_, grad, m = (torch.view_as_real(t) for t in (p, grad, m))
                    else:
                        p_ = p
                    c = m * beta1 + grad * (1 - beta1)
                    if group["weight_decay"] != 0:
                        p_.mul_(1 - lr * group["weight_decay"])
                    p_.sub_(torch.sign(c) * lr)
                    m.mul_(beta2).add_(grad * (1 - beta2))
        return loss
