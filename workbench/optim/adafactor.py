r"""Adafactor: Adam's second moment with sublinear memory, a relative step size, update clipping.

.. math::
    G_t &= \pm\nabla f(\theta_{t-1}), \qquad
        \hat\beta_{2,t} = 1 - t^{\tau}, \qquad
        \rho_t = \min(\gamma, 1/\sqrt t)                                               \\
    \alpha_t &= \max(\epsilon_2, \mathrm{RMS}(\theta_{t-1}))\,\rho_t, \qquad
        \theta_{t-1} \leftarrow (1 - \gamma\lambda)\,\theta_{t-1}                      \\
    R_t &= \hat\beta_{2,t} R_{t-1} + (1-\hat\beta_{2,t})\,\mathrm{mean}_{\text{cols}}(G_t^2),
    \quad
    C_t = \hat\beta_{2,t} C_{t-1} + (1-\hat\beta_{2,t})\,\mathrm{mean}_{\text{rows}}(G_t^2)   \\
    \hat V_t &= \frac{R_t C_t}{\max(\mathrm{mean}(R_t), \epsilon_1)}
        \quad\text{(params of 2 or more dims: factored over the last two)}               \\
    \hat V_t &= \hat\beta_{2,t}\hat V_{t-1} + (1-\hat\beta_{2,t})\,G_t^2
        \quad\text{(params of 0 or 1 dims)}                                             \\
    U_t &= G_t / \sqrt{\max(\hat V_t, \epsilon_1^2)}, \qquad
    \theta_t = \theta_{t-1} - \frac{\alpha_t}{\max(1, \mathrm{RMS}(U_t)/d)}\,U_t

(Shazeer & Stern, "Adafactor: Adaptive Learning Rates with Sublinear Memory Cost", with
torch.optim's departures: lr caps the relative step size and scales the decoupled weight decay,
and :math:`\epsilon_1` guards the estimate rather than the factors.) :math:`\tau` is
``beta2_decay``, :math:`\lambda` ``weight_decay``, ``eps`` is :math:`(\epsilon_1, \epsilon_2)`,
with :math:`\epsilon_1` = None meaning the machine epsilon of the param's dtype.

State per param: ``step`` (0-dim float tensor); ``row_var`` (R, the param's shape with the last
dim 1) and ``col_var`` (C, the second-to-last dim 1) for params of 2 or more dims, ``variance``
(:math:`\hat V`, param-shaped) otherwise; all in the grad's dtype, as torch.optim.

Each step needs whole-tensor reductions before any element can be updated (the RMS of the param,
the row and column means, the RMS of the update), so the per-tensor scalars are read on the host
by forloop and foreach, as torch.optim does, and stay on the device in the compiled graph.

No fused backend: a Triton kernel would need a pass for RMS(theta) and the row/column sums, then
one for RMS(U), then the update itself: three passes over the grad with grid-wide reductions in
between, which is what the compiled backend's generated kernels already do.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

from ._optimizer import WorkbenchOptimizer, group_defaults


def _eps1(eps1: float | None, dtype: torch.dtype) -> float:
    # torch.optim's default, per param dtype (torch's loops keep the first param's for all)
    return torch.finfo(dtype).eps if eps1 is None else eps1


def _scalar_dtype(t: Tensor) -> torch.dtype:
    # the dtype per-tensor scalars meet the elements in under compile: fp32 for fp16/bf16 (whose
    # math runs in fp32 there), else the param's own, so fp32 elements never promote to fp64
    return t.dtype if t.dtype in (torch.float32, torch.float64) else torch.float32


def _per_param(states: list[Tensor | None], n: int) -> list[Tensor | None]:
    # a state that no param of the group has (no vectors, say) comes as an empty list
    return states or [None] * n


def _lerp_(state: Tensor, end: Tensor, weight: float | Tensor) -> None:
    if end.dtype != state.dtype or (isinstance(weight, Tensor) and weight.dtype != state.dtype):
        # lerp_ takes no fp32 end or weight for fp16/bf16 state (compiled): the line by hand
        state.add_((end - state) * weight)
    else:
        state.lerp_(end, weight)


def _mean_square(grad: Tensor, dim: int) -> Tensor:
    """mean(grad**2) over `dim`, kept, through a norm so no grad-sized square is materialised."""
    return torch.linalg.vector_norm(grad, dim=dim, keepdim=True).square_().div_(grad.size(dim))


def _factored_estimate(row_var: Tensor, col_var: Tensor, eps1: float) -> Tensor:
    """R C / max(mean(R), eps1): the rank-1 second-moment estimate, a new grad-sized tensor."""
    estimate = row_var @ col_var
    return estimate.div_(row_var.mean(dim=-2, keepdim=True).clamp_(min=eps1))


def _adafactor_forloop(
    params: list[Tensor],
    grads: list[Tensor],
    row_vars: list[Tensor | None],
    col_vars: list[Tensor | None],
    variances: list[Tensor | None],
    steps: list[Tensor],
    *,
    lr: float | Tensor,
    beta2_decay: float,
    eps1: float | None,
    eps2: float,
    d: float,
    weight_decay: float,
    maximize: bool,
    capturable: bool,
    differentiable: bool,
) -> None:
    # Under torch.compile step and lr are 1-element device tensors: every per-tensor scalar is
    # computed there (in fp64, as torch.optim computes them on the host) and nothing syncs.
    compiling = torch.compiler.is_compiling()
    n = len(params)
    row_vars, col_vars, variances = (_per_param(x, n) for x in (row_vars, col_vars, variances))
    for param, grad, row_var, col_var, variance, step in zip(
        params, grads, row_vars, col_vars, variances, steps
    ):
        step += 1
        numel = param.numel()
        if numel == 0:  # nothing to update, and its RMS would be 0/0
            continue
        eps = _eps1(eps1, param.dtype)
        # Eager: the param's dtype throughout, norms included, as torch.optim. Compiled: fp16/bf16
        # elements are worked on in fp32, norms and the estimate too, and rounded once when
        # stored (an fp16 norm alone moves alpha by 5e-4, enough to flip a rounding).
        work = _scalar_dtype(param) if compiling else param.dtype
        grad = grad.to(work)
        if maximize:
            grad = -grad
        param_norm = torch.linalg.vector_norm(param, dtype=work)
        if compiling:
            t = step.to(torch.float64)
            new_weight = (t**beta2_decay).to(_scalar_dtype(param))  # 1 - beta2_t
            rms_param = param_norm.to(torch.float64) / math.sqrt(numel)
            alpha = rms_param.clamp(min=eps2) * torch.minimum(lr, t.rsqrt())
            if weight_decay != 0:
                param.mul_((1 - lr * weight_decay).to(_scalar_dtype(param)))
        else:
            # a tensor lr stays a 0-dim tensor here, as in torch.optim (see _adafactor_foreach)
            t = step.item()
            new_weight = t**beta2_decay
            alpha = max(eps2, param_norm.item() / math.sqrt(numel)) * min(lr, 1 / math.sqrt(t))
            if weight_decay != 0:
                param.mul_(1 - lr * weight_decay)

        if row_var is not None and col_var is not None:
            _lerp_(row_var, _mean_square(grad, -1), new_weight)
            _lerp_(col_var, _mean_square(grad, -2), new_weight)
            update = _factored_estimate(row_var.to(work), col_var.to(work), eps)
        else:
            assert variance is not None
            _lerp_(variance, grad * grad, new_weight)
            # a copy: the estimate is about to be overwritten by U
            update = variance.to(work, copy=True)
        update.clamp_(min=eps * eps).rsqrt_().mul_(grad)

        update_norm = update.norm()
        if compiling:
            rms_update = update_norm.to(torch.float64) / (math.sqrt(numel) * d)
            scale = alpha / rms_update.clamp(min=1.0)
            param.sub_(update * scale.to(_scalar_dtype(param)))
        else:
            rms_update = update_norm.item() / (math.sqrt(numel) * d)
            param.add_(update, alpha=-alpha / max(1.0, rms_update))


def _adafactor_foreach(
    params: list[Tensor],
    grads: list[Tensor],
    row_vars: list[Tensor | None],
    col_vars: list[Tensor | None],
    variances: list[Tensor | None],
    steps: list[Tensor],
    *,
    lr: float | Tensor,
    beta2_decay: float,
    eps1: float | None,
    eps2: float,
    d: float,
    weight_decay: float,
    maximize: bool,
    capturable: bool,
    differentiable: bool,
) -> None:
    # One (device, dtype) bucket; the factored params and the vectors go through separate lists.
    # The per-tensor scalars come to the host in one transfer per kind, not one per tensor.
    torch._foreach_add_(steps, 1.0)
    n = len(params)
    row_vars, col_vars, variances = (_per_param(x, n) for x in (row_vars, col_vars, variances))
    keep = [i for i in range(n) if params[i].numel() > 0]  # empty ones: only their step counts
    if not keep:
        return
    params = [params[i] for i in keep]
    grads = [grads[i] for i in keep]
    if maximize:
        grads = torch._foreach_neg(grads)
    # A tensor lr stays a 0-dim tensor in the scalars below, as in torch.optim's foreach step:
    # fp16/bf16 elements multiplied by a list of 0-dim fp32 tensors round differently from
    # elements multiplied by a list of Python floats.
    eps = _eps1(eps1, params[0].dtype)
    t = torch.stack([steps[i] for i in keep]).tolist()
    new_weights = [s**beta2_decay for s in t]
    norms = torch.stack(torch._foreach_norm(params)).tolist()
    alphas = [
        max(eps2, norm / math.sqrt(p.numel())) * min(lr, 1 / math.sqrt(s))
        for norm, p, s in zip(norms, params, t)
    ]
    if weight_decay != 0:
        torch._foreach_mul_(params, 1 - lr * weight_decay)

    factored = [k for k, i in enumerate(keep) if row_vars[i] is not None]
    vectors = [k for k, i in enumerate(keep) if row_vars[i] is None]
    updates: list[Tensor | None] = [None] * len(keep)
    if factored:
        rows = [row_vars[keep[k]] for k in factored]
        cols = [col_vars[keep[k]] for k in factored]
        g = [grads[k] for k in factored]
        w = [new_weights[k] for k in factored]
        torch._foreach_lerp_(rows, [_mean_square(x, -1) for x in g], w)
        torch._foreach_lerp_(cols, [_mean_square(x, -2) for x in g], w)
        for k, r, c in zip(factored, rows, cols):
            updates[k] = _factored_estimate(r, c, eps)
    if vectors:
        v = [variances[keep[k]] for k in vectors]
        g = [grads[k] for k in vectors]
        # one temporary list: the squares, then a copy of the new estimate
        squares = torch._foreach_mul(g, g)
        torch._foreach_lerp_(v, squares, [new_weights[k] for k in vectors])
        torch._foreach_copy_(squares, v)
        for k, sq in zip(vectors, squares):
            updates[k] = sq
    torch._foreach_clamp_min_(updates, eps * eps)
    torch._foreach_rsqrt_(updates)
    torch._foreach_mul_(updates, grads)
    norms = torch.stack(torch._foreach_norm(updates)).tolist()
    scales = [
        -a / max(1.0, norm / (math.sqrt(u.numel()) * d))
        for a, norm, u in zip(alphas, norms, updates)
    ]
    if isinstance(lr, Tensor) and not all(isinstance(x, Tensor) for x in scales):
        # params at different steps (one frozen a while): rho is lr for some, 1/sqrt(t) for
        # others, and _foreach_mul_ takes no list mixing tensors and floats (torch's step fails)
        scales = [torch.as_tensor(x, dtype=lr.dtype, device=lr.device) for x in scales]
    torch._foreach_mul_(updates, scales)
    torch._foreach_add_(params, updates)


class Adafactor(WorkbenchOptimizer):
    """Adafactor (see the module docstring for the update) with torch.optim.Adafactor's signature.

    Extra keyword: ``backend`` ("forloop", "foreach", "compiled"). ``backend=None`` picks like
    torch: forloop unless ``foreach=True``, on every device (Adafactor is chosen to save memory,
    and foreach holds a grad-sized temporary per param).
    """

    backends = ("forloop", "foreach", "compiled")
    state_names = ("row_var", "col_var", "variance")
    update_functions = {"forloop": _adafactor_forloop, "foreach": _adafactor_foreach}
    update_keywords = ("lr", "beta2_decay", "eps1", "eps2", "d", "weight_decay")
    group_tuples = {"eps": ("eps1", "eps2")}
    # Floor for the factored params that dominate a model: read param and grad, write param (the
    # row/column factors are O(rows + cols)). Vectors also read and write their variance.
    tensors_read = 2
    tensors_written = 1
    # complex params are refused, as torch.optim does; the factoring needs the real shape
    elementwise = False

    def __init__(
        self,
        params: Iterable[Any],
        lr: float | Tensor = 1e-2,
        beta2_decay: float = -0.8,
        eps: tuple[float | None, float] = (None, 1e-3),
        d: float = 1.0,
        weight_decay: float = 0.0,
        *,
        foreach: bool | None = None,
        maximize: bool = False,
        backend: str | None = None,
    ) -> None:
        if isinstance(lr, Tensor) and lr.numel() != 1:
            raise ValueError("Tensor lr must be 1-element")
        if not lr >= 0.0:
            raise ValueError(f"Learning rate should be >= 0 but is: {lr}")
        if not beta2_decay <= 0.0:
            raise ValueError(f"beta2_decay should be <= 0 but is: {beta2_decay}")
        if eps[0] is not None and not eps[0] >= 0.0:
            raise ValueError(f"epsilon1 should be >= 0 but is: {eps[0]}")
        if not eps[1] >= 0.0:
            raise ValueError(f"epsilon2 should be >= 0 but is: {eps[1]}")
        if not d >= 1.0:
            raise ValueError(f"Clipping threshold d should be >= 1 but is: {d}")
        if not weight_decay >= 0.0:
            raise ValueError(f"weight_decay should be >= 0 but is: {weight_decay}")
        super().__init__(params, group_defaults(locals()), backend=backend)

    def resolve_backend(self, group: dict[str, Any], params: list[Tensor]) -> str:
        # torch.optim.Adafactor runs foreach only when asked to, even on CUDA
        if group.get("backend") is not None:
            return group["backend"]
        return "foreach" if group.get("foreach") else "forloop"

    def _step_group(self, group: dict[str, Any]) -> None:
        # refused before any param of the group changes, in torch.optim's words
        for p in group["params"]:
            if p.grad is not None and p.is_complex():
                raise RuntimeError("Adafactor does not support complex parameters")
        super()._step_group(group)

    def _initial_state(self, p: Tensor, group: dict[str, Any]) -> dict[str, Tensor]:
        grad = p.grad
        if grad.dim() < 2:
            return {"variance": torch.zeros_like(grad, memory_format=torch.preserve_format)}
        row_shape, col_shape = list(grad.shape), list(grad.shape)
        row_shape[-1] = 1
        col_shape[-2] = 1
        return {"row_var": grad.new_zeros(row_shape), "col_var": grad.new_zeros(col_shape)}
