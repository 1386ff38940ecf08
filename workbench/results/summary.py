"""Derived views of a run: ratios measured inside the run, stability marks, and the summary table.

Stability (`stable`, `noise`, `flags`) is recorded by runs from the trust checks on; older runs
lack the columns. Their rows are "unknown", never "unstable": nothing is marked that was not
measured. The flag names and meanings mirror workbench.harness.stability, restated here so that
the report and the notebooks import no torch.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd

# The axes that define "the same problem": rows that agree on them are comparable side by side.
_PROBLEM_AXES = ("optimizer", "size", "problem", "dtype", "device", "world_size", "repeat")

# One line each, for the report's legend and the notebooks.
FLAG_MEANINGS: dict[str, str] = {
    "noisy": "the median's 95% confidence interval stayed wider than the target after re-timing",
    "interference": "other processes took CPU (or GPU) time while the row was timed",
    "above-probe": "faster than the streaming-bandwidth probe allows: not the real step",
    "cold": "the later samples are clearly faster than the earlier: still warming up",
    "unrepeatable": "its repeats (separate processes) disagree beyond their own noise",
    "probe-drift": "the bandwidth probe before and after its group disagree: the machine changed",
    "throttled": "the GPU's clocks were held down (power or thermal) while the row was timed",
}


def flag_legend(df: pd.DataFrame | None = None) -> dict[str, str]:
    """FLAG_MEANINGS, plus any flag the run's rows carry that this version has no words for
    (written by a newer harness): listed, not dropped."""
    legend = dict(FLAG_MEANINGS)
    if df is not None:
        for flags in row_flags(df):
            for f in flags:
                legend.setdefault(f, "no description in this version of workbench")
    return legend


def problem_columns(df: pd.DataFrame) -> list[str]:
    return [c for c in df.columns if c in _PROBLEM_AXES or c.startswith("flag_")]


def _as_flags(value: object) -> list[str]:
    """A `flags` cell as a list of names: parquet gives numpy arrays, old or odd rows None/NaN."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return []
    if isinstance(value, str):
        return [f.strip() for f in value.split(",") if f.strip()]
    if isinstance(value, Iterable):
        return [str(f) for f in value if f is not None and str(f)]
    return []


def row_flags(df: pd.DataFrame) -> pd.Series:
    """Each row's flags as a list (empty when none, or when the run records no flags)."""
    if "flags" not in df.columns:
        return pd.Series([[] for _ in range(len(df))], index=df.index, dtype=object)
    return df["flags"].map(_as_flags)


def stability_recorded(df: pd.DataFrame) -> bool:
    """Whether the run says anything about stability (older runs do not)."""
    return "stable" in df.columns or "flags" in df.columns


def unstable(df: pd.DataFrame) -> pd.Series:
    """True for a row known not to be trusted at face value: it carries a flag, or it is an ok row
    recorded as not stable. Unknown (no column, or NaN) is False: only what was measured is marked.
    """
    marked = row_flags(df).map(bool)
    if "stable" in df.columns and "status" in df.columns:
        # `stable` False on a failed row says only that it failed; its status says that already.
        said_unstable = df["stable"].map(lambda v: isinstance(v, (bool, np.bool_)) and not v)
        marked |= said_unstable & (df["status"] == "ok")
    return marked.astype(bool)


def stability_marks(df: pd.DataFrame) -> pd.Series:
    """Per row, for a table a reader scans: "⚠ noisy, cold" for an unstable or flagged row,
    "" for a stable one or one that did not run ok (its status says so), "unknown" for an ok row
    whose run (or whose own cells) record nothing."""
    flags = row_flags(df)
    marked = unstable(df)
    ok = df["status"] == "ok" if "status" in df.columns else pd.Series(True, index=df.index)
    known = pd.Series(False, index=df.index)
    if "stable" in df.columns:
        known |= df["stable"].map(lambda v: isinstance(v, (bool, np.bool_)))
    marks = pd.Series("", index=df.index, dtype=object)
    marks[ok & ~known & ~marked] = "unknown"
    marks[marked] = ["⚠ " + (", ".join(f) or "unstable") for f in flags[marked]]
    return marks


def with_ratios(df: pd.DataFrame) -> pd.DataFrame:
    """Add `vs_torch_best`: torch.optim's fastest median for the same problem / this median.

    Above 1 is faster than the best torch.optim implementation measured in the same run.
    """
    out = df.copy()
    out["vs_torch_best"] = float("nan")
    if "median_s" not in out or out.empty:
        return out
    keys = problem_columns(out)
    ok = out["status"] == "ok"
    torch_rows = out[ok & (out["implementation"] == "torch")]
    if torch_rows.empty:
        return out
    # groupby drops NaN keys by default; flags absent for some optimizers are NaN
    best = torch_rows.groupby(keys, dropna=False)["median_s"].min().rename("torch_best_s")
    out = out.merge(best, left_on=keys, right_index=True, how="left")
    out["vs_torch_best"] = out["torch_best_s"] / out["median_s"]
    return out.drop(columns="torch_best_s")


def summary_table(df: pd.DataFrame) -> pd.DataFrame:
    """One line per case with the figures a reader looks at first.

    `± %` is the noise (the half-width of the median's 95% CI, in percent) and `flags` the reasons
    not to take the row at face value, comma-joined; both right after the IQR, and only for runs
    that record them.
    """
    df = with_ratios(df)
    if "flags" in df.columns:
        df["flags"] = row_flags(df).map(", ".join)
    cols = {
        "optimizer": "optimizer",
        "implementation": "impl",
        "backend": "backend",
        "size": "size",
        "dtype": "dtype",
        "device": "device",
        "world_size": "ranks",
        "median_s": "median ms",
        "iqr_s": "IQR ms",
        "noise": "± %",
        "flags": "flags",
        "achieved_bw": "GB/s",
        "bw_fraction": "of probe",
        "vs_torch_best": "vs torch",
        "step_peak_bytes": "peak MB",
        "state_bytes": "state MB",
        "launches": "launches",
        "status": "status",
    }
    table = df[[c for c in cols if c in df.columns]].rename(columns=cols)
    for c in ("median ms", "IQR ms"):
        if c in table:
            table[c] = table[c] * 1e3
    if "± %" in table:
        table["± %"] = pd.to_numeric(table["± %"], errors="coerce") * 100
    if "GB/s" in table:
        table["GB/s"] = table["GB/s"] / 1e9
    for c in ("peak MB", "state MB"):
        if c in table:
            table[c] = table[c] / 1e6
    return table
