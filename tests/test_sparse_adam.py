"""SparseAdam beyond the table: its refusals (in torch's words) and what the mask leaves alone."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from workbench.optim import SparseAdam

CLASSES = [pytest.param(SparseAdam, id="ours"), pytest.param(torch.optim.SparseAdam, id="torch")]


@pytest.mark.parametrize("cls", CLASSES)
def test_refuses_sparse_and_complex_params(cls: type) -> None:
    sparse = torch.zeros(3, layout=torch.sparse_coo)
    with pytest.raises(ValueError, match="SparseAdam requires dense parameter tensors"):
        cls([sparse])
    with pytest.raises(ValueError, match=r"Sparse params at indices \[\[0, 0\]\]"):
        cls([{"params": [sparse]}])
    with pytest.raises(ValueError, match="SparseAdam does not support complex parameters"):
        cls([torch.rand(2, 3, dtype=torch.complex64)])


@pytest.mark.parametrize("cls", CLASSES)
def test_refuses_dense_grads(cls: type) -> None:
    p = torch.randn(4, 2, requires_grad=True)
    p.grad = torch.ones(4, 2)
    with pytest.raises(
        RuntimeError,
        match="SparseAdam does not support dense gradients, please consider Adam instead",
    ):
        cls([p]).step()


def test_has_only_the_forloop_backend() -> None:
    p = [torch.randn(2, requires_grad=True)]
    with pytest.raises(TypeError):
        SparseAdam(p, foreach=True)  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="not implemented for SparseAdam"):
        SparseAdam(p, backend="foreach")


def test_rows_absent_from_the_grad_are_untouched() -> None:
    torch.manual_seed(0)
    emb = nn.Embedding(8, 3, sparse=True)
    opt = SparseAdam(emb.parameters(), lr=0.1)
    emb(torch.tensor([1, 1, 5])).sum().backward()
    opt.step()
    emb.zero_grad()
    before = emb.weight.detach().clone()
    m_before = opt.state[emb.weight]["exp_avg"].clone()
    emb(torch.tensor([2])).sum().backward()
    opt.step()
    changed = (emb.weight != before).any(1)
    assert changed.tolist() == [i == 2 for i in range(8)]
    m = opt.state[emb.weight]["exp_avg"]
    assert torch.equal(m[[0, 1, 3, 4, 5, 6, 7]], m_before[[0, 1, 3, 4, 5, 6, 7]])
    assert opt.state[emb.weight]["step"] == 2  # one count per param, not per row


def test_empty_grad_advances_the_step_only() -> None:
    p = torch.randn(4, 2, requires_grad=True)
    before = p.detach().clone()
    opt = SparseAdam([p])
    p.grad = torch.sparse_coo_tensor(torch.empty(1, 0, dtype=torch.long), torch.empty(0, 2), (4, 2))
    opt.step()
    assert torch.equal(p, before) and opt.state[p]["step"] == 1
