"""LBFGS's compiled backend: each iteration's tensor work as three fixed-shape graphs.

torch.optim.LBFGS keeps its curvature history as Python lists that grow from 0 to
``history_size`` pairs; a graph traced over those lists has a different shape for every length
(100 of them by default, past dynamo's recompile limit). Here the history lives in a ring:

- ``dirs``, ``stps``: ``[history_size, n]`` buffers of the y's and s's, ``ro``: ``[history_size]``,
  ``ring = [count, start]`` (int64, on the device): the pairs held and the slot of the oldest.
  List index ``i`` (0 = oldest, torch's order) lives in slot ``(start + i) % history_size``.
- A slot that holds no pair has ``ro = 0`` (and zero rows), so in the two-loop recursion its
  ``alpha`` and ``beta`` are exactly 0 and it leaves ``q`` and ``r`` bit for bit as they were:
  the loops always run over all ``history_size`` slots, newest to oldest and back, and one graph
  serves every fill level, before and after the ring wraps.
- The loops are ``while_loop``s (a higher-order op, a prototype in torch 2.13, that inductor
  compiles as one loop), not Python loops unrolled at trace time: unrolled, the graph grows with
  ``history_size`` and inductor took 133 s to compile it for the default 100 on a 2-core CPU
  (16 s as a loop). Inductor's loop reads its condition on the host every trip: on CUDA that is a
  sync per history slot, as in torch's own LBFGS, whose 0-dim ``al[i]`` tensors passed as
  ``alpha`` are read on the host too. (Not measured here: no GPU on the machine it was built on.)

The graphs write their results into buffers they are given (the shared compiled wrapper returns
nothing): the new direction into ``d``, the reductions the convergence checks read into
``checks`` (``GRAD_MAX``, ``GTD``, ``STEP_MAX``). The closure calls and the strong Wolfe line
search stay in Python; the line search moves the params and gathers the flat grad with the same
graphs as the main loop.

State: between steps the ring is published into the optimizer's state in torch's format (lists of
views of the ring's rows, no copies), so ``state_dict()`` needs no conversion and loads into
torch.optim.LBFGS or the forloop backend. A state the ring did not publish itself (a loaded
state_dict, or steps of another backend) is copied into a fresh ring at the next step. Why views
rather than converting in state_dict()/load_state_dict(): ``opt.state`` is torch's format between
steps as well (the parity tests, and anyone reading it, see torch's keys and lists), at no copy.
Like every optimizer's state tensors, the views change in place as the ring advances (a row is
reused once the ring wraps): deepcopy a state_dict to keep it.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch import Tensor
from torch._higher_order_ops.while_loop import while_loop

from . import _backends

# positions in the `checks` buffer the graphs write their reductions into
GRAD_MAX, GTD, STEP_MAX = 0, 1, 2
# the state keys the ring publishes (and takes back when they are not its own)
HISTORY_KEYS = ("d", "old_dirs", "old_stps", "ro", "H_diag", "prev_flat_grad", "al")


# ---- the graphs (plain functions: `compiled()` turns each into one graph per problem shape) -----


def gather_flat_grad(grads: list[Tensor], out: Tensor, checks: Tensor, negate: bool) -> None:
    """The grads as one flat vector into ``out`` (negated to maximize); its max norm into
    ``checks[GRAD_MAX]``."""
    flat = torch.cat([g.reshape(-1) for g in grads])
    out.copy_(flat.neg() if negate else flat)
    checks[GRAD_MAX] = out.abs().max()


def move_params(params: list[Tensor], d: Tensor, t: Tensor, checks: Tensor) -> None:
    """x += t d, d cut back into the params' shapes; max |t d| into ``checks[STEP_MAX]``."""
    offset = 0
    for p in params:
        n = p.numel()
        p.add_(d[offset : offset + n].view(p.shape) * t)
        offset += n
    checks[STEP_MAX] = (d * t).abs().max()


def ring_direction(
    flat_grad: Tensor,
    prev_flat_grad: Tensor,
    d: Tensor,
    t: Tensor,
    h_diag: Tensor,
    dirs: Tensor,
    stps: Tensor,
    ro: Tensor,
    al: Tensor,
    ring: Tensor,
    checks: Tensor,
) -> None:
    """One L-BFGS iteration after the first: push the new (y, s) pair if its curvature is
    positive, then d = -H g by the two-loop recursion (into ``d``), g.d into ``checks[GTD]``,
    and g into ``prev_flat_grad``. ``al`` gets the first loop's coefficients by list index."""
    size = dirs.shape[0]
    count, start = ring[0], ring[1]
    y = flat_grad - prev_flat_grad
    s = d * t
    ys = y.dot(s)
    keep = ys > 1e-10  # only pairs of positive curvature keep H positive definite
    # the pair goes after the newest; when the ring is full that is the oldest's slot
    slot = ((start + count) % size).view(1)
    dirs.index_copy_(0, slot, torch.where(keep, y, dirs.index_select(0, slot)[0]).view(1, -1))
    stps.index_copy_(0, slot, torch.where(keep, s, stps.index_select(0, slot)[0]).view(1, -1))
    ro.index_copy_(0, slot, torch.where(keep, 1.0 / ys, ro.index_select(0, slot)[0]).view(1))
    h_diag.copy_(torch.where(keep, ys / y.dot(y), h_diag))
    start = torch.where(keep & (count == size), (start + 1) % size, start)
    count = torch.clamp(count + keep.long(), max=size)
    ring.copy_(torch.stack([count, start]))

    list_index = torch.arange(size, device=ring.device)
    slots = (start + list_index) % size

    def row(buffer: Tensor, i: Tensor) -> Tensor:
        return buffer.index_select(0, slots.index_select(0, i.view(1)))[0]

    def newest_to_oldest(i: Tensor, q: Tensor, alphas: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        alpha = row(stps, i).dot(q) * row(ro, i)
        return i - 1, q - alpha * row(dirs, i), torch.where(list_index == i, alpha, alphas)

    def oldest_to_newest(i: Tensor, r: Tensor) -> tuple[Tensor, Tensor]:
        beta = row(dirs, i).dot(r) * row(ro, i)
        alpha = alphas.index_select(0, i.view(1))[0]
        return i + 1, r + row(stps, i) * (alpha - beta)

    last = torch.full((), size - 1, dtype=torch.int64, device=ring.device)
    _, q, alphas = while_loop(
        lambda i, q, alphas: i >= 0,
        newest_to_oldest,
        (last, flat_grad.neg(), torch.zeros_like(al)),
    )
    _, r = while_loop(lambda i, r: i < size, oldest_to_newest, (torch.zeros_like(last), q * h_diag))
    al.copy_(alphas)
    d.copy_(r)
    checks[GTD] = flat_grad.dot(r)
    prev_flat_grad.copy_(flat_grad)


# ---- the ring and its buffers ---------------------------------------------------------------


class RingHistory:
    """The history and the per-iteration buffers of one LBFGS optimizer's compiled backend.

    Holds ``2 * history_size * n + 3 * n`` elements (the y and s rows, then d, the previous and
    the current flat grad) from the first step on; torch's lists grow to the same
    ``2 * history_size * n`` as the history fills.
    """

    def __init__(
        self, history_size: int, numel: int, dtype: torch.dtype, device: torch.device
    ) -> None:
        def zeros(*shape: int, dtype: torch.dtype = dtype) -> Tensor:
            return torch.zeros(shape, dtype=dtype, device=device)

        self.history_size, self.numel, self.dtype, self.device = history_size, numel, dtype, device
        self.dirs, self.stps = zeros(history_size, numel), zeros(history_size, numel)
        self.ro, self.al = zeros(history_size), zeros(history_size)
        self.ring = zeros(2, dtype=torch.int64)
        # (1 element, not 0-dim: inductor on CPU has dropped in-place updates of 0-dim tensors)
        self.h_diag = torch.ones(1, dtype=dtype, device=device)
        self.d, self.prev_flat_grad, self.flat_grad = zeros(numel), zeros(numel), zeros(numel)
        self.checks = zeros(3)
        # how many leading entries of torch's `al` hold values (None after them), and whether
        # the two-loop recursion ever ran (torch creates `al` then)
        self.al_filled = 0
        self.two_loop_ran = False
        self.published: dict[str, Any] = {}

    def fits(self, history_size: int, numel: int, dtype: torch.dtype, device: Any) -> bool:
        return (self.history_size, self.numel, self.dtype, self.device) == (
            history_size, numel, dtype, torch.device(device),
        )  # fmt: skip

    # ---- torch's state format ----------------------------------------------------------------

    def clear(self) -> None:
        """Forget every pair: the first iteration ever, as torch's lists start empty."""
        for buffer in (self.ring, self.ro, self.dirs, self.stps):
            buffer.zero_()
        self.h_diag.fill_(1.0)

    def load(self, state: dict[str, Any]) -> None:
        """Copy torch's lists (and d, H_diag, prev_flat_grad) from ``state`` into the ring."""
        old_dirs = state.get("old_dirs") or []
        count = len(old_dirs)
        if count > self.history_size:
            raise ValueError(
                f"LBFGS: the state holds {count} curvature pairs (state['old_dirs']) but "
                f"history_size is {self.history_size}; load it with history_size >= {count}"
            )
        if count:
            self.dirs[:count] = self._stacked(old_dirs)
            self.stps[:count] = self._stacked(state["old_stps"])
            self.ro[:count] = self._stacked(state["ro"])
        self.ring.copy_(torch.tensor([count, 0]))
        h_diag = state.get("H_diag")
        self.h_diag.copy_(torch.as_tensor(1.0 if h_diag is None else h_diag))
        for key, buffer in (("d", self.d), ("prev_flat_grad", self.prev_flat_grad)):
            if state.get(key) is not None:
                buffer.copy_(state[key])
        al = state.get("al")
        self.two_loop_ran = al is not None
        self.al_filled = 0
        for i, value in enumerate((al or [])[: self.history_size]):
            if value is None:
                break
            self.al[i] = torch.as_tensor(value)
            self.al_filled = i + 1

    def _stacked(self, values: list[Any]) -> Tensor:
        # (a new tensor: the values may be views of another ring's rows)
        return torch.stack(
            [torch.as_tensor(v, dtype=self.dtype, device=self.device) for v in values]
        )

    def publish(self, state: dict[str, Any], two_loop_ran: bool) -> None:
        """Put the history into ``state`` as torch keeps it: lists of views of the ring's rows."""
        count, start = self.ring.tolist()
        slots = [(start + i) % self.history_size for i in range(count)]
        self.two_loop_ran |= two_loop_ran
        if two_loop_ran:  # it wrote al[i] for every pair held (and their number never shrinks)
            self.al_filled = count
        published: dict[str, Any] = {
            "d": self.d,
            "old_dirs": [self.dirs[k] for k in slots],
            "old_stps": [self.stps[k] for k in slots],
            "ro": [self.ro[k] for k in slots],
            "H_diag": self.h_diag[0] if count else 1,  # torch's int 1 until a pair is kept
            "prev_flat_grad": self.prev_flat_grad,
        }
        if self.two_loop_ran:
            filled = [self.al[i] for i in range(self.al_filled)]
            published["al"] = filled + [None] * (self.history_size - self.al_filled)
        state.update(published)
        # each object, and a list's items at this moment (another backend appends to the list)
        self.published = {
            k: (v, tuple(v) if isinstance(v, list) else ()) for k, v in published.items()
        }

    def is_published_in(self, state: dict[str, Any]) -> bool:
        """Whether ``state`` still holds exactly what :meth:`publish` put there (not a loaded
        state_dict's copies, not lists another backend appended to)."""
        for key in HISTORY_KEYS:
            mine, items = self.published.get(key, (None, ()))
            theirs = state.get(key)
            if theirs is not mine:
                return False
            if isinstance(theirs, list) and (
                len(theirs) != len(items) or any(a is not b for a, b in zip(theirs, items))
            ):
                return False
        return True


def ring_for_step(
    ring: RingHistory | None, params: list[Tensor], state: dict[str, Any], history_size: int
) -> RingHistory:
    """``ring`` if the state is still the one it published, else a new ring loaded from the
    state (a loaded state_dict, steps of the forloop backend, another history_size)."""
    numel = sum(p.numel() * (2 if p.is_complex() else 1) for p in params)
    # torch.cat's dtype for the flat grad (complex params as their real view)
    dtype = functools.reduce(torch.promote_types, [p.dtype.to_real() for p in params])
    device = params[0].device
    fits = ring is not None and ring.fits(history_size, numel, dtype, device)
    if fits and ring.is_published_in(state):
        return ring
    ring = RingHistory(history_size, numel, dtype, device)
    ring.load(state)
    return ring


# ---- one step's tensor work -----------------------------------------------------------------


class CompiledWork:
    """The per-iteration tensor work of LBFGS.step on the ring, through the compiled graphs.

    Same interface as lbfgs.ForloopWork; flat grads and directions it returns are its buffers,
    valid until the next call that writes them (the step loop uses each before that).
    """

    def __init__(self, ring: RingHistory, params: list[Tensor], maximize: bool) -> None:
        self.ring = ring
        self.params = params
        self.maximize = maximize
        self.real_params = [torch.view_as_real(p) if p.is_complex() else p for p in params]
        self.two_loop_ran = False

    def _grads(self) -> list[Tensor]:
        grads = []
        for p, real in zip(self.params, self.real_params):
            g = p.grad
            if g is None:
                grads.append(torch.zeros_like(real, memory_format=torch.contiguous_format))
                continue
            if g.is_sparse:
                g = g.to_dense()
            grads.append(torch.view_as_real(g) if g.is_complex() else g)
        return grads

    def _gather_into(self, out: Tensor) -> Tensor:
        _backends.compiled(gather_flat_grad)(self._grads(), out, self.ring.checks, self.maximize)
        return out

    def gather(self) -> tuple[Tensor, Tensor]:
        """The flat grad (the ring's buffer) and its max norm."""
        out = self._gather_into(self.ring.flat_grad)
        return out, self.ring.checks[GRAD_MAX]

    def first_direction(self, flat_grad: Tensor) -> tuple[Tensor, Tensor]:
        """d = -g with no history (once per optimizer: eager, as torch)."""
        ring = self.ring
        ring.clear()
        torch.neg(flat_grad, out=ring.d)
        ring.prev_flat_grad.copy_(flat_grad)
        return ring.d, flat_grad.dot(ring.d)

    def next_direction(self, flat_grad: Tensor, d: Tensor, t: Any) -> tuple[Tensor, Tensor]:
        """The last step's (y, s) pair into the ring, then d = -H g; returns d and g.d. (``d`` is
        the ring's own buffer, or the state's d that the ring was loaded from.)"""
        ring = self.ring
        _backends.compiled(ring_direction)(
            flat_grad, ring.prev_flat_grad, ring.d, self._scalar(t), ring.h_diag,
            ring.dirs, ring.stps, ring.ro, ring.al, ring.ring, ring.checks,
        )  # fmt: skip
        self.two_loop_ran = True
        # (a copy: the line search keeps g.d while later graphs write other checks)
        return ring.d, ring.checks[GTD].clone()

    def _scalar(self, t: Any) -> Tensor:
        # a tensor, never a float: dynamo would bake a float step into the graph
        return torch.as_tensor(t, dtype=self.ring.dtype, device=self.ring.device).reshape(())

    def move(self, t: Any, d: Tensor) -> None:
        _backends.compiled(move_params)(self.real_params, d, self._scalar(t), self.ring.checks)

    def advance(self, t: Any, d: Tensor) -> Tensor:
        """x += t d; returns max |t d| (the no-progress check's)."""
        self.move(t, d)
        return self.ring.checks[STEP_MAX]

    def evaluate_along(
        self, objective: Any, x: list[Tensor], t: Any, d: Tensor
    ) -> tuple[float, Tensor]:
        """Objective and flat grad (a new tensor) at x + t d; the params are put back to x."""
        self.move(t, d)
        loss = objective()
        flat_grad = self._gather_into(torch.empty_like(self.ring.flat_grad))
        torch._foreach_copy_(self.params, x)
        return loss, flat_grad

    def save(self, state: dict[str, Any]) -> None:
        self.ring.publish(state, self.two_loop_ran)
