"""Closed-form test functions: Rosenbrock, Rastrigin and an ill-conditioned quadratic.

Their optima are known exactly, so a run's final loss says how far from solved it is, and the
2-D variants start from the points optimizer visualisations use, so trajectories can be drawn over
the classic contour plots.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import cache

import torch
from torch import Tensor

from ._problem import Problem, leaves

_CPU = torch.device("cpu")


def rosenbrock(params: Sequence[Tensor]) -> Tensor:
    """sum_i 100 (x_{i+1} - x_i^2)^2 + (1 - x_i)^2: a curved valley, minimum 0 at all ones."""
    x = params[0]
    return (100 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2).sum()


def rastrigin(params: Sequence[Tensor]) -> Tensor:
    """10 n + sum_i x_i^2 - 10 cos(2 pi x_i): a bowl of regularly spaced local minima around the
    global one, 0 at the origin."""
    x = params[0]
    return 10 * x.numel() + (x**2 - 10 * torch.cos(2 * math.pi * x)).sum()


def _fixed_start(*coords: float):
    def make_params(seed: int, dtype: torch.dtype, device: torch.device) -> list[Tensor]:
        # The classic start points: the seed plays no part, every run draws the same picture.
        return leaves([torch.tensor(coords, dtype=torch.float32)], dtype, device)

    return make_params


def _seeded_start(n: int, low: float, high: float):
    def make_params(seed: int, dtype: torch.dtype, device: torch.device) -> list[Tensor]:
        gen = torch.Generator().manual_seed(seed)
        return leaves([low + (high - low) * torch.rand(n, generator=gen)], dtype, device)

    return make_params


def _extended_rosenbrock_start(n: int):
    def make_params(seed: int, dtype: torch.dtype, device: torch.device) -> list[Tensor]:
        # (-1.2, 1, -1.2, 1, ...) is the standard start of the n-D function (More, Garbow and
        # Hillstrom 1981); the seed nudges it so that different seeds are different runs.
        start = torch.tensor([-1.2, 1.0]).repeat(n // 2)
        gen = torch.Generator().manual_seed(seed)
        return leaves([start + 0.1 * torch.randn(n, generator=gen)], dtype, device)

    return make_params


def _constant_optimum(value: float, n: int):
    def optimum(dtype: torch.dtype, device: torch.device) -> list[Tensor]:
        return leaves([torch.full((n,), value)], dtype, device)

    return optimum


# --- ill-conditioned quadratic ---------------------------------------------------------------

QUADRATIC_SHAPES: tuple[tuple[int, ...], ...] = ((10, 5), (30,), (20,))  # 100 coordinates
QUADRATIC_CONDITION = 1e3
_QUADRATIC_SEED = 1234  # fixes the problem (its rotation and minimiser); `seed` picks the start


@cache
def _quadratic_data(dtype: torch.dtype, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """(Q, eigenvalues, x*): 0.5 (x - x*)^T Q diag(lam) Q^T (x - x*), lam log-spaced from
    1/condition to 1. A random rotation Q so that no coordinate-wise optimizer gets the axes for
    free; made in float64 and rounded once, so every dtype sees the same problem."""
    n = sum(math.prod(s) for s in QUADRATIC_SHAPES)
    gen = torch.Generator().manual_seed(_QUADRATIC_SEED)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=torch.float64))
    lam = torch.logspace(-math.log10(QUADRATIC_CONDITION), 0, n, dtype=torch.float64)
    x_star = torch.randn(n, generator=gen, dtype=torch.float64)
    return tuple(t.to(device=device, dtype=dtype) for t in (q, lam, x_star))  # type: ignore[return-value]


def quadratic(params: Sequence[Tensor]) -> Tensor:
    q, lam, x_star = _quadratic_data(params[0].dtype, params[0].device)
    # x - x* is exactly 0 at the optimum in every dtype, so loss and gradient are exactly 0 there.
    z = q.T @ (torch.cat([p.reshape(-1) for p in params]) - x_star)
    return 0.5 * (lam * z * z).sum()


def _split(flat: Tensor) -> list[Tensor]:
    sizes = [math.prod(s) for s in QUADRATIC_SHAPES]
    return [c.reshape(s) for c, s in zip(flat.split(sizes), QUADRATIC_SHAPES)]


def _quadratic_start(seed: int, dtype: torch.dtype, device: torch.device) -> list[Tensor]:
    _, _, x_star = _quadratic_data(torch.float32, _CPU)
    gen = torch.Generator().manual_seed(seed)
    return leaves(_split(x_star + torch.randn(x_star.shape, generator=gen)), dtype, device)


def quadratic_optimum(dtype: torch.dtype, device: torch.device) -> list[Tensor]:
    # x* as the loss rounds it in this dtype (not via float32: rounding twice may differ)
    _, _, x_star = _quadratic_data(dtype, device)
    return leaves(_split(x_star), dtype, device)


# --- the registry entries --------------------------------------------------------------------

ND = 100

FUNCTION_PROBLEMS: tuple[Problem, ...] = (
    Problem(
        name="rosenbrock-2d",
        description="Rosenbrock's banana valley from (-1.5, 2), minimum 0 at (1, 1)",
        make_params=_fixed_start(-1.5, 2.0),
        loss=rosenbrock,
        target_loss=1e-3,
        optimum_loss=0.0,
        optimum=_constant_optimum(1.0, 2),
    ),
    Problem(
        name="rastrigin-2d",
        description="Rastrigin's egg crate from (-2, 3.5), minimum 0 at (0, 0)",
        make_params=_fixed_start(-2.0, 3.5),
        loss=rastrigin,
        target_loss=1.0,
        optimum_loss=0.0,
        optimum=_constant_optimum(0.0, 2),
    ),
    Problem(
        name="rosenbrock-nd",
        description=f"extended Rosenbrock in {ND}-D from about (-1.2, 1, ...), minimum 0 at ones",
        make_params=_extended_rosenbrock_start(ND),
        loss=rosenbrock,
        target_loss=1.0,
        optimum_loss=0.0,
        optimum=_constant_optimum(1.0, ND),
    ),
    Problem(
        name="rastrigin-nd",
        description=f"Rastrigin in {ND}-D from uniform [-5.12, 5.12], minimum 0 at the origin",
        make_params=_seeded_start(ND, -5.12, 5.12),
        loss=rastrigin,
        target_loss=100.0,
        optimum_loss=0.0,
        optimum=_constant_optimum(0.0, ND),
    ),
    Problem(
        name="quadratic",
        description=(
            f"rotated quadratic, {sum(math.prod(s) for s in QUADRATIC_SHAPES)} coordinates in 3 "
            f"tensors, condition number {QUADRATIC_CONDITION:.0e}, minimum 0 at a known point"
        ),
        make_params=_quadratic_start,
        loss=quadratic,
        target_loss=1e-2,
        optimum_loss=0.0,
        optimum=quadratic_optimum,
    ),
)
