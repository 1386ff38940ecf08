"""`workbench export RUN --format github-benchmark|json|csv [--out FILE]`: a run for other tools.

- github-benchmark: the JSON array of github-action-benchmark's `customSmallerIsBetter` tool
  (bencher reads it too): `[{"name", "unit", "value", "range", "extra"}]`, one entry per case
  measured ok, its repeats pooled as `workbench compare` pools them (compare.pool_cases), so that
  a dashboard's point is the figure the gate judges. Cases with a failed row are left out (a
  dashboard line that silently continues through a failure would hide it) and counted on stderr.
- json: `{"manifest": {run_id, environment, ...}, "rows": [every row]}`, strict JSON (NaN and
  infinities are null, numpy arrays lists).
- csv: every row, list cells (samples_s, flags) joined with ";".

The data goes to --out or stdout; messages and errors go to stderr, out of the data's way.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .compare import case_axes, pool_cases
from .store import MANIFEST, RunStoreError, load, load_manifest

FORMATS = ("github-benchmark", "json", "csv")
# The manifest's keys that say which run this is and where it ran; the rest (capabilities,
# overrides) is in the run directory for whoever needs it.
MANIFEST_KEYS = ("run_id", "suite", "status", "started", "finished", "environment")


def github_benchmark(df: pd.DataFrame) -> tuple[list[dict[str, Any]], Counter[str]]:
    """The entries, and what was left out: rows by status ("error rows": 2) and cases by why
    ("failed cases": a case with a row not ok or skipped, whose ok repeats go too)."""
    status = df["status"].astype(str) if "status" in df else pd.Series("ok", index=df.index)
    left_out = Counter(f"{s} rows" for s in status[status != "ok"])
    axes = case_axes(df)
    pooled = pool_cases(_with_ci_noise(df), axes)
    entries: list[dict[str, Any]] = []
    names: set[str] = set()
    stability_known = "stable" in df.columns
    for case in pooled.to_dict("records"):
        if case["status"] == "failed":  # as compare judges it: one failed repeat fails the case
            left_out["failed cases"] += 1
        if case["status"] != "ok":  # skipped: its rows are counted above
            continue
        samples = case["samples"]
        if not len(samples):  # ok rows without times: a convergence run, or a probe-only row
            left_out["cases without step times"] += 1
            continue
        value = float(np.median(samples)) * 1e3
        entry: dict[str, Any] = {"name": _unique(case_name(case, axes), names), "unit": "ms"}
        entry["value"] = value
        if math.isfinite(case["noise"]):
            entry["range"] = f"± {case['noise'] * value:.3g}"
        entry["extra"] = _extra(case, len(samples), stability_known)
        entries.append(entry)
    return entries, left_out


def _with_ci_noise(df: pd.DataFrame) -> pd.DataFrame:
    """Each row's noise from its median's 95% CI where it has one (else its `noise` column):
    the relative half-width, which pool_cases pools over repeats as compare does."""
    columns = ("median_ci_low_s", "median_ci_high_s", "median_s")
    if not set(columns) <= set(df.columns):
        return df
    # numeric first: a failed row's cells are None, which would make the columns objects
    low, high, median = (pd.to_numeric(df[c], errors="coerce") for c in columns)
    half = (high - low) / (2 * median)
    if "noise" in df.columns:
        half = half.fillna(pd.to_numeric(df["noise"], errors="coerce"))
    return df.assign(noise=half)


def case_name(case: dict[str, Any], axes: list[str]) -> str:
    """`Adamax workbench/foreach 100x10k float32 cpu ranks=2 weight_decay=0.1`: the set axes.

    The name is a dashboard's key over time: made of the case's axes only, never its case_id.
    """
    value = {a: case.get(a) for a in axes}
    impl = "/".join(
        _text(value.get(a)) for a in ("implementation", "backend") if _set(value.get(a))
    )
    parts = [_text(value.get("optimizer")), impl]
    parts += [_text(value.get(a)) for a in ("size", "dtype", "device")]
    world = value.get("world_size")
    if _set(world) and world != 1:
        parts.append(f"ranks={_text(world)}")
    if _set(value.get("problem")):
        parts.append(f"problem={_text(value['problem'])}")
    for flag in sorted(a for a in axes if a.startswith("flag_")):
        if _set(value[flag]):
            parts.append(f"{flag.removeprefix('flag_')}={_text(value[flag])}")
    return " ".join(p for p in parts if p)


def _set(value: Any) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def _text(value: Any) -> str:
    if not _set(value):
        return ""
    # floats as %g: a flag column that parquet made float in one run (NaN beside ints) and int in
    # another must still give one name, or the dashboard splits the case's history in two
    return f"{value:g}" if isinstance(value, (float, np.floating)) else str(value)


def _unique(name: str, taken: set[str]) -> str:
    """Names are the dashboard's keys: two cases that print alike must still not merge."""
    candidate, n = name, 1
    while candidate in taken:
        n += 1
        candidate = f"{name} ({n})"
    taken.add(candidate)
    return candidate


def _extra(case: dict[str, Any], n_samples: int, stability_known: bool) -> str:
    noise = case["noise"]
    shown = f"±{noise * 100:.1f}%" if math.isfinite(noise) else "unknown"
    stable = "no" if case["unstable"] else "yes" if stability_known else "unknown"
    flags = ",".join(case["flags"]) or "none"
    return f"n_samples={n_samples} noise={shown} flags={flags} stable={stable}"


def json_document(df: pd.DataFrame, manifest: dict[str, Any]) -> dict[str, Any]:
    """`{"manifest": ..., "rows": [...]}`, every value JSON-safe."""
    # run_id and environment always (None for a bare parquet file), the others where recorded
    head = {"run_id": manifest.get("run_id"), "environment": manifest.get("environment")}
    head.update((k, manifest[k]) for k in MANIFEST_KEYS if k in manifest)
    return {"manifest": json_safe(head), "rows": json_safe(df.to_dict("records"))}


def json_safe(value: Any) -> Any:
    """Python containers and scalars only: numpy arrays and scalars converted, NaN/inf None."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or value is pd.NaT or value is pd.NA:
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (str, int, float, bool)):
        return value
    return str(value)  # timestamps, bytes: their text, rather than a failed export


def csv_text(df: pd.DataFrame) -> str:
    """The rows as CSV; a list cell is its items joined with ";", a dict cell its JSON."""
    out = df.copy()
    for column in out.columns:
        if out[column].dtype == object:
            out[column] = out[column].map(_csv_cell)
    return out.to_csv(index=False)


def _csv_cell(value: Any) -> Any:
    if isinstance(value, dict):
        return json.dumps(json_safe(value))
    if isinstance(value, (list, tuple, np.ndarray)):
        return ";".join("" if v is None else str(v) for v in json_safe(value))
    return value


def _manifest(path: Path) -> dict[str, Any]:
    """The run's manifest; none for a bare records.parquet copied away from its run directory."""
    run_dir = path if path.is_dir() else path.parent
    return load_manifest(run_dir) if (run_dir / MANIFEST).exists() else {}


def render(df: pd.DataFrame, manifest: dict[str, Any], fmt: str) -> tuple[str, str]:
    """The export's text, and a line for stderr: what it holds, what was left out."""
    if fmt == "github-benchmark":
        entries, left_out = github_benchmark(df)
        note = f"{len(entries)} entries"
        if left_out:
            note += "; left out: " + ", ".join(f"{why}: {n}" for why, n in sorted(left_out.items()))
        return json.dumps(entries, indent=1, allow_nan=False) + "\n", note
    if fmt == "json":
        # one line: a row holds every raw sample, thousands of lines of them once indented
        text = json.dumps(json_document(df, manifest), allow_nan=False)
        return text + "\n", f"{len(df)} rows"
    if fmt == "csv":
        return csv_text(df), f"{len(df)} rows"
    raise ValueError(f"format must be one of {FORMATS}, not {fmt!r}")


def cmd_export(args: argparse.Namespace) -> int:
    """Write the export; 0, or 2 for a run that cannot be read or a file that cannot be written."""
    try:
        df = load(args.run)
        manifest = _manifest(args.run)
    except RunStoreError as e:
        print(f"error: {e}", file=sys.stderr)  # stderr: stdout may be a file a CI step uploads
        return 2
    text, note = render(df, manifest, args.format)
    if args.out is None:
        sys.stdout.write(text)
    else:
        try:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(text, encoding="utf-8")
        except OSError as e:
            print(f"error: {args.out}: cannot be written ({e})", file=sys.stderr)
            return 2
    where = "" if args.out is None else f" to {args.out}"
    print(f"export {args.format}{where}: {note}", file=sys.stderr)
    return 0
