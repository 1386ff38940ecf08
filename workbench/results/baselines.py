"""Stored baselines for the regression gate: one run per machine and suite.

`workbench regress SUITE --baselines DIR` runs SUITE, then judges it with `workbench compare`
against DIR/<machine_id>/<suite name>/, a copy of an earlier run's records, manifest and suite
file. The machine id is the hash of the run's fingerprint (environment.machine_id: CPU model,
logical cores, memory, GPU name, torch version), so two machines never share a baseline, where
the OS+Python key of pytest-benchmark's storage could not tell them apart. The first run on a
machine (or `--save-baseline`) becomes its baseline. Commit DIR to share baselines with CI.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from .store import MANIFEST, RECORDS, SUITE_COPY, RunStoreError, load_manifest

_FILES = (RECORDS, MANIFEST, SUITE_COPY)


def machine_of(run_dir: Path) -> tuple[str, dict[str, Any]]:
    """The run's machine id and fingerprint, as its manifest recorded them."""
    env = load_manifest(run_dir).get("environment", {})
    mid = env.get("machine_id")
    if not mid:
        raise RunStoreError(
            f"{run_dir / MANIFEST}: no environment.machine_id (a run from before machine "
            "fingerprints): it cannot be filed as a machine's baseline"
        )
    return str(mid), dict(env.get("machine") or {})


def baseline_dir(baselines: Path, run_dir: Path) -> Path:
    """Where the baseline of `run_dir`'s machine and suite lives (whether or not it exists)."""
    mid, _ = machine_of(run_dir)
    suite = load_manifest(run_dir).get("suite") or "suite"
    return baselines / mid / str(suite)


def has_baseline(path: Path) -> bool:
    return (path / RECORDS).is_file() and (path / MANIFEST).is_file()


def save_baseline(run_dir: Path, path: Path) -> None:
    """Copy the run's files to `path`, replacing what is there only once the copy is whole: a
    copy cut short must not leave a baseline that is half old, half new."""
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}-", dir=path.parent))
    try:
        for name in _FILES:
            if (run_dir / name).is_file():
                shutil.copy2(run_dir / name, staging / name)
        old = path.with_name(f".{path.name}-old")
        if path.exists():
            shutil.rmtree(old, ignore_errors=True)
            path.rename(old)
        staging.rename(path)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
