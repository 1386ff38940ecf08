"""Pieces the foreach updates share."""

from __future__ import annotations

import torch
from torch import Tensor


def foreach_grads(
    grads: list[Tensor], params: list[Tensor], *, maximize: bool, weight_decay: float
) -> list[Tensor]:
    """The grads an update steps on: negated for ``maximize``, plus ``weight_decay * param`` (L2
    decay, coupled to the grad). The caller's list itself when neither applies, else one new
    list: one param-sized temporary, whichever flags are on."""
    if maximize:
        g = torch._foreach_neg(grads)
        if weight_decay != 0:
            torch._foreach_add_(g, params, alpha=weight_decay)
        return g
    if weight_decay != 0:
        return torch._foreach_add(grads, params, alpha=weight_decay)
    return grads
