"""Launching ranks: one subprocess per rank, torchrun's environment, a timeout that always ends.

``launch`` starts ``python -m <module> <args>`` once per rank with RANK, LOCAL_RANK, WORLD_SIZE,
LOCAL_WORLD_SIZE, MASTER_ADDR and MASTER_PORT set (what ``torch.distributed.init_process_group``
reads with ``init_method="env://"``, as under torchrun), each in its own process group. When a rank
fails, the others are killed at once (they would wait for it in a collective forever); when the
deadline passes, every rank's process group is killed. Either way the caller gets an exception, not
a hang: a sweep turns it into an error row and goes on.

When the launching process itself dies without a chance to clean up (SIGKILL, OOM killer), its
ranks die with it on Linux (PR_SET_PDEATHSIG), so that none is left waiting in a collective; the
temp dirs of its cases (``rank_temp_dir``, named after its pid) are removed by the next ``launch``
of any process, which finds their owner gone. Rank logs are unlinked temp files: they go with the
last process that has them open.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

TEMP_PREFIX = "workbench-dist-"
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


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


def rank_temp_dir() -> tempfile.TemporaryDirectory[str]:
    """A temp dir for one sharded case's spec and row, ``workbench-dist-<our pid>-...``: should
    this process be killed before it removes the dir, a later ``launch`` sees the owner is gone."""
    return tempfile.TemporaryDirectory(prefix=f"{TEMP_PREFIX}{os.getpid()}-")


def remove_stale_temp_dirs(root: str | Path | None = None) -> list[Path]:
    """Remove the ``rank_temp_dir``s under ``root`` (the temp dir) whose owning process is dead;
    return them. Only this user's: another user's are theirs to judge."""
    removed = []
    for path in Path(root or tempfile.gettempdir()).glob(f"{TEMP_PREFIX}*-*"):
        owner = re.fullmatch(rf"{TEMP_PREFIX}(\d+)-.+", path.name)
        try:
            mine = path.is_dir() and path.stat().st_uid == os.getuid()
        except OSError:  # removed meanwhile by another launch
            continue
        if owner and mine and not pid_alive(int(owner[1])):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie does not: it has died and waits to be reaped)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:  # it ended just now; or there is no procfs to ask (not Linux): it runs
        return not Path("/proc").is_dir()
    return stat.rsplit(")", 1)[-1].split()[0] not in ("Z", "X")


def _die_with_parent() -> Callable[[], None] | None:
    """A preexec_fn that has the kernel SIGKILL the child when this process dies; None where
    prctl is not there (not Linux). The signal follows the forking *thread*: ``launch`` waits for
    its ranks in the thread that started them, so they never outlive it while it is needed."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up here, not in the child
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)  # kept across exec
        if os.getppid() != parent:  # the parent died before prctl: no signal would ever come
            os._exit(1)

    return preexec


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
    remove_stale_temp_dirs()  # of launchers killed before they could clean up
    preexec = _die_with_parent()
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
                preexec_fn=preexec,  # only prctl and getppid: safe between fork and exec
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
