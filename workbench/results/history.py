"""`workbench history DIR... --out site/`: many runs over time, as one static page and its data.

Runs are ordered by commit time, then run time. No capture in workbench.harness.environment
records when its commit was made (only `git_sha` and `git_dirty`), so a manifest's
`environment.git_commit_time` (ISO 8601) is used where something wrote it, and the run's own
`started` time otherwise; two runs of one commit order by when they ran. Each case (matched across
runs by its axes, repeats pooled, as `workbench compare` does) gets one row per run in
`history.parquet`: its pooled median, noise and stability, and its verdict against the previous
run, from the same `compare_runs` as the gate, so a marker on the page is where the gate would
have fired. `stable` is False where an ok row of the case was recorded not stable or carries a
flag (what compare calls unstable); a run from before the stability checks is stable. The page
(workbench.plots.history) is drawn from that frame alone.

Exit codes: 0 done (fewer than 2 runs still make a page, which says trends need 2 or more);
2 a path that is no run directory and holds none, or a run that cannot be read.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .compare import VERDICTS, case_axes, compare_runs, pool_cases
from .store import MANIFEST, RECORDS, RunStoreError, load, load_manifest
from .summary import with_ratios

PAGE = "index.html"
DATA = "history.parquet"
COMMIT_TIME_KEY = "git_commit_time"  # under the manifest's environment, where present


class HistoryError(Exception):
    """A path given to `workbench history` that cannot be used; the message names it."""


@dataclass(frozen=True, eq=False)  # eq: a DataFrame has no truth value to compare by
class Run:
    path: Path
    manifest: dict[str, Any]
    records: pd.DataFrame

    @property
    def run_id(self) -> str:
        return str(self.manifest.get("run_id") or self.path.name)

    @property
    def environment(self) -> dict[str, Any]:
        return self.manifest.get("environment") or {}

    @property
    def commit_time(self) -> pd.Timestamp | None:
        return _timestamp(self.environment.get(COMMIT_TIME_KEY))

    @property
    def started(self) -> pd.Timestamp | None:
        return _timestamp(self.manifest.get("started"))

    def order_key(self) -> tuple:
        # unknown times last, then by id: run ids are stamped with their start time
        first = self.commit_time if self.commit_time is not None else self.started
        return (*_known(first), *_known(self.started), self.run_id)


def _known(ts: pd.Timestamp | None) -> tuple[bool, int]:
    return (ts is None, ts.value if ts is not None else 0)


def _timestamp(value: Any) -> pd.Timestamp | None:
    """An ISO time as a UTC timestamp; None when absent or unreadable. Naive times are taken as
    UTC (store.now() writes aware ones): mixing naive and aware would make them incomparable."""
    if not isinstance(value, str) or not value:
        return None
    try:
        ts = pd.Timestamp(value)
    except (ValueError, TypeError):
        return None
    if ts is pd.NaT:
        return None
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def find_runs(paths: Iterable[Path]) -> tuple[list[Path], list[str]]:
    """The run directories among `paths` (a run, or a folder holding runs one level down), each
    once, and notes on the runs passed over because they hold no records yet (a run that
    measured nothing has nothing to plot; a whole folder need not fail for one of them)."""
    found: dict[Path, Path] = {}
    notes = []
    for path in map(Path, paths):
        if (path / MANIFEST).is_file():
            runs = [path]
        elif path.is_dir():
            runs = sorted(p for p in path.iterdir() if (p / MANIFEST).is_file())
        else:
            runs = []
        if not runs:
            what = "no such directory" if not path.exists() else f"no {MANIFEST} in it or under it"
            raise HistoryError(f"{path}: not a run directory and holds none ({what})")
        for run in runs:
            if not (run / RECORDS).exists():
                notes.append(f"{run}: no {RECORDS} (nothing measured yet): left out")
                continue
            found.setdefault(run.resolve(), run)
    return list(found.values()), notes


def load_runs(paths: Iterable[Path]) -> tuple[list[Run], list[str]]:
    """The runs under `paths`, oldest first (see the module docstring), and find_runs' notes."""
    paths = list(paths)
    dirs, notes = find_runs(paths)
    if not dirs:
        raise HistoryError(f"no run with records under {', '.join(map(str, paths))}")
    runs = [Run(d, load_manifest(d), load(d)) for d in dirs]
    return sorted(runs, key=Run.order_key), notes


def _norm(value: Any) -> Any:
    """A key value alike whichever frame it came from: NaN is None, a numpy scalar is python."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return value.item() if isinstance(value, np.generic) else value


def case_label(row: dict[str, Any], axes: list[str]) -> str:
    """ "Adamax / workbench / foreach / 100x10k / float32 / cpu / weight_decay=0.1": what the
    page calls a case. world_size only when more than one rank, flags by name."""
    parts = []
    for a in axes:
        v = _norm(row.get(a))
        if v is None or (a == "world_size" and v == 1):
            continue
        named = a.startswith("flag_") or a == "world_size"
        parts.append(f"{a.removeprefix('flag_')}={v}" if named else str(v))
    return " / ".join(parts)


def history_frame(runs: list[Run]) -> pd.DataFrame:
    """One row per case per run (see the module docstring); `order` counts runs from 1."""
    axes = case_axes(*(r.records for r in runs))
    frames = []
    previous: pd.DataFrame | None = None
    for order, run in enumerate(runs, 1):
        # every axis in every run: compare_runs then keys both sides as pool_cases keys this one
        df = run.records.reindex(columns=[*run.records.columns, *_absent(run.records, axes)])
        pooled = pool_cases(df, axes)
        pooled["median_s"] = pooled["samples"].map(_median).astype(float)
        if "implementation" in pooled:
            pooled = with_ratios(pooled)  # pooled: each case against torch's pooled medians
        judged = {} if previous is None else _verdicts(compare_runs(previous, df), axes)
        frames.append(_tidy(run, order, pooled, axes, judged))
        previous = df
    return pd.concat(frames, ignore_index=True)


def _median(samples: np.ndarray) -> float:
    return float(np.median(samples)) if len(samples) else math.nan


def _absent(df: pd.DataFrame, axes: list[str]) -> list[str]:
    return [a for a in axes if a not in df.columns]


def _verdicts(result: pd.DataFrame, axes: list[str]) -> dict[tuple, tuple[str, float]]:
    return {
        tuple(_norm(r.get(a)) for a in axes): (r["verdict"], r["change"])
        for r in result.to_dict("records")
    }


def _tidy(
    run: Run, order: int, pooled: pd.DataFrame, axes: list[str], judged: dict
) -> pd.DataFrame:
    of_run = {"run_id": run.run_id, "order": order, "commit": run.environment.get("git_sha")}
    rows = []
    for r in pooled.to_dict("records"):
        key = tuple(_norm(r[a]) for a in axes)
        verdict, change = judged.pop(key, (None, math.nan))
        rows.append({
            **of_run, "case": case_label(r, axes), **dict(zip(axes, key)),
            "status": r["status"], "median_s": r["median_s"], "noise": float(r["noise"]),
            "stable": not r["unstable"], "flags": ", ".join(r["flags"]),
            "n_samples": len(r["samples"]), "vs_torch_best": r.get("vs_torch_best", math.nan),
            "verdict": verdict, "change": change,
        })  # fmt: skip
    # a case the previous run had and this one lacks fails the gate ("missing"): a row says so
    for key, (verdict, _) in judged.items():
        if verdict == "missing":
            case = dict(zip(axes, key))
            rows.append({
                **of_run, "case": case_label(case, axes), **case, "status": "missing",
                "median_s": math.nan, "noise": math.nan, "stable": True, "flags": "",
                "n_samples": 0, "vs_torch_best": math.nan, "verdict": verdict, "change": math.nan,
            })  # fmt: skip
    return pd.DataFrame(rows)


def runs_table(runs: list[Run], history: pd.DataFrame) -> pd.DataFrame:
    """One row per run, in order: id, commit, times, cases, its verdict counts vs the previous,
    and whether it ran on another machine than the previous one (`other_machine`)."""
    rows = []
    for order, run in enumerate(runs, 1):
        mine = history[history["order"] == order]
        counts = mine["verdict"].value_counts()
        rows.append({
            "order": order, "run_id": run.run_id, "commit": run.environment.get("git_sha"),
            "dirty": run.environment.get("git_dirty"), "commit_time": _iso(run.commit_time),
            "started": _iso(run.started), "host": run.environment.get("hostname"),
            "cases": int((mine["status"] != "missing").sum()), "path": str(run.path),
            "verdicts": {v: int(counts[v]) for v in VERDICTS if v in counts},
            "other_machine": order > 1 and _other_machine(runs[order - 2], run),
        })  # fmt: skip
    return pd.DataFrame(rows)


def _other_machine(before: Run, after: Run) -> bool:
    """Both runs record a machine fingerprint and they differ: `workbench compare` (time) would
    refuse the pair, so the page says so beside verdicts it computed anyway. Runs from before
    the fingerprint are not judged: their manifests may lack the facts."""
    prints = [r.environment.get("machine") for r in (before, after)]
    return all(isinstance(p, dict) for p in prints) and prints[0] != prints[1]


def _iso(ts: pd.Timestamp | None) -> str | None:
    return None if ts is None else ts.strftime("%Y-%m-%d %H:%M UTC")


def write_history(paths: Iterable[Path], out: Path) -> tuple[Path, pd.DataFrame, list[str]]:
    """Write `out/index.html` and `out/history.parquet`; returns the page, the frame, the notes."""
    from workbench.plots.history import write_page  # matplotlib only for the page

    runs, notes = load_runs(paths)
    history = history_frame(runs)
    out.mkdir(parents=True, exist_ok=True)
    data = out / DATA
    history.to_parquet(data, index=False)
    page = write_page(out / PAGE, runs_table(runs, history), history, notes)
    return page, history, notes


def cmd_history(args: argparse.Namespace) -> int:
    try:
        page, history, notes = write_history(args.runs, Path(args.out))
    except (HistoryError, RunStoreError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    print(
        f"history of {history['order'].nunique()} runs, {history['case'].nunique()} cases: "
        f"{page} ({page.stat().st_size / 1e3:.0f} kB), {page.parent / DATA}"
    )
    return 0
