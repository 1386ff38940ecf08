r"""L-BFGS: a quasi-Newton method that keeps the last ``history_size`` curvature pairs.

Each iteration of one ``step(closure)`` works on the params as one flat vector :math:`x`:

.. math::
    s_k &= t_{k-1} d_{k-1}, \qquad y_k = g_k - g_{k-1}
        \qquad \text{(kept only when } y_k^\top s_k > 10^{-10}\text{)}        \\
    d_k &= -H_k g_k \quad \text{(two-loop recursion from }
        H^0_k = \tfrac{y_k^\top s_k}{y_k^\top y_k} I)                              \\
    x_{k+1} &= x_k + t_k d_k

with :math:`t_k` = ``lr`` (the first iteration ever scales it by :math:`\min(1, 1/\|g\|_1)`),
or the step a strong Wolfe line search finds from there (``line_search_fn="strong_wolfe"``:
bracketing, then zoom, both picking trial points by cubic interpolation). An iteration loop ends at
``max_iter`` iterations, ``max_eval`` closure calls, a gradient below ``tolerance_grad`` (max
norm), or a step or loss change below ``tolerance_change``. (Nocedal & Wright, "Numerical
Optimization", algorithms 7.4 and 3.5-3.6.) ``maximize`` runs all of it on the negated loss and
gradient (torch.optim.LBFGS has the flag from torch 2.14).

State, kept on the first param as torch.optim does (so state_dicts cross over): ``func_evals``,
``n_iter`` (ints), ``d``, ``t``, ``old_dirs`` (the y's), ``old_stps`` (the s's), ``ro``
(:math:`1/y^\top s`), ``H_diag``, ``prev_flat_grad``, ``prev_loss`` and ``al`` (the first loop's
coefficients, kept as scratch).

Backends: ``forloop`` (flat-vector math in torch's ops and order) and ``compiled`` (the history
in a fixed-size ring so that one graph serves every history length; see lbfgs_compiled). Not
``foreach``: all the work is on one flat vector already. In both, the closure calls and the strong
Wolfe line search (data-dependent Python control flow around them) run in Python.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor

from ._optimizer import WorkbenchOptimizer, check_arguments, group_defaults
from .lbfgs_compiled import CompiledWork, ring_for_step
from .lbfgs_line_search import strong_wolfe

Number = float | Tensor


def _two_loop(
    flat_grad: Tensor,
    old_dirs: list[Tensor],
    old_stps: list[Tensor],
    ro: list[Tensor],
    h_diag: Number,
    al: list[Any],
) -> Tensor:
    """-H g by the two-loop recursion, in one buffer; fills ``al`` with the first loop's
    coefficients (torch keeps them in state)."""
    q = flat_grad.neg()
    for i in reversed(range(len(old_dirs))):
        al[i] = old_stps[i].dot(q) * ro[i]
        q.add_(old_dirs[i], alpha=-al[i])
    r = torch.mul(q, h_diag)
    for i in range(len(old_dirs)):
        beta = old_dirs[i].dot(r) * ro[i]
        r.add_(old_stps[i], alpha=al[i] - beta)
    return r


class LBFGS(WorkbenchOptimizer):
    """L-BFGS (see the module docstring) with torch.optim.LBFGS's signature.

    One param group only, as torch. ``step(closure)`` needs the closure: it re-evaluates the loss
    and its gradient many times per step. Extra keyword: ``backend`` ("forloop" or "compiled";
    None = forloop).

    Memory: torch's history lists grow to ``2 * history_size * n`` elements (n: the params' total
    size, complex ones counted twice). The compiled backend allocates those up front at its first
    step, as two ``[history_size, n]`` buffers, plus three n-element ones (d, the previous and the
    current flat grad); its ``state_dict()`` holds views of the buffers, and ``torch.save`` writes
    the whole buffers, filled or not.
    """

    backends = ("forloop", "compiled")
    needs_closure = True  # step(closure) re-evaluates the loss, many times per step
    state_names = ()
    update_functions = {}
    has_step = False
    elementwise = False
    # one iteration, history full: read param, grad, prev grad and each s and y twice (once per
    # loop); write param, d, prev grad and the new (s, y) pair; see tensors_moved
    tensors_read = 3
    tensors_written = 5

    def __init__(
        self,
        params: Iterable[Any],
        lr: float | Tensor = 1,
        max_iter: int = 20,
        max_eval: int | None = None,
        tolerance_grad: float = 1e-7,
        tolerance_change: float = 1e-9,
        history_size: int = 100,
        line_search_fn: str | None = None,
        *,
        maximize: bool = False,
        backend: str | None = None,
    ) -> None:
        check_arguments(lr=lr)
        if max_eval is None:
            max_eval = max_iter * 5 // 4
        super().__init__(params, group_defaults(locals()), backend=backend)
        if len(self.param_groups) != 1:
            raise ValueError("LBFGS doesn't support per-parameter options (parameter groups)")
        self._params: list[Tensor] = self.param_groups[0]["params"]

    def __setstate__(self, state: dict[str, Any]) -> None:
        # torch.optim.Optimizer's, not the base class's: LBFGS has no foreach/differentiable/...
        # flags; torch's state_dicts before 2.14 have no maximize either
        torch.optim.Optimizer.__setstate__(self, state)
        for group in self.param_groups:
            group.setdefault("backend", None)
            group.setdefault("maximize", False)

    @classmethod
    def tensors_moved(cls, **flags: Any) -> tuple[int, int]:
        """Per step of ``max_iter`` iterations with a full history (no line search)."""
        history = flags.get("history_size", 100)
        iters = flags.get("max_iter", 20)
        return iters * (cls.tensors_read + 4 * history), iters * cls.tensors_written

    # ---- the step -----------------------------------------------------------------------------

    def _work(self, state: dict[str, Any], group: dict[str, Any]) -> ForloopWork | CompiledWork:
        """The per-iteration tensor work of this step, in the group's backend."""
        maximize = group["maximize"]
        if self.resolve_backend(group, self._params) != "compiled":
            return ForloopWork(self._params, state, group["history_size"], maximize)
        # the ring outlives the step (its buffers are the state's storage), not a pickle or a
        # deepcopy of the optimizer: then it is rebuilt from the state
        self._ring = ring_for_step(
            getattr(self, "_ring", None), self._params, state, group["history_size"]
        )
        return CompiledWork(self._ring, self._params, maximize)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any]) -> Any:  # type: ignore[override]
        """Run up to ``max_iter`` L-BFGS iterations; returns the closure's first loss."""
        group = self.param_groups[0]
        closure = torch.enable_grad()(closure)
        if not self._params:
            # nothing to optimize (a group given an empty list): the caller still gets its loss,
            # as from torch 2.14 (the state below is keyed on the first param)
            return closure()
        # what the iterations minimize: the loss, or its negation to maximize (the work objects
        # negate the gradients to match)
        sign = -1.0 if group["maximize"] else 1.0

        def objective() -> float:
            return sign * float(closure())

        lr = group["lr"]
        if isinstance(lr, Tensor) and lr.dim() != 0:
            lr = lr.squeeze()
        max_iter, max_eval = group["max_iter"], group["max_eval"]
        tol_grad, tol_change = group["tolerance_grad"], group["tolerance_change"]

        state = self.state[self._params[0]]
        state.setdefault("func_evals", 0)
        state.setdefault("n_iter", 0)
        work = self._work(state, group)

        first_loss = closure()
        loss = sign * float(first_loss)
        evals = 1
        state["func_evals"] += 1
        flat_grad, grad_max = work.gather()
        if grad_max <= tol_grad:
            return first_loss  # already optimal: state untouched past the counters

        d, t, prev_loss = state.get("d"), state.get("t"), state.get("prev_loss")
        for it in range(1, max_iter + 1):
            state["n_iter"] += 1
            if state["n_iter"] == 1:
                d, gtd = work.first_direction(flat_grad)
                # the very first step is scaled down by the gradient's size: no curvature yet
                t = min(1.0, 1.0 / flat_grad.abs().sum()) * lr
            else:
                d, gtd = work.next_direction(flat_grad, d, t)
                t = lr
            prev_loss = loss
            if gtd > -tol_change:  # not a descent direction any more
                break

            if group["line_search_fn"] is not None:
                if group["line_search_fn"] != "strong_wolfe":
                    raise RuntimeError("only 'strong_wolfe' is supported")
                x = [p.clone(memory_format=torch.contiguous_format) for p in self._params]
                loss, flat_grad, t, ls_evals = strong_wolfe(
                    lambda x, t, d: work.evaluate_along(objective, x, t, d),
                    x, t, d, loss, flat_grad, gtd, max_ls=max_eval - evals,
                )  # fmt: skip
                step_max = work.advance(t, d)
                optimal = flat_grad.abs().max() <= tol_grad
            else:
                step_max = work.advance(t, d)
                ls_evals = 0
                optimal = False
                if it != max_iter:  # the last iteration's loss would only be thrown away
                    loss = objective()
                    flat_grad, grad_max = work.gather()
                    optimal = grad_max <= tol_grad
                    ls_evals = 1
            evals += ls_evals
            state["func_evals"] += ls_evals

            if it == max_iter or evals >= max_eval or optimal:
                break
            if step_max <= tol_change or abs(loss - prev_loss) < tol_change:
                break  # no progress left to make

        work.save(state)
        state.update(d=d, t=t, prev_loss=prev_loss)
        return first_loss


class ForloopWork:
    """The per-iteration tensor work of LBFGS.step in torch's own ops and order (the forloop
    backend, the reference). lbfgs_compiled.CompiledWork has the same methods."""

    def __init__(
        self, params: list[Tensor], state: dict[str, Any], history_size: int, maximize: bool
    ) -> None:
        self.params = params
        self.maximize = maximize
        self.state = state
        self.history_size = history_size
        self.old_dirs, self.old_stps = state.get("old_dirs"), state.get("old_stps")
        self.ro, self.h_diag = state.get("ro"), state.get("H_diag")
        self.prev_flat_grad = state.get("prev_flat_grad")

    def gather(self) -> tuple[Tensor, Tensor]:
        """The params' grads as one flat vector, and its max norm."""
        flat_grad = self._flat_grad()
        return flat_grad, flat_grad.abs().max()

    def _flat_grad(self) -> Tensor:
        pieces = []
        for p in self.params:
            if p.grad is None:
                g = p.new_zeros(p.numel())
            elif p.grad.is_sparse:
                g = p.grad.to_dense().view(-1)
            else:
                g = p.grad.view(-1)
            pieces.append(torch.view_as_real(g).view(-1) if g.is_complex() else g)
        flat = torch.cat(pieces)
        return flat.neg_() if self.maximize else flat

    def first_direction(self, flat_grad: Tensor) -> tuple[Tensor, Tensor]:
        """d = -g, the history empty; returns d and g.d."""
        self.old_dirs, self.old_stps, self.ro = [], [], []
        self.h_diag = 1
        d = flat_grad.neg()
        self._keep_grad(flat_grad)
        return d, flat_grad.dot(d)

    def next_direction(self, flat_grad: Tensor, d: Tensor, t: Number) -> tuple[Tensor, Tensor]:
        """The last step's (y, s) pair into the history, then d = -H g; returns d and g.d."""
        y = flat_grad.sub(self.prev_flat_grad)
        s = d.mul(t)
        ys = y.dot(s)
        if ys > 1e-10:  # keep only pairs of positive curvature: H stays positive definite
            if len(self.old_dirs) == self.history_size:
                del self.old_dirs[0], self.old_stps[0], self.ro[0]
            self.old_dirs.append(y)
            self.old_stps.append(s)
            self.ro.append(1.0 / ys)
            self.h_diag = ys / y.dot(y)
        al = self.state.setdefault("al", [None] * self.history_size)
        d = _two_loop(flat_grad, self.old_dirs, self.old_stps, self.ro, self.h_diag, al)
        self._keep_grad(flat_grad)
        return d, flat_grad.dot(d)

    def _keep_grad(self, flat_grad: Tensor) -> None:
        if self.prev_flat_grad is None:
            self.prev_flat_grad = flat_grad.clone(memory_format=torch.contiguous_format)
        else:
            self.prev_flat_grad.copy_(flat_grad)

    def move(self, t: Number, d: Tensor) -> None:
        """x += t * d, d cut back into the params' shapes (complex ones as their real view)."""
        offset = 0
        for p in self.params:
            real = torch.view_as_real(p) if p.is_complex() else p
            n = real.numel()
            real.add_(d[offset : offset + n].view_as(real), alpha=t)
            offset += n

    def advance(self, t: Number, d: Tensor) -> Tensor:
        """x += t * d; returns max |t d| (the no-progress check's)."""
        self.move(t, d)
        return d.mul(t).abs().max()

    def evaluate_along(
        self, objective: Callable[[], float], x: list[Tensor], t: Number, d: Tensor
    ) -> tuple[float, Tensor]:
        """Objective and flat grad at x + t d; the params are put back to x afterwards."""
        self.move(t, d)
        loss = objective()
        flat_grad = self._flat_grad()
        for p, saved in zip(self.params, x):
            p.copy_(saved)
        return loss, flat_grad

    def save(self, state: dict[str, Any]) -> None:
        state.update(
            old_dirs=self.old_dirs, old_stps=self.old_stps, ro=self.ro, H_diag=self.h_diag,
            prev_flat_grad=self.prev_flat_grad,
        )  # fmt: skip
