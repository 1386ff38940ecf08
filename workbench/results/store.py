"""The run store: one directory per run, `manifest.json` beside `records.parquet`.

Rows are written as each case finishes. The parquet file is rewritten whole to a temporary name
and renamed over the old one, so a run killed at any instant leaves the last complete file, never
a torn one; `--resume` reads it back and runs only the cases it does not hold.

One writer per run: the process that creates or resumes a run holds an exclusive flock on
`run.lock` (its pid inside, for the message to whoever is refused) until it closes the store. The
kernel drops the lock when the holder dies, however it dies, so a run whose manifest still says
"running" but whose lock is free was interrupted (`status_of`); nothing has to clean it up.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

MANIFEST = "manifest.json"
RECORDS = "records.parquet"
SUITE_COPY = "suite.toml"
LOCK = "run.lock"
# `list` probes a lock by taking it for an instant: a writer that meets such a probe retries
# this long before it concludes that another writer holds the run
_LOCK_PATIENCE_S = 0.5


class RunStoreError(Exception):
    """A run directory that cannot be read; the message names the file and the reason."""


class RunLockedError(RunStoreError):
    """Another live process writes this run; ``pid`` is its pid (None when it cannot be read)."""

    def __init__(self, run_dir: Path, pid: int | None) -> None:
        who = f"pid {pid}" if pid is not None else "a process whose pid cannot be read"
        super().__init__(
            f"{run_dir}: another workbench ({who}) is writing this run; "
            "wait for it to finish, or stop it and resume"
        )
        self.pid = pid


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class RunStore:
    def __init__(self, run_dir: Path, manifest: dict[str, Any], rows: list[dict[str, Any]]):
        self.run_dir = run_dir
        self.manifest = manifest
        self.rows = rows
        self._lock: int | None = None  # the fd holding run.lock, while this store writes the run

    @classmethod
    def create(cls, run_dir: Path, manifest: dict[str, Any], suite_text: str) -> RunStore:
        """A new run, locked for this process until `close()` (or the end of a `with`)."""
        if (run_dir / MANIFEST).exists():
            raise RunStoreError(f"{run_dir}: already holds a run; use --resume to finish it")
        run_dir.mkdir(parents=True, exist_ok=True)
        store = cls(run_dir, {**manifest, "started": now(), "status": "running"}, [])
        store._acquire()  # before the first write: two creators of one dir cannot both go on
        if (run_dir / MANIFEST).exists():  # the other one came first and has finished
            store.close()
            raise RunStoreError(f"{run_dir}: already holds a run; use --resume to finish it")
        (run_dir / SUITE_COPY).write_text(suite_text, encoding="utf-8")
        store.write_manifest()
        return store

    @classmethod
    def open(cls, run_dir: Path, *, lock: bool = False) -> RunStore:
        """Read a run; with ``lock``, also become its one writer (to resume it), or raise
        RunLockedError naming the process that is."""
        store = cls(run_dir, _read_manifest(run_dir), [])
        if lock:
            store._acquire()
        try:
            if lock:
                store.manifest = _read_manifest(run_dir)  # as the writer before us left it
            store.rows = _rows(load(run_dir)) if (run_dir / RECORDS).exists() else []
        except BaseException:
            store.close()
            raise
        return store

    def _acquire(self) -> None:
        fd = os.open(self.run_dir / LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        deadline = time.monotonic() + _LOCK_PATIENCE_S
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    pid = _read_pid(fd)
                    os.close(fd)
                    raise RunLockedError(self.run_dir, pid) from None
                time.sleep(0.02)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock = fd

    def close(self) -> None:
        """Stop being the run's writer (the lock file stays: removing it would let two writers
        lock two different files)."""
        fd = getattr(self, "_lock", None)  # None too for a store whose __init__ never ran
        if fd is not None:
            self._lock = None
            os.close(fd)  # closing the only fd of the lock's open file releases it

    def __enter__(self) -> RunStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()

    def done_case_ids(self) -> set[str]:
        return {row["case_id"] for row in self.rows}

    def append(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        self._write_records()

    def rewrite(self) -> None:
        """Write the rows again after they were changed in place (a flag added after the fact)."""
        self._write_records()

    def set_status(self, status: str, **extra: Any) -> None:
        self.manifest.update(status=status, **extra)
        if status != "running":
            self.manifest["finished"] = now()
        self.write_manifest()

    def write_manifest(self) -> None:
        _atomic_write(self.run_dir / MANIFEST, json.dumps(self.manifest, indent=1, default=str))

    def _write_records(self) -> None:
        frame = pd.DataFrame(self.rows)
        tmp = self.run_dir / (RECORDS + ".tmp")
        frame.to_parquet(tmp, index=False)
        os.replace(tmp, self.run_dir / RECORDS)


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _rows(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """The rows as they were appended: parquet gives list cells back as numpy arrays, whose truth
    value is an error when empty (`row["flags"] or []` in a resumed run would raise)."""
    return [
        {k: v.tolist() if isinstance(v, np.ndarray) else v for k, v in record.items()}
        for record in frame.to_dict("records")
    ]


def _read_manifest(run_dir: Path) -> dict[str, Any]:
    manifest_path = run_dir / MANIFEST
    try:
        return json.loads(manifest_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RunStoreError(f"{manifest_path}: no such file; is {run_dir} a run?") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RunStoreError(f"{manifest_path}: not valid JSON ({e})") from None


def _read_pid(fd: int) -> int | None:
    try:
        return int(os.pread(fd, 32, 0).decode().strip())
    except (OSError, ValueError):  # empty while the holder is between truncate and write
        return None


def lock_holder(run_dir: str | Path) -> int | None:
    """The pid of the live process that writes this run, or None when no process holds its lock.

    (A holder whose pid cannot be read, only just locking, is reported as -1.)
    """
    try:
        fd = os.open(Path(run_dir) / LOCK, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:  # no lock file: made before runs were locked, or never written by a run
        return None
    try:
        # a shared lock conflicts only with a writer's exclusive one; dropped at once
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        pid = _read_pid(fd)
        return -1 if pid is None else pid
    finally:
        with contextlib.suppress(OSError):
            os.close(fd)
    return None


def status_of(run_dir: str | Path, manifest: dict[str, Any]) -> str:
    """The run's status as it stands now: "interrupted" for a run recorded as "running" that no
    live process writes (killed, crashed, the machine went down); else the manifest's word."""
    status = str(manifest.get("status", "?"))
    if status == "running" and lock_holder(run_dir) is None:
        return "interrupted"
    return status


def load(path: str | Path) -> pd.DataFrame:
    """The records of a run as a pandas DataFrame; `path` is the run directory or its parquet."""
    path = Path(path)
    records = path / RECORDS if path.is_dir() else path
    if not records.exists():
        raise RunStoreError(f"{records}: no such file; is {path} a run directory?")
    try:
        return pd.read_parquet(records)
    except Exception as e:  # pyarrow raises several types for a damaged file
        raise RunStoreError(f"{records}: cannot be read as parquet ({e})") from None


def load_manifest(run_dir: str | Path) -> dict[str, Any]:
    return RunStore.open(Path(run_dir)).manifest
