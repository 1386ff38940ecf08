"""Derived views of a run: ratios measured inside the run, and the summary table."""

from __future__ import annotations

import pandas as pd

# The axes that define "the same problem": rows that agree on them are comparable side by side.
_PROBLEM_AXES = ("optimizer", "size", "problem", "dtype", "device", "world_size", "repeat")


def problem_columns(df: pd.DataFrame) -> list[str]:
    return [c for c in df.columns if c in _PROBLEM_AXES or c.startswith("flag_")]


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
    """One line per case with the figures a reader looks at first."""
    df = with_ratios(df)
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
    if "GB/s" in table:
        table["GB/s"] = table["GB/s"] / 1e9
    for c in ("peak MB", "state MB"):
        if c in table:
            table[c] = table[c] / 1e6
    return table
