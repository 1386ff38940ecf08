"""Native output kept out of the user's terminal: the profiler's C++ side prints
``USDT ... profiler_start/stop`` to stderr on every use, which is fd 2, not sys.stderr, so only a
file-descriptor redirect catches it. While a run has a log file (``log_to``), ``native_output()``
sends fd 2 there; without one it changes nothing (a library caller sees what torch prints).
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path

_log: Path | None = None


def log_to(path: Path | None) -> None:
    """Where native stderr goes during ``native_output()`` from now on (None: nowhere else)."""
    global _log
    _log = path


@contextlib.contextmanager
def native_output() -> Iterator[None]:
    if _log is None:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(_log, "ab") as log:
            os.dup2(log.fileno(), 2)
            try:
                yield
            finally:
                sys.stderr.flush()
                os.dup2(saved, 2)
    finally:
        os.close(saved)
