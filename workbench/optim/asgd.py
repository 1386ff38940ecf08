r"""ASGD: SGD with a decaying step size and a running (Polyak-Ruppert) average of the iterates.

.. math::
    g_t &= \pm\nabla f(\theta_{t-1}) + \lambda\,\theta_{t-1}                          \\
    \theta_t &= (1 - \kappa\,\eta_{t-1})\,\theta_{t-1} - \eta_{t-1}\,g_t              \\
    \bar\theta_t &= \begin{cases} \theta_t & \mu_{t-1} = 1 \\
        \bar\theta_{t-1} + \mu_{t-1}\,(\theta_t - \bar\theta_{t-1}) & \text{otherwise}
        \end{cases}                                                                   \\
    \eta_t &= \gamma\,/\,(1 + \kappa\,\gamma\,t)^{\alpha}                             \\
    \mu_t &= 1\,/\,\max(1,\ t - t_0)

with :math:`\eta_0 = \gamma` (``lr``) and :math:`\mu_0 = 1`. (Polyak & Juditsky, "Acceleration of
stochastic approximation by averaging", 1992.) :math:`\kappa` is ``lambd``, :math:`\alpha` is
``alpha``, :math:`t_0` is ``t0``, the step from which the average starts forgetting the past; the
gradient's sign flips with ``maximize``; :math:`\lambda` is ``weight_decay``, an L2 penalty added
to the gradient. The update uses the :math:`\eta, \mu` of the previous step, which the step then
replaces with its own: a scheduler's new lr shows in :math:`\eta` one step later.

State per param, as torch.optim: ``step``, ``eta`` and ``mu`` (0-dim float tensors, all three on
the param's device), ``ax`` (:math:`\bar\theta`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import Tensor

from . import _backends
from ._optimizer import WorkbenchOptimizer, check_arguments, group_defaults
from ._spec import UpdateSpec


def _asgd_forloop(
    params: list[Tensor],
    grads: list[Tensor],
    axs: list[Tensor],
    mus: list[Tensor],
    etas: list[Tensor],
    steps: list[Tensor],
    *,
    lr: float | Tensor,
    lambd: float,
    alpha: float,
    t0: float,
    weight_decay: float,
    maximize: bool,
    capturable: bool,
    differentiable: bool,
) -> None:
    # eta, mu and step stay tensors on the device where reading them on the host would sync
    # (capturable) or cannot happen (compiled graphs).
    on_device = capturable or torch.compiler.is_compiling()
    for param, grad, ax, mu, eta, step in zip(params, grads, axs, mus, etas, steps):
        step += 1
        # autograd saves the eta and mu the update multiplies by, and both are overwritten below
        mu_ = mu.clone() if differentiable else mu
        if maximize:
            grad = -grad
        if weight_decay != 0:
            grad = grad.add(param, alpha=weight_decay)
        if on_device:
            # eta is a float32 scalar (or whatever dtype a state_dict gave it): widen it to the
            # param's precision, never narrow it to bf16
            eta_ = eta.to(torch.promote_types(param.dtype, eta.dtype))
            if differentiable:
                eta_ = eta_.clone()
            param.mul_(1 - lambd * eta_)
            param.addcmul_(grad, eta_, value=-1)
            if torch.compiler.is_compiling():
                # mu == 1 (before t0): the average is the iterate itself, copied as the host branch
                # below copies it (ax + (param - ax) is inf - inf = nan for an inf param). The
                # select fuses into the compiled graph's one pass.
                ax.copy_(torch.where(mu_ == 1, param, ax + (param - ax) * mu_))
            else:
                # mu == 1 (before t0) makes the average the iterate itself; as torch's capturable
                # update, nan where param and ax are the same inf
                ax.add_(param.sub(ax).mul_(mu_))
            eta.copy_(lr / (1 + lambd * lr * step) ** alpha)
            mu.copy_(1 / torch.clamp(step - t0, min=1))
        else:
            eta_value = eta.item()
            param.mul_(1 - lambd * eta_value)
            param.add_(grad, alpha=-eta_value)
            if mu.item() != 1:
                ax.add_(param.sub(ax).mul_(mu_))
            else:
                ax.copy_(param)
            t = step.item()
            new_eta = lr / (1 + lambd * lr * t) ** alpha
            if isinstance(new_eta, Tensor):
                eta.copy_(new_eta)
            else:
                eta.fill_(new_eta)
            mu.fill_(1 / max(1.0, t - t0))


def _asgd_foreach(
    params: list[Tensor],
    grads: list[Tensor],
    axs: list[Tensor],
    mus: list[Tensor],
    etas: list[Tensor],
    steps: list[Tensor],
    *,
    lr: float | Tensor,
    lambd: float,
    alpha: float,
    t0: float,
    weight_decay: float,
    maximize: bool,
    capturable: bool,
    differentiable: bool,
) -> None:
    torch._foreach_add_(steps, 1.0)
    # theta * (1 - kappa eta) - eta g = theta - eta (g + kappa theta): one temporary list. As in
    # torch's foreach ASGD, an inf param gives inf - inf = nan here where the forloop keeps inf
    # (and so does the average below at mu = 1, where the forloop copies): not exact for
    # non-finite values, like torch's (tests/test_nonfinite.py excludes it).
    if maximize:
        g = torch._foreach_neg(grads)
        torch._foreach_add_(g, params, alpha=weight_decay + lambd)
    else:
        g = torch._foreach_add(grads, params, alpha=weight_decay + lambd)
    torch._foreach_addcmul_(params, g, etas, value=-1)
    del g
    # ax += mu (theta - ax), also when mu is 1: no host read of mu
    g = torch._foreach_sub(params, axs)
    torch._foreach_addcmul_(axs, g, mus)
    del g
    _next_eta_and_mu(etas, mus, steps, lr=lr, lambd=lambd, alpha=alpha, t0=t0)


def _next_eta_and_mu(
    etas: list[Tensor],
    mus: list[Tensor],
    steps: list[Tensor],
    *,
    lr: float | Tensor,
    lambd: float,
    alpha: float,
    t0: float,
) -> None:
    """eta = lr / (1 + lambd lr step)^alpha and mu = 1 / max(1, step - t0), computed on the
    steps' device in place, in the scalars' own dtype: no host sync, graph-capturable."""
    torch._foreach_copy_(mus, steps)
    torch._foreach_sub_(mus, t0)
    torch._foreach_maximum_(mus, 1.0)
    torch._foreach_reciprocal_(mus)
    torch._foreach_copy_(etas, steps)
    if isinstance(lr, Tensor):
        lr = lr.to(etas[0].device)
        torch._foreach_mul_(etas, lambd)
        torch._foreach_mul_(etas, lr)
    else:
        torch._foreach_mul_(etas, lambd * lr)
    torch._foreach_add_(etas, 1.0)
    torch._foreach_pow_(etas, -alpha)
    torch._foreach_mul_(etas, lr)


def _after_triton_launch(scalars: Mapping[str, list[Tensor]], hyper: Mapping[str, Any]) -> None:
    """The Triton kernel reads eta and mu (the previous step's) in every program of a tensor; it
    cannot also replace them, since another program of the same tensor may not have read them yet
    (a launch orders no programs). They are replaced after it, by a few launches over the 0-dim
    scalars, whose cost does not grow with the params' size."""
    _next_eta_and_mu(
        scalars["eta"], scalars["mu"], scalars["step"],
        lr=hyper["lr"], lambd=hyper["lambd"], alpha=hyper["alpha"], t0=hyper["t0"],
    )  # fmt: skip


SPEC = UpdateSpec(
    kernel="asgd",
    forloop=_asgd_forloop,
    foreach=_asgd_foreach,
    state=("ax",),
    # torch's argument order (axs, mus, etas); eta and mu are 0-dim, not shaped like the param
    scalars=("mu", "eta", "step"),
    hyper=("lr", "lambd", "alpha", "t0", "weight_decay"),
    # lr_fp32: a tensor lr narrower than fp64; the C kernel then forms the new eta in fp32, as
    # the forloop's tensor ops form it (an fp16/bf16 lr, rare, is not rounded after each op)
    flags=("maximize", "lr_fp32"),
    derived={"lr_fp32": lambda h: isinstance(h["lr"], Tensor) and h["lr"].dtype != torch.float64},
    # read param, grad, ax; write param, ax. (Before t0, while mu is 1, the fused kernel and the
    # forloop do not read ax: the average is the iterate.)
    reads=3,
    writes=2,
    triton_scalars=("mu", "eta"),
    triton_finish=_after_triton_launch,
)


class ASGD(WorkbenchOptimizer):
    """ASGD (see the module docstring for the update) with torch.optim.ASGD's signature."""

    spec = SPEC

    def __init__(
        self,
        params: Iterable[Any],
        lr: float | Tensor = 1e-2,
        lambd: float = 1e-4,
        alpha: float = 0.75,
        t0: float = 1e6,
        weight_decay: float = 0,
        foreach: bool | None = None,
        maximize: bool = False,
        differentiable: bool = False,
        capturable: bool = False,
        *,
        backend: str | None = None,
        fused: bool | None = None,
    ) -> None:
        check_arguments(lr=lr, weight_decay=weight_decay)
        super().__init__(params, group_defaults(locals()), backend=backend, fused=fused)

    def _initial_state(self, p: Tensor, group: dict[str, Any]) -> dict[str, Tensor]:
        lr = group["lr"]
        if isinstance(lr, Tensor):
            lr = lr.detach().reshape(())
        dtype = _backends.scalar_dtype()
        return {
            # torch.optim keeps all three scalars on the param's device, capturable or not
            "step": torch.zeros((), dtype=dtype, device=p.device),
            "eta": torch.as_tensor(lr, dtype=dtype, device=p.device).clone(),
            "mu": torch.ones((), dtype=dtype, device=p.device),
            "ax": torch.zeros_like(p, memory_format=torch.preserve_format),
        }
