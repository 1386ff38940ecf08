"""The compiled backend: torch.compile of the forloop update, lr and step kept as tensors.

`update(forloop)` is the backend an optimizer's compiled step runs: the forloop update compiled
once per group structure, with lr fed as a 0-dim tensor so that a scheduler changing lr is new
data, never a new graph. `compiled(fn)` is the graph alone, for other functions a step compiles
(LBFGS's pieces).
"""

from __future__ import annotations

import functools
from functools import cache
from typing import Any

import torch
from torch import Tensor

from .._spec import UpdateFn

# Dynamo keeps a few graphs per function and then silently runs it eagerly; a sweep over many
# sizes and flags would pass that limit and time eager code as "compiled". Allow more graphs and
# fail loudly past them instead.
_RECOMPILE_LIMIT = 64


@cache
def compiled(update: UpdateFn, inductor_options: tuple[tuple[str, Any], ...] = ()) -> UpdateFn:
    """The torch.compile of an update function, made once per function.

    Dynamo guards on the tensor lists' length and shapes, so it compiles once per group structure
    and reuses the graph afterwards; lr arrives as a 0-dim tensor, so a new lr value is new data,
    not a new graph. Other float hyperparameters are baked into the graph: changing them
    (betas on a OneCycle schedule) recompiles.
    """
    from .._materialize import register_inductor_lowering

    register_inductor_lowering()
    # Dynamo's guards already check every input's size and stride; Inductor's own assertion of
    # them, one call per tensor per step, is a tenth of a small step's time: leave it out.
    options = {"size_asserts": False, **dict(inductor_options)}
    graph = torch.compile(update, fullgraph=True, dynamic=False, options=options)

    @functools.wraps(update)
    def run(*args: Any, **kwargs: Any) -> None:
        with torch._dynamo.config.patch(
            recompile_limit=_RECOMPILE_LIMIT, fail_on_recompile_limit_hit=True
        ):
            graph(*args, **kwargs)

    return run


@cache
def update(forloop: UpdateFn, inductor_options: tuple[tuple[str, Any], ...] = ()) -> UpdateFn:
    """The compiled backend's update for an optimizer whose forloop update is `forloop`."""
    graph = compiled(forloop, inductor_options)

    @functools.wraps(forloop)
    def step(*tensor_lists: list[Tensor], **keywords: Any) -> None:
        # (an update may take no lr: one whose lr only initialised its state)
        if "lr" in keywords and not isinstance(keywords["lr"], Tensor):
            keywords["lr"] = torch.tensor(keywords["lr"], dtype=torch.float64)
        # Inductor (torch 2.13, CPU) drops in-place updates to 0-dim fp64 tensors; a 1-element
        # view of the same storage is updated correctly. Only lists that may hold such tensors
        # are rebuilt: a view per tensor per step is a good part of a small step's time.
        fp64_scalar_params = any(p.dim() == 0 and p.dtype == torch.float64 for p in tensor_lists[0])
        lists = [
            [_one_dim(t) for t in lst] if fp64_scalar_params or _holds_fp64_scalars(lst) else lst
            for lst in tensor_lists
        ]
        graph(*lists, **keywords)
        # state the update created (a None it filled in) belongs in the caller's list, which the
        # optimizer keeps; a rebuilt list is a copy
        for original, rebuilt in zip(tensor_lists, lists):
            if rebuilt is not original:
                for i, t in enumerate(rebuilt):
                    if original[i] is None and t is not None:
                        original[i] = t

    return step


def _holds_fp64_scalars(tensors: list[Tensor | None]) -> bool:
    """Whether a list holds 0-dim fp64 tensors (step counts under an fp64 default dtype). A list
    holds scalars or param-shaped tensors throughout: its first tensor tells which."""
    first = next((t for t in tensors if t is not None), None)
    return first is not None and first.dim() == 0 and first.dtype == torch.float64


def _one_dim(t: Tensor | None) -> Tensor | None:
    return t.view(1) if t is not None and t.dim() == 0 and t.dtype == torch.float64 else t
