"""Matrix factorization: user and item embedding tables fit to a generated low-rank ratings
matrix from mini-batches of its observed entries, the problem where every param gets a sparse
grad (``nn.Embedding(sparse=True)``), for SparseAdam beside Adam on the same batches.

The ratings are ``U* V*^T`` of rank ``RANK`` (noise-free, so the best fit has loss 0), of which
a fixed ``OBSERVED`` fraction is seen. A step's batch is ``BATCH`` observed entries: one epoch is
a fixed permutation of them per epoch index, so step k's batch is the same in every run. A batch
touches a minority of the users' and items' rows, which is when lazy updates (SparseAdam moves
only those rows) and dense ones (Adam's momentum moves every row) part ways. Everything is made
from fixed seeds; nothing is downloaded.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache

import torch
import torch.nn.functional as F
from torch import Tensor

from ._problem import Problem, leaves

N_USERS, N_ITEMS, RANK, DIM = 300, 200, 4, 8
OBSERVED = 0.2  # fraction of the ratings matrix seen: 12,000 entries
BATCH = 128  # touches at most 128 of 300 user rows and of 200 item rows
_DATA_SEED = 0
_INIT_STD = 0.3


@cache
def _ratings_cpu() -> tuple[Tensor, Tensor, Tensor]:
    """(user ids, item ids, ratings) of the observed entries; ratings have variance ~1."""
    gen = torch.Generator().manual_seed(_DATA_SEED)
    # entries of U* and V* with variance RANK^-1/2, so that each rating (a sum of RANK
    # products) has variance 1 and a default learning rate suits it
    scale = RANK**-0.25
    users_true = torch.randn(N_USERS, RANK, generator=gen) * scale
    items_true = torch.randn(N_ITEMS, RANK, generator=gen) * scale
    n_observed = round(OBSERVED * N_USERS * N_ITEMS)
    seen = torch.randperm(N_USERS * N_ITEMS, generator=gen)[:n_observed]
    users, items = seen // N_ITEMS, seen % N_ITEMS
    ratings = (users_true[users] * items_true[items]).sum(1)
    return users, items, ratings


@cache
def ratings(dtype: torch.dtype, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """(user ids [n] int64, item ids [n] int64, ratings [n] in `dtype`) on `device`."""
    users, items, values = _ratings_cpu()
    return users.to(device), items.to(device), values.to(device=device, dtype=dtype)


@cache
def _epoch_order(epoch: int) -> Tensor:
    gen = torch.Generator().manual_seed(_DATA_SEED + 1 + epoch)
    return torch.randperm(len(_ratings_cpu()[2]), generator=gen)


def batch_entries(step: int) -> Tensor:
    """Indices (into the observed entries) of step `step`'s batch; the last of an epoch may be
    short."""
    per_epoch = -(-len(_ratings_cpu()[2]) // BATCH)
    epoch, k = divmod(step, per_epoch)
    return _epoch_order(epoch)[k * BATCH : (k + 1) * BATCH]


def _mse(params: Sequence[Tensor], entries: Tensor | None, sparse: bool) -> Tensor:
    user_table, item_table = params
    users, items, values = ratings(user_table.dtype, user_table.device)
    if entries is not None:
        entries = entries.to(user_table.device)
        users, items, values = users[entries], items[entries], values[entries]
    # F.embedding: its backward makes nn.Embedding's grads (sparse ones with sparse=True), and its
    # dense backward sums repeated rows in a fixed order, so runs are repeatable
    predicted = (
        F.embedding(users, user_table, sparse=sparse)
        * F.embedding(items, item_table, sparse=sparse)
    ).sum(1)
    return F.mse_loss(predicted, values)


def mf_loss(params: Sequence[Tensor]) -> Tensor:
    """Mean squared error over every observed entry (what a run records)."""
    return _mse(params, None, sparse=False)


def mf_step_loss(params: Sequence[Tensor], step: int, sparse: bool) -> Tensor:
    """Mean squared error over step `step`'s batch (what a step differentiates)."""
    return _mse(params, batch_entries(step), sparse)


def _init(seed: int, dtype: torch.dtype, device: torch.device) -> list[Tensor]:
    gen = torch.Generator().manual_seed(seed)
    tables = [torch.randn(n, DIM, generator=gen) * _INIT_STD for n in (N_USERS, N_ITEMS)]
    return leaves(tables, dtype, device)


MF_PROBLEMS: tuple[Problem, ...] = (
    Problem(
        name="matrix-factorization",
        description=(
            f"user/item embeddings (dim {DIM}) fit to a rank-{RANK} {N_USERS}x{N_ITEMS} ratings "
            f"matrix, {OBSERVED:.0%} observed, batches of {BATCH}; sparse grads available"
        ),
        make_params=_init,
        loss=mf_loss,
        target_loss=0.3,
        optimum_loss=0.0,
        step_loss=mf_step_loss,
        sparse_grads=True,
    ),
)
