r"""Muon: momentum, orthogonalised by a Newton-Schulz iteration, for 2-D params only.

.. math::
    B_t &= \mu B_{t-1} + (1-\mu)\,g_t                                           \\
    U_t &= \begin{cases} (1-\mu)\,g_t + \mu B_t & \text{nesterov} \\
                         B_t & \text{otherwise} \end{cases}                     \\
    O_t &= \mathrm{NS}^{(a,b,c)}_k(U_t)                                         \\
    \theta_t &= (1 - \gamma\lambda)\,\theta_{t-1} - \gamma\,r(A, B)\,O_t

(Jordan et al., "Muon: An optimizer for hidden layers in neural networks", 2024.) The buffer is
an exponential average (torch's ``lerp``), not SGD's sum; :math:`\lambda` is ``weight_decay``,
decoupled as in AdamW. :math:`\mathrm{NS}_k` runs in bfloat16 whatever the param's dtype, as
torch.optim.Muon does: :math:`X_0 = U / \max(\lVert U\rVert_F, \epsilon)` (transposed first when
it has more rows than columns), then :math:`k` times
:math:`X \leftarrow aX + (bG + cG^2)X` with :math:`G = XX^\top`; the bf16 result is added to
the param in the param's dtype. :math:`r` scales lr by the param's shape :math:`A \times B`
(``adjust_lr_fn``): :math:`\sqrt{\max(1, A/B)}` for None and "original" (Keller Jordan's),
:math:`0.2\sqrt{\max(A, B)}` for "match_rms_adamw" (Moonshot's, "Muon is Scalable for LLM
Training"), :math:`\sqrt{A/B}` for "spectral_unclamped" (Bernstein's "Deriving Muon": the spectral
norm condition without the clamp at 1; torch.optim.Muon has it from torch 2.14).

State per param, as torch.optim: ``momentum_buffer`` (B), zeros like the grad, created at the
param's first step. No ``step`` counter; no ``maximize`` flag (torch's Muon has none).

Backends:

- forloop: one param at a time, torch's order of operations (bf16 matmuls bit for bit).
- foreach: the momentum in ``_foreach_*`` ops, and Newton-Schulz batched over the params of one
  shape (``bmm``/``baddbmm`` on a stack): a transformer has a few shapes over many layers, so a
  GPU launches 3k matmuls per shape instead of per param, which is what small matrices are bound
  by. On CPU the batched products are torch's per-matrix ones bit for bit (checked by the parity
  tests); the stack holds one bf16 copy of every param of a shape at once (forloop: one at a time).
- compiled: the forloop update, Newton-Schulz included, in one graph per group structure, lr fed as
  a tensor. Inductor would keep the bf16 chain in fp32 between matmuls (more precise than eager,
  and far from torch after a few iterations); with ``emulate_precision_casts`` it rounds as eager
  does and matches torch bit for bit on CPU. (On a GPU, matmul tuning may still part from eager:
  torch skips its own compiled-vs-eager Muon test for that reason.)

No fused backend: the step is 3k matmuls per param, and the elementwise part a Triton kernel would
fuse is a rounding error beside them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

from ._optimizer import WorkbenchOptimizer, group_defaults

# Keller Jordan's quintic coefficients and defaults, as torch.optim.Muon takes them
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
EPS = 1e-7
NS_STEPS = 5
ADJUST_LR_FNS = ("original", "match_rms_adamw", "spectral_unclamped")


def orthogonalize(
    update: Tensor, ns_coefficients: tuple[float, float, float], ns_steps: int, eps: float
) -> Tensor:
    """Newton-Schulz approximation of U V^T for update = U S V^T, in bfloat16 (a new tensor)."""
    if ns_steps >= 100:
        raise ValueError("Number of steps must be less than 100 for computational efficiency")
    if update.dim() != 2:
        raise ValueError("Input tensor gradient must be a 2D matrix")
    if len(ns_coefficients) != 3:
        raise ValueError("Coefficients must be a tuple of exactly 3 values")
    a, b, c = ns_coefficients
    # A copy even when the update is already bf16: torch's `.bfloat16()` aliases it then, and its
    # in-place normalisation below rescales a bf16 momentum buffer (nesterov=False) every step.
    x = update.to(torch.bfloat16, copy=True)
    tall = update.size(0) > update.size(1)
    if tall:
        x = x.T  # iterate on the wide side: the Gram matrix X X^T is the smaller one
    x.div_(x.norm().clamp(min=eps))  # Frobenius norm >= spectral norm: singular values <= 1
    for _ in range(ns_steps):
        gram = x @ x.T
        poly = torch.addmm(gram, gram, gram, beta=b, alpha=c)
        x = torch.addmm(x, poly, x, beta=a)
    return x.T if tall else x


def lr_ratio(adjust_lr_fn: str | None, shape: torch.Size) -> float:
    """The factor ``adjust_lr_fn`` puts on lr for a param of this shape (rows A, columns B)."""
    rows, cols = shape[:2]
    if adjust_lr_fn is None or adjust_lr_fn == "original":
        return math.sqrt(max(1, rows / cols))
    if adjust_lr_fn == "match_rms_adamw":
        return 0.2 * math.sqrt(max(rows, cols))
    if adjust_lr_fn == "spectral_unclamped":
        return math.sqrt(rows / cols)
    raise ValueError(f"Adjust learning rate function {adjust_lr_fn} is not supported")


def _muon_forloop(
    params: list[Tensor],
    grads: list[Tensor],
    momentum_buffers: list[Tensor],
    *,
    lr: float | Tensor,
    weight_decay: float,
    momentum: float,
    nesterov: bool,
    ns_coefficients: tuple[float, float, float],
    ns_steps: int,
    eps: float,
    adjust_lr_fn: str | None,
    maximize: bool,
    capturable: bool,
    differentiable: bool,
) -> None:
    # In a compiled graph lr is a tensor and must stay one (a new lr is new data, not a new
    # graph): `alpha=` would read it on the host, so the update is multiplied in instead.
    lr_on_device = isinstance(lr, Tensor) and torch.compiler.is_compiling()
    for param, grad, buf in zip(params, grads, momentum_buffers):
        if grad.dim() != 2:
            raise ValueError("Param gradient must be a 2D matrix")
        buf.lerp_(grad, 1 - momentum)
        update = grad.lerp(buf, momentum) if nesterov else buf
        ortho = orthogonalize(update, ns_coefficients, ns_steps, eps)
        # with a tensor lr, lr * ratio and 1 - lr * wd are tensor ops in lr's dtype, as in torch
        adjusted_lr = lr * lr_ratio(adjust_lr_fn, param.shape)
        param.mul_(1 - lr * weight_decay)
        if lr_on_device:
            # The explicit cast is what makes inductor round the last iterate to bf16 (eager
            # does): fused into this update without it, O would keep fp32 precision.
            param.addcmul_(ortho.to(param.dtype), adjusted_lr, value=-1)
        else:
            param.add_(ortho, alpha=-float(adjusted_lr))


def _muon_foreach(
    params: list[Tensor],
    grads: list[Tensor],
    momentum_buffers: list[Tensor],
    *,
    lr: float | Tensor,
    weight_decay: float,
    momentum: float,
    nesterov: bool,
    ns_coefficients: tuple[float, float, float],
    ns_steps: int,
    eps: float,
    adjust_lr_fn: str | None,
    maximize: bool,
    capturable: bool,
    differentiable: bool,
) -> None:
    # The momentum in _foreach_* ops; the orthogonalisation batched over params of one shape
    # (a transformer's layers share a few): one bmm chain of 3k launches per shape, not per param.
    for grad in grads:
        if grad.dim() != 2:
            raise ValueError("Param gradient must be a 2D matrix")
    torch._foreach_lerp_(momentum_buffers, grads, 1 - momentum)
    updates = (
        torch._foreach_lerp(grads, momentum_buffers, momentum) if nesterov else momentum_buffers
    )
    by_shape: dict[torch.Size, list[int]] = {}
    for i, param in enumerate(params):
        by_shape.setdefault(param.shape, []).append(i)
    for shape, indices in by_shape.items():
        orthos = orthogonalize_batch([updates[i] for i in indices], ns_coefficients, ns_steps, eps)
        # as in the forloop: with a tensor lr, these are tensor ops in lr's dtype, as in torch
        adjusted_lr = lr * lr_ratio(adjust_lr_fn, shape)
        for i, ortho in zip(indices, orthos):
            params[i].mul_(1 - lr * weight_decay)
            params[i].add_(ortho, alpha=-float(adjusted_lr))


def orthogonalize_batch(
    updates: list[Tensor], ns_coefficients: tuple[float, float, float], ns_steps: int, eps: float
) -> Tensor:
    """:func:`orthogonalize` of equal-shape matrices at once (bmm), stacked, in bfloat16."""
    if ns_steps >= 100:
        raise ValueError("Number of steps must be less than 100 for computational efficiency")
    if len(ns_coefficients) != 3:
        raise ValueError("Coefficients must be a tuple of exactly 3 values")
    a, b, c = ns_coefficients
    x = torch.stack([u.to(torch.bfloat16) for u in updates])
    tall = x.size(1) > x.size(2)
    if tall:
        x = x.mT
    norms = torch.linalg.vector_norm(x, dim=(-2, -1), keepdim=True)
    x.div_(norms.clamp(min=eps))
    for _ in range(ns_steps):
        gram = x @ x.mT
        poly = torch.baddbmm(gram, gram, gram, beta=b, alpha=c)
        x = torch.baddbmm(x, poly, x, beta=a)
    return x.mT if tall else x


class Muon(WorkbenchOptimizer):
    """Muon (see the module docstring for the update) with torch.optim.Muon's signature.

    Extra keyword: ``backend`` ("forloop", "foreach", "compiled"; None picks like torch's rule
    for foreach: foreach on CUDA, forloop on CPU). Params must be 2-D, real and dense, as torch's:
    biases, norms and embeddings belong to another optimizer.
    """

    backends = ("forloop", "foreach", "compiled")
    state_names = ("momentum_buffer",)
    has_step = False
    elementwise = False  # complex params are refused, not viewed as real
    matrices_only = True
    # Inductor otherwise keeps the bf16 Newton-Schulz chain in fp32 between matmuls; rounding each
    # intermediate to bf16 as eager does makes the compiled orthogonalisation torch's, bit for bit.
    inductor_options = (("emulate_precision_casts", True),)
    update_functions = {"forloop": _muon_forloop, "foreach": _muon_foreach}
    update_keywords = (
        "lr", "weight_decay", "momentum", "nesterov", "ns_coefficients", "ns_steps", "eps",
        "adjust_lr_fn",
    )  # fmt: skip
    # read param, grad, momentum_buffer; write param, momentum_buffer
    tensors_read = 3
    tensors_written = 2

    def __init__(
        self,
        params: Iterable[Any],
        lr: float | Tensor = 1e-3,
        weight_decay: float = 0.1,
        momentum: float = 0.95,
        nesterov: bool = True,
        ns_coefficients: tuple[float, float, float] = NS_COEFFICIENTS,
        eps: float = EPS,
        ns_steps: int = NS_STEPS,
        adjust_lr_fn: str | None = None,
        *,
        backend: str | None = None,
    ) -> None:
        if isinstance(lr, Tensor) and lr.numel() != 1:
            raise ValueError("Tensor lr must be 1-element")
        if not lr >= 0.0:
            raise ValueError(f"Learning rate should be >= 0 but is: {lr}")
        if not momentum >= 0.0:
            raise ValueError(f"momentum should be >= 0 but is: {momentum}")
        if not weight_decay >= 0.0:
            raise ValueError(f"weight decay should be >= 0 but is: {weight_decay}")
        if adjust_lr_fn is not None and adjust_lr_fn not in ADJUST_LR_FNS:
            raise ValueError(f"Adjust learning rate function {adjust_lr_fn} is not supported")
        super().__init__(params, group_defaults(locals()), backend=backend)
        # torch checks the constructor's params only (not a group added later): so do we
        for group in self.param_groups:
            for p in group["params"]:
                if p.ndim != 2:
                    raise ValueError(
                        "Muon only supports 2D parameters whereas we found a parameter with "
                        f"size: {p.size()}"
                    )

    def _step_group(self, group: dict[str, Any]) -> None:
        # refused before any param of the group moves, as torch does
        for p in group["params"]:
            if p.grad is not None and p.is_complex():
                raise RuntimeError("Muon does not support complex parameters")
        super()._step_group(group)

    def _initial_state(self, p: Tensor, group: dict[str, Any]) -> dict[str, Tensor]:
        # like the grad (torch's choice): its layout, should it differ from the param's
        return {"momentum_buffer": torch.zeros_like(p.grad, memory_format=torch.preserve_format)}
