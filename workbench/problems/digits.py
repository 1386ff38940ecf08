"""Classifiers on scikit-learn's bundled 8x8 digits (1797 images, 10 classes; shipped inside the
package, no download): multinomial logistic regression (convex) and a small MLP (not).

Full batch over all images: the loss is a function of the params alone, so every implementation
sees exactly the same data at every step and trajectories can be compared point by point.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import cache

import torch
import torch.nn.functional as F
from torch import Tensor

from ._problem import Problem, leaves

N_FEATURES, N_CLASSES, HIDDEN = 64, 10, 32


@cache
def _digits_cpu() -> tuple[Tensor, Tensor]:
    from sklearn.datasets import load_digits  # imported here: only these problems need it

    data = load_digits()
    # Pixels are 0..16; centred and scaled so that default learning rates suit the problem.
    x = torch.as_tensor(data.data, dtype=torch.float32) / 16.0
    x = (x - x.mean(0)) / (x.std(0) + 0.1)
    return x, torch.as_tensor(data.target, dtype=torch.long)


@cache
def digits(dtype: torch.dtype, device: torch.device) -> tuple[Tensor, Tensor]:
    """(features [1797, 64] in `dtype`, labels [1797] int64) on `device`."""
    x, y = _digits_cpu()
    return x.to(device=device, dtype=dtype), y.to(device)


def _linear_init(gen: torch.Generator, fan_in: int, fan_out: int) -> tuple[Tensor, Tensor]:
    # nn.Linear's default: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weight and bias.
    bound = 1 / math.sqrt(fan_in)
    weight = (torch.rand(fan_in, fan_out, generator=gen) * 2 - 1) * bound
    bias = (torch.rand(fan_out, generator=gen) * 2 - 1) * bound
    return weight, bias


def _logistic_params(seed: int, dtype: torch.dtype, device: torch.device) -> list[Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return leaves(_linear_init(gen, N_FEATURES, N_CLASSES), dtype, device)


def logistic_loss(params: Sequence[Tensor]) -> Tensor:
    weight, bias = params
    x, y = digits(weight.dtype, weight.device)
    return F.cross_entropy(x @ weight + bias, y)


def _mlp_params(seed: int, dtype: torch.dtype, device: torch.device) -> list[Tensor]:
    gen = torch.Generator().manual_seed(seed)
    w1, b1 = _linear_init(gen, N_FEATURES, HIDDEN)
    w2, b2 = _linear_init(gen, HIDDEN, N_CLASSES)
    return leaves([w1, b1, w2, b2], dtype, device)


def mlp_loss(params: Sequence[Tensor]) -> Tensor:
    w1, b1, w2, b2 = params
    x, y = digits(w1.dtype, w1.device)
    # tanh, not relu: a smooth loss, so no step of one implementation lands on a kink that a
    # rounding difference puts on the other side for another.
    return F.cross_entropy(torch.tanh(x @ w1 + b1) @ w2 + b2, y)


DIGITS_PROBLEMS: tuple[Problem, ...] = (
    Problem(
        name="logistic-digits",
        description="multinomial logistic regression on sklearn's 8x8 digits, full batch",
        make_params=_logistic_params,
        loss=logistic_loss,
        target_loss=0.2,
    ),
    Problem(
        name="mlp-digits",
        description=f"MLP 64-{HIDDEN}-10 (tanh) on sklearn's 8x8 digits, full batch",
        make_params=_mlp_params,
        loss=mlp_loss,
        target_loss=0.1,
    ),
)
