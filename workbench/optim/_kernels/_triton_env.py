"""Whether Triton is installed, and whether it interprets kernels on the CPU (no triton import)."""

from __future__ import annotations

import os
from functools import cache


def triton_interpreting() -> bool:
    """True when Triton runs kernels on the CPU through its interpreter (how CI checks kernels)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@cache
def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True
