"""Launching ranks: one subprocess per rank, torchrun's environment, a timeout that always ends.

``launch`` starts ``python -m <module> <args>`` once per rank with RANK, LOCAL_RANK, WORLD_SIZE,
LOCAL_WORLD_SIZE, MASTER_ADDR and MASTER_PORT set (what ``torch.distributed.init_process_group``
reads with ``init_method="env://"``, as under torchrun), each in its own process group. When a rank
fails, the others are killed at once (they would wait for it in a collective forever); when the
deadline passes, every rank's process group is killed. Either way the caller gets an exception, not
a hang: a sweep turns it into an error row and goes on.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass


class LaunchError(Exception):
    """A rank failed or the ranks ran past the timeout; ``status`` is "error" or "timeout"."""

    def __init__(self, status: str, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class RankResult:
    rank: int
    returncode: int
    output: str  # stdout and stderr, merged


def free_port() -> int:
    """A TCP port free right now on localhost (the OS picks it; rank 0 binds it soon after)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def launch(
    module: str,
    args: Sequence[str],
    world_size: int,
    *,
    timeout_s: float,
    env: dict[str, str] | None = None,
) -> list[RankResult]:
    """Run ``python -m module *args`` on ``world_size`` ranks and wait for all of them.

    Raises LaunchError("timeout") past ``timeout_s`` and LaunchError("error") when a rank exits
    non-zero; the message carries the tail of the failing rank's output.
    """
    base = {**os.environ, **(env or {})}
    base.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(free_port()),
        WORLD_SIZE=str(world_size),
        LOCAL_WORLD_SIZE=str(world_size),
        # ranks share the cores, as torchrun assumes when it sets this
        OMP_NUM_THREADS=base.get(
            "OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // world_size))
        ),
    )
    procs: list[tuple[subprocess.Popen, object]] = []
    try:
        for rank in range(world_size):
            log = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 (closed in `finally`)
            proc = subprocess.Popen(
                [sys.executable, "-m", module, *args],
                env={**base, "RANK": str(rank), "LOCAL_RANK": str(rank)},
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group, killed as a whole
            )
            procs.append((proc, log))
        deadline = time.monotonic() + timeout_s
        while True:
            codes = [proc.poll() for proc, _ in procs]
            failed = [r for r, code in enumerate(codes) if code not in (None, 0)]
            if failed or all(code == 0 for code in codes):
                break
            if time.monotonic() > deadline:
                _kill_all(procs)
                waiting = [r for r, code in enumerate(codes) if code is None]
                tails = _tails(procs, waiting)
                raise LaunchError(
                    "timeout",
                    f"rank(s) {waiting} still running after {timeout_s:g} s; killed{tails}",
                )
            time.sleep(0.05)
        if failed:
            _kill_all(procs)
            first = failed[0]
            raise LaunchError(
                "error",
                f"rank {first} exited with {codes[first]}{_tails(procs, [first])}",
            )
        return [RankResult(r, 0, _read(log)) for r, (_, log) in enumerate(procs)]
    finally:
        _kill_all(procs)
        for _, log in procs:
            log.close()  # type: ignore[attr-defined]


def _kill_all(procs: list[tuple[subprocess.Popen, object]]) -> None:
    for proc, _ in procs:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
    for proc, _ in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)


def _read(log: object) -> str:
    log.seek(0)  # type: ignore[attr-defined]
    return log.read()  # type: ignore[attr-defined]


def _tails(procs: list[tuple[subprocess.Popen, object]], ranks: list[int], n: int = 1500) -> str:
    return "".join(f"\n--- rank {r} ---\n{_read(procs[r][1])[-n:]}" for r in ranks)
