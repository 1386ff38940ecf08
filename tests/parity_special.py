"""Side-by-side parity procedures for optimizers the generic one cannot drive: LBFGS (a closure
that the optimizer calls many times per step) and SparseAdam (sparse-layout grads). The table
names them in OptimEntry.side_by_side; test_parity runs them for every backend, config and dtype.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn


def assert_same_state(ours: dict[str, Any], ref: dict[str, Any], where: str) -> None:
    """Every state entry: tensors (and lists of them) close, everything else equal."""
    assert set(ours) == set(ref), f"state keys {where}: {set(ours)} != {set(ref)}"
    for key, value in ref.items():
        mine = ours[key]
        if isinstance(value, list):
            assert isinstance(mine, list) and len(mine) == len(value), f"state[{key}] {where}"
            pairs = list(zip(mine, value))
        else:
            pairs = [(mine, value)]
        for a, b in pairs:
            if isinstance(b, torch.Tensor) or isinstance(a, torch.Tensor):
                torch.testing.assert_close(
                    torch.as_tensor(a), torch.as_tensor(b), check_dtype=False,
                    msg=lambda m, k=key: f"state[{k}] {where}: {m}",
                )  # fmt: skip
            elif isinstance(b, float):
                assert a == b or abs(a - b) <= 1e-7 * max(1.0, abs(b)), f"state[{key}] {where}"
            else:
                assert a == b, f"state[{key}] {where}: {a} != {b}"


# ---- LBFGS ----------------------------------------------------------------------------------


def _rosenbrock(dtype: torch.dtype) -> tuple[list[torch.Tensor], Callable[[], torch.Tensor]]:
    xy = torch.tensor([-1.5, 2.0], dtype=dtype, requires_grad=True)
    return [xy], lambda: (1 - xy[0]) ** 2 + 100 * (xy[1] - xy[0] ** 2) ** 2


def _least_squares_mlp(
    dtype: torch.dtype,
) -> tuple[list[torch.Tensor], Callable[[], torch.Tensor]]:
    """A small MLP fit by least squares, with a complex and an empty param riding along."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 2)).to(dtype)
    z = torch.randn(2, dtype=dtype.to_complex(), requires_grad=True)
    empty = torch.empty(0, 3, dtype=dtype, requires_grad=True)
    x = torch.randn(16, 3, dtype=dtype)
    target = torch.randn(16, 2, dtype=dtype)

    def loss() -> torch.Tensor:
        fit = (net(x) - target).pow(2).mean()
        return fit + 0.1 * (z - 1).abs().pow(2).sum() + empty.sum()

    return [*net.parameters(), z, empty], loss


def lbfgs_side_by_side(entry: Any, backend: str, config: dict, dtype: torch.dtype) -> None:
    """Several steps on Rosenbrock and on a small least-squares MLP: params, loss, every state
    entry (the history lists included) after each step."""
    for make in (_rosenbrock, _least_squares_mlp):
        (params, loss_fn), (ref_params, ref_loss_fn) = make(dtype), make(dtype)
        ours = entry.ours(params, backend=backend, **config)
        loss_fn, ref, ref_loss_fn, sign = lbfgs_pair(
            entry, config, loss_fn, ref_params, ref_loss_fn
        )
        for i in range(4):
            got = ours.step(_closure(ours, loss_fn))
            want = ref.step(_closure(ref, ref_loss_fn))
            where = f"{make.__name__} after step {i}"
            assert_same_loss_and_params(got, sign * want, params, ref_params, where)
            assert_same_state(ours.state[params[0]], ref.state[ref_params[0]], where)


Loss = Callable[[], torch.Tensor]


def lbfgs_pair(
    entry: Any, config: dict, loss_fn: Loss, ref_params: list[torch.Tensor], ref_loss_fn: Loss
) -> tuple[Loss, torch.optim.Optimizer, Loss, int]:
    """The losses ours and torch's LBFGS run under `config`, torch's optimizer, and the sign that
    turns the loss torch's step returns into ours's.

    To maximize, ours gets -f (the test problems are minimizations: -f has a maximum to go
    to). Maximizing -f is minimizing f, to the last bit (negation is exact): where the installed
    torch has no `maximize` (before 2.14), torch minimizes f, and every state entry (flat grads,
    prev_loss: what maximize negates) is then what ours keeps."""
    kwargs = entry.torch_kwargs(config)
    if not kwargs.get("maximize"):
        return loss_fn, entry.torch_cls(ref_params, **kwargs), ref_loss_fn, 1
    negated = lambda: -loss_fn()  # noqa: E731
    if "maximize" in entry.torch_lacks():
        del kwargs["maximize"]
        return negated, entry.torch_cls(ref_params, **kwargs), ref_loss_fn, -1
    return negated, entry.torch_cls(ref_params, **kwargs), lambda: -ref_loss_fn(), 1


def assert_same_loss_and_params(
    got: torch.Tensor,
    want: torch.Tensor,
    params: list[torch.Tensor],
    ref_params: list[torch.Tensor],
    where: str,
) -> None:
    torch.testing.assert_close(got, want, msg=lambda m: f"loss {where}: {m}")
    for n, (p, q) in enumerate(zip(params, ref_params)):
        torch.testing.assert_close(p, q, msg=lambda m, n=n: f"param {n} {where}: {m}")


def _closure(opt: torch.optim.Optimizer, loss_fn: Callable[[], torch.Tensor]) -> Callable:
    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = loss_fn()
        loss.backward()
        return loss

    return closure


# ---- SparseAdam -----------------------------------------------------------------------------

# rows looked up per step: repeated indices (summed by coalescing), rows absent from some steps,
# and a step where one table gets no lookup at all
_LOOKUPS = [[1, 1, 4, 7], [2, 3, 3, 9], [0, 0, 0, 0], [5, 6, 1, 1], [8, 2, 2, 4], [1, 9, 9, 9]]


class _Embeddings(nn.Module):
    def __init__(self, dtype: torch.dtype) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.table = nn.Embedding(10, 3, sparse=True).to(dtype)
        self.wide = nn.Embedding(6, 4, sparse=True).to(dtype)
        self.strided = nn.Parameter(torch.randn(5, 6, dtype=dtype)[:, ::2])  # not contiguous
        # grads with no sparse dim: one value block that is the whole tensor
        self.scalar = nn.Parameter(torch.tensor(0.7, dtype=dtype))  # 0-dim, as torch's tests have
        self.whole = nn.Parameter(torch.randn(2, 3, dtype=dtype))

    def loss(self, step: int) -> torch.Tensor:
        idx = torch.tensor(_LOOKUPS[step])
        loss = (self.table(idx).sin() * torch.arange(3)).sum()
        if step != 3:
            loss = loss + self.wide(idx % 6).pow(2).sum()
        return loss


def sparse_adam_side_by_side(entry: Any, backend: str, config: dict, dtype: torch.dtype) -> None:
    models = [_Embeddings(dtype) for _ in range(2)]
    ours = entry.ours(models[0].parameters(), backend=backend, **config)
    ref = entry.torch_cls(models[1].parameters(), **entry.torch_kwargs(config))
    for i in range(len(_LOOKUPS)):
        for model, opt in zip(models, (ours, ref)):
            opt.zero_grad()
            model.loss(i).backward()
            # a strided dense param with a sparse grad built by hand: rows 0 and 3
            g = torch.zeros_like(model.strided)
            g[[0, 3]] = 0.5 + i
            model.strided.grad = g.to_sparse(sparse_dim=1)
            model.scalar.grad = torch.tensor(0.1 * (i + 1), dtype=dtype).to_sparse()
            whole = torch.full((1, 2, 3), 0.2 - 0.1 * i, dtype=dtype)  # to_sparse refuses dim 0
            model.whole.grad = torch.sparse_coo_tensor(torch.zeros(0, 1, dtype=torch.long), whole)
            opt.step()
        for (name, p), q in zip(models[0].named_parameters(), models[1].parameters()):
            where = f"{name} after step {i}"
            torch.testing.assert_close(p, q, msg=lambda m, w=where: f"param {w}: {m}")
            assert_same_state(ours.state.get(p, {}), ref.state.get(q, {}), where)
