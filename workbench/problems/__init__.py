"""Convergence test problems: closed-form functions with known optima, classifiers on a bundled
data set, a tiny language model on generated text, and a mini-batch matrix factorization whose
grads can be sparse. Nothing is downloaded; every seed is fixed.

``PROBLEMS`` maps a problem's name (as suites write it) to its :class:`Problem`.
"""

from __future__ import annotations

from ._problem import Problem
from .digits import DIGITS_PROBLEMS
from .functions import FUNCTION_PROBLEMS
from .matrix_factorization import MF_PROBLEMS
from .tiny_lm import LM_PROBLEMS

PROBLEMS: dict[str, Problem] = {
    p.name: p for p in (*FUNCTION_PROBLEMS, *DIGITS_PROBLEMS, *LM_PROBLEMS, *MF_PROBLEMS)
}

__all__ = ["PROBLEMS", "Problem"]
