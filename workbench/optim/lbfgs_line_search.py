"""Strong Wolfe line search for L-BFGS: bracketing, then zoom, by cubic interpolation.

A step ``t`` along the descent direction ``d`` from loss ``f`` with slope ``gtd`` (= g.d < 0) is
accepted when it satisfies both strong Wolfe conditions:
  sufficient decrease:  f(t) <= f + c1 t gtd
  curvature:            |g(t).d| <= -c2 gtd
(Nocedal & Wright, "Numerical Optimization", algorithms 3.5 and 3.6; the trial points and
safeguards follow minFunc's, as torch.optim.LBFGS does, so that the two take the same steps.)
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

Number = float | Tensor
Evaluate = Callable[[list[Tensor], Number, Tensor], tuple[float, Tensor]]


def cubic_minimizer(
    x1: Number,
    f1: Number,
    g1: Number,
    x2: Number,
    f2: Number,
    g2: Number,
    bounds: tuple[Number, Number] | None = None,
) -> Number:
    """Minimizer of the cubic through (x1, f1) and (x2, f2) with slopes g1, g2, clamped to
    ``bounds`` (default: between the two points); their midpoint when the cubic has none."""
    lo, hi = bounds if bounds is not None else ((x1, x2) if x1 <= x2 else (x2, x1))
    # the cubic's critical points solve a quadratic; its discriminant is d1^2 - g1 g2
    d1 = g1 + g2 - 3 * (f1 - f2) / (x1 - x2)
    disc = d1**2 - g1 * g2
    if disc < 0:
        return (lo + hi) / 2.0
    d2 = disc.sqrt()
    # written from the point with the larger x, the form that is stable in floating point
    if x1 <= x2:
        t = x2 - (x2 - x1) * ((g2 + d2 - d1) / (g2 - g1 + 2 * d2))
    else:
        t = x1 - (x1 - x2) * ((g1 + d2 - d1) / (g1 - g2 + 2 * d2))
    return min(max(t, lo), hi)


class _Point:
    """One evaluated trial step: t, loss, flat grad, slope along d."""

    __slots__ = ("t", "f", "g", "gtd")

    def __init__(self, t: Number, f: Number, g: Tensor, gtd: Number) -> None:
        self.t, self.f, self.g, self.gtd = t, f, g, gtd


def strong_wolfe(
    evaluate: Evaluate,
    x: list[Tensor],
    t: Number,
    d: Tensor,
    f: float,
    g: Tensor,
    gtd: Number,
    c1: float = 1e-4,
    c2: float = 0.9,
    tolerance_change: float = 1e-9,
    max_ls: int = 25,
) -> tuple[float, Tensor, Number, int]:
    """Search along d from x; returns (loss, flat grad, step, closure calls).

    ``evaluate(x, t, d)`` gives the loss and flat grad at x + t d and leaves the params at x.
    """
    d_max = d.abs().max()
    evals = 0

    def at(step: Number) -> _Point:
        nonlocal evals
        loss, grad = evaluate(x, step, d)
        evals += 1
        return _Point(step, loss, grad, grad.dot(d))

    def sufficient_decrease(p: _Point) -> bool:
        return bool(p.f <= f + c1 * p.t * gtd)

    def curvature_ok(p: _Point) -> bool:
        return bool(abs(p.gtd) <= -c2 * gtd)

    # 1. bracketing: grow t until [prev, new] must hold an acceptable step, or new is one
    start = _Point(0, f, g.clone(), gtd)
    prev = start
    new = at(t)
    bracket: list[_Point] = []
    done = False
    tries = 0
    while tries < max_ls:
        if not sufficient_decrease(new) or (tries > 1 and new.f >= prev.f):
            bracket = [prev, _Point(new.t, new.f, new.g.clone(), new.gtd)]
            break
        if curvature_ok(new):
            bracket, done = [new], True
            break
        if new.gtd >= 0:  # past a minimum along d
            bracket = [prev, _Point(new.t, new.f, new.g.clone(), new.gtd)]
            break
        # extrapolate: at least 1% past the current step, at most 10 times it
        lo, hi = new.t + 0.01 * (new.t - prev.t), new.t * 10
        step = cubic_minimizer(prev.t, prev.f, prev.gtd, new.t, new.f, new.gtd, bounds=(lo, hi))
        prev = _Point(new.t, new.f, new.g.clone(), new.gtd)
        new = at(step)
        tries += 1
    if tries == max_ls:  # out of evaluations: what is known so far, zoom cannot run
        bracket = [start, new]

    # 2. zoom: shrink the bracket around its low point until a step satisfies both conditions
    low, high = (0, 1) if bracket[0].f <= bracket[-1].f else (1, 0)
    stalled = False
    while not done and tries < max_ls:
        ts = [p.t for p in bracket]
        if abs(ts[1] - ts[0]) * d_max < tolerance_change:
            break
        a, b = bracket
        step = cubic_minimizer(a.t, a.f, a.gtd, b.t, b.f, b.gtd)
        # keep trial points away from the bracket's ends: 10% of its width, at once when the
        # point is at (or past) an end, else when it was too close twice in a row
        margin = 0.1 * (max(ts) - min(ts))
        if min(max(ts) - step, step - min(ts)) < margin:
            if stalled or step >= max(ts) or step <= min(ts):
                if abs(step - max(ts)) < abs(step - min(ts)):
                    step = max(ts) - margin
                else:
                    step = min(ts) + margin
                stalled = False
            else:
                stalled = True
        else:
            stalled = False
        new = at(step)
        tries += 1
        kept = _Point(new.t, new.f, new.g.clone(), new.gtd)
        if not sufficient_decrease(new) or new.f >= bracket[low].f:
            bracket[high] = kept
            low, high = (0, 1) if bracket[0].f <= bracket[1].f else (1, 0)
        else:
            if curvature_ok(new):
                done = True
            elif new.gtd * (bracket[high].t - bracket[low].t) >= 0:
                bracket[high] = bracket[low]  # the slope says the minimum is on the other side
            bracket[low] = kept

    best = bracket[low]
    return best.f, best.g, best.t, evals
