r"""AdamW: Adam whose weight decay shrinks the param instead of adding to the gradient.

.. math::
    \theta_{t-1} \leftarrow (1-\gamma\lambda)\,\theta_{t-1}, \text{ then Adam's step without decay}

(Loshchilov & Hutter, "Decoupled Weight Decay Regularization".) The math, its backends and its
kernel are Adam's (adam.py, with ``decoupled_weight_decay=True``); only the signature differs:
``weight_decay`` defaults to 1e-2 and the decay is always decoupled, as in torch.optim.AdamW.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .adam import Adam, Scalar


class AdamW(Adam):
    """AdamW with torch.optim.AdamW's signature; extra keyword ``backend`` as for Adam."""

    def __init__(
        self,
        params: Iterable[Any],
        lr: Scalar = 1e-3,
        betas: tuple[Scalar, Scalar] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: Scalar = 1e-2,
        amsgrad: bool = False,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        capturable: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
        backend: str | None = None,
    ) -> None:
        super().__init__(
            params,
            lr,
            betas,
            eps,
            weight_decay,
            amsgrad,
            foreach=foreach,
            maximize=maximize,
            capturable=capturable,
            differentiable=differentiable,
            fused=fused,
            decoupled_weight_decay=True,
            backend=backend,
        )

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        # whatever a loaded state_dict says (an Adam one, say), AdamW's decay is decoupled
        for group in self.param_groups:
            group["decoupled_weight_decay"] = True
