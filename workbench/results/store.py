"""The run store: one directory per run, `manifest.json` beside `records.parquet`.

Rows are written as each case finishes. The parquet file is rewritten whole to a temporary name
and renamed over the old one, so a run killed at any instant leaves the last complete file, never
a torn one; `--resume` reads it back and runs only the cases it does not hold.
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd

MANIFEST = "manifest.json"
RECORDS = "records.parquet"
SUITE_COPY = "suite.toml"


class RunStoreError(Exception):
    """A run directory that cannot be read; the message names the file and the reason."""


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class RunStore:
    def __init__(self, run_dir: Path, manifest: dict[str, Any], rows: list[dict[str, Any]]):
        self.run_dir = run_dir
        self.manifest = manifest
        self.rows = rows

    @classmethod
    def create(cls, run_dir: Path, manifest: dict[str, Any], suite_text: str) -> RunStore:
        if (run_dir / MANIFEST).exists():
            raise RunStoreError(f"{run_dir}: already holds a run; use --resume to finish it")
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / SUITE_COPY).write_text(suite_text)
        store = cls(run_dir, {**manifest, "started": now(), "status": "running"}, [])
        store.write_manifest()
        return store

    @classmethod
    def open(cls, run_dir: Path) -> RunStore:
        manifest_path = run_dir / MANIFEST
        try:
            manifest = json.loads(manifest_path.read_text())
        except FileNotFoundError:
            raise RunStoreError(f"{manifest_path}: no such file; is {run_dir} a run?") from None
        except json.JSONDecodeError as e:
            raise RunStoreError(f"{manifest_path}: not valid JSON ({e})") from None
        rows = load(run_dir).to_dict("records") if (run_dir / RECORDS).exists() else []
        return cls(run_dir, manifest, rows)

    def done_case_ids(self) -> set[str]:
        return {row["case_id"] for row in self.rows}

    def append(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
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
    tmp.write_text(text)
    os.replace(tmp, path)


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
