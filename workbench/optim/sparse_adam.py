r"""SparseAdam: Adam masked to the rows a sparse gradient holds.

For the entries :math:`i` present in the (coalesced) sparse gradient only:

.. math::
    g_t &= \pm\nabla f(\theta_{t-1})_i                                         \\
    m_{t,i} &= m_{t-1,i} + (1-\beta_1)(g_t - m_{t-1,i})                        \\
    v_{t,i} &= v_{t-1,i} + (1-\beta_2)(g_t^2 - v_{t-1,i})                      \\
    \theta_{t,i} &= \theta_{t-1,i} - \gamma\,\frac{\sqrt{1-\beta_2^t}}{1-\beta_1^t}
        \,\frac{m_{t,i}}{\sqrt{v_{t,i}} + \epsilon}

Entries absent from a step's gradient keep their param and both moments as they are, but the step
count (one per param, not per row) still advances. (Kingma & Ba's Adam, masked as torch.optim's
SparseAdam masks it.) The gradient's sign flips with ``maximize``.

State per param: ``step`` (a Python int, as torch.optim keeps it), ``exp_avg`` (m), ``exp_avg_sq``
(v), both dense like the param.

Backends: only ``forloop``. ``foreach`` does not fit: torch has no ``_foreach_*`` ops over sparse
tensors, and each param's coalesced grad holds a different set of rows, so the gathered rows of
different params cannot share one multi-tensor op without first concatenating them (a copy as big
as the work). ``compiled`` does not either: dynamo and inductor do not trace sparse COO tensors.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor

from ._optimizer import WorkbenchOptimizer, closure_loss, group_defaults


def _sparse_adam_forloop(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    steps: list[int],
    *,
    lr: float | Tensor,
    beta1: float,
    beta2: float,
    eps: float,
    maximize: bool,
) -> None:
    for param, grad, exp_avg, exp_avg_sq, step in zip(params, grads, exp_avgs, exp_avg_sqs, steps):
        if maximize:
            grad = -grad
        # The update is not linear in g: repeated indices must be summed into one entry first.
        grad = grad.coalesce()
        values = grad._values()
        if values.numel() == 0:
            continue
        # one index tensor per sparse dim: advanced indexing reads just those entries, whatever
        # the param's strides
        where = tuple(grad._indices())
        m_old, v_old = _read_rows(exp_avg, where), _read_rows(exp_avg_sq, where)
        # old + delta, as torch's dense.add_(sparse) forms it: the same bits, written back whole
        # (the coalesced indices are unique) rather than accumulated, which on CPU is a serial
        # loop. Each row block is written as soon as it is final and then reused in place: a
        # fresh temporary of a few MB costs its page faults on every step.
        m_new = values.sub(m_old).mul_(1 - beta1).add_(m_old)
        _write_rows(exp_avg, where, m_new)
        v_new = values.pow(2).sub_(v_old).mul_(1 - beta2).add_(v_old)
        _write_rows(exp_avg_sq, where, v_new)
        denom = v_new.sqrt_().add_(eps)
        step_size = lr * math.sqrt(1 - beta2**step) / (1 - beta1**step)
        update = m_new.div_(denom).mul_(-step_size)
        _write_rows(param, where, update.add_(_read_rows(param, where)))


def _read_rows(tensor: Tensor, where: tuple[Tensor, ...]) -> Tensor:
    if not where:
        # no sparse dim (a 0-dim param's grad, or sparse_dim=0): its one value block is the
        # whole tensor, with a leading nnz dim of 1
        return tensor.unsqueeze(0)
    # rows of an embedding table: index_select is a plain gather, several times faster on CPU
    # than advanced indexing's general kernel
    return tensor.index_select(0, where[0]) if len(where) == 1 else tensor[where]


def _write_rows(tensor: Tensor, where: tuple[Tensor, ...], values: Tensor) -> None:
    if not where:
        # index_put_ with no index tensors is a masked fill to torch, and refuses
        tensor.unsqueeze(0).copy_(values)
    elif len(where) == 1:
        tensor.index_copy_(0, where[0], values)  # rows of an embedding table: one parallel copy
    else:
        tensor.index_put_(where, values)


class SparseAdam(WorkbenchOptimizer):
    """SparseAdam (see the module docstring) with torch.optim.SparseAdam's signature.

    Params are dense, their grads sparse (``nn.Embedding(sparse=True)``). Extra keyword:
    ``backend`` ("forloop"; None = forloop).
    """

    backends = ("forloop",)
    sparse_grads = True  # it refuses dense grads: the harness gives it nn.Embedding-like ones
    state_names = ("exp_avg", "exp_avg_sq")
    update_functions = {"forloop": _sparse_adam_forloop}
    update_keywords = ("lr", "beta1", "beta2", "eps")
    elementwise = False  # complex params are refused
    # Dense upper bound: read param, grad, exp_avg, exp_avg_sq, write param and both moments. A
    # step moves only the rows its grad holds, a fraction the dense size cannot tell.
    tensors_read = 4
    tensors_written = 3

    def __init__(
        self,
        params: Iterable[Any],
        lr: float | Tensor = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        maximize: bool = False,
        *,
        backend: str | None = None,
    ) -> None:
        if isinstance(lr, Tensor) and lr.numel() != 1:
            raise ValueError("Tensor lr must be 1-element")
        if not lr > 0.0:
            raise ValueError(f"Invalid learning rate: {lr}")
        if not eps > 0.0:
            raise ValueError(f"Invalid epsilon value: {eps}")
        if not 0.0 <= betas[0] < 1.0:
            raise ValueError(f"Invalid beta parameter at index 0: {betas[0]}")
        if not 0.0 <= betas[1] < 1.0:
            raise ValueError(f"Invalid beta parameter at index 1: {betas[1]}")
        super().__init__(params, group_defaults(locals()), backend=backend)
        sparse, complex_ = [], []
        for i, group in enumerate(self.param_groups):
            for j, p in enumerate(group["params"]):
                if p.is_sparse:
                    sparse.append([i, j])
                if p.is_complex():
                    complex_.append([i, j])
        if sparse:
            raise ValueError(
                f"Sparse params at indices {sparse}: SparseAdam requires dense parameter tensors"
            )
        if complex_:
            raise ValueError(
                f"Complex params at indices {complex_}: "
                "SparseAdam does not support complex parameters"
            )

    def __setstate__(self, state: dict[str, Any]) -> None:
        # torch.optim.Optimizer's, not the base class's: `step` stays an int, no extra flags
        torch.optim.Optimizer.__setstate__(self, state)
        for group in self.param_groups:
            group.setdefault("backend", None)
            group.setdefault("maximize", False)

    def resolve_backend(self, group: dict[str, Any], params: list[Tensor]) -> str:
        return "forloop"

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        """One masked Adam step over the rows each param's sparse grad holds."""
        loss = closure_loss(closure)
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            for p in params:
                if not p.grad.is_sparse:
                    raise RuntimeError(
                        "SparseAdam does not support dense gradients, please consider Adam instead"
                    )
            steps = []
            for p in params:
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state.update(self._initial_state(p, group))
                state["step"] += 1
                steps.append(state["step"])
            self.update_functions["forloop"](
                params,
                [p.grad for p in params],
                [self.state[p]["exp_avg"] for p in params],
                [self.state[p]["exp_avg_sq"] for p in params],
                steps,
                **self._hyperparameters(group),
                maximize=group["maximize"],
            )
        return loss
