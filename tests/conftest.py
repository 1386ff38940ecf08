"""Test-wide setup. Runs before any test module imports torch's or triton's kernels."""

from __future__ import annotations

import os

import pytest
import torch

# Without a GPU, the fused backend's Triton kernels run on CPU tensors through Triton's
# interpreter. It must be switched on before triton is first imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

HAS_CUDA = torch.cuda.is_available()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if HAS_CUDA:
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
