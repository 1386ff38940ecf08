"""Compare two runs case by case: what got slower, what got faster, and whether it is beyond noise.

Cases are matched by their axes (optimizer, implementation, backend, size, dtype, device, problem,
flag_*), never by case_id alone, and the repeats of a case are pooled: their raw samples are
concatenated. A verdict needs two things at once:

- significance: the difference is unlikely under noise alone (p < alpha);
- size: the median moved by more than `threshold` (a ratio above 1 + threshold, or below
  1 / (1 + threshold) for an improvement, so that a change and its undoing are symmetric).

Significance alone is not enough: with hundreds of samples a 1% drift between two runs (another
process, the clock of the day) is "significant". Size alone is not enough: with a handful of
samples a 10% gap is often noise. The threshold guards against drift, alpha against small samples.

metric="time" compares absolute step times (same machine). The test is Mann-Whitney U on the raw
samples, one-sided in each direction: a regression gate asks "is new slower?", not "is new
different?", and an improvement is the mirror question. Rank-based, so the long right tail of
timing samples (preemption, page faults) does not swamp it the way it would a t-test.

metric="ratio" compares `vs_torch_best` (summary.with_ratios: torch.optim's fastest median for the
same problem / ours), measured side by side inside each run, so two runs from different machines
can be compared: a machine twice as slow slows torch and ours alike. The change is
base vs_torch / new vs_torch (above 1: we lost ground against torch). Its significance comes from
a bootstrap: the raw samples of every row behind each ratio (ours and each torch backend) are
resampled, the medians and vs_torch_best recomputed, which gives the standard error of
log(vs_torch_best) in each run; z = log(change) / hypot(se_base, se_new) and a normal p. A normal
p rather than a count of resamples beyond 1, because Holm's correction (below) needs p-values far
smaller than 1 / resamples. Seeded: the same runs always get the same verdict. Too few samples
make any bootstrap overconfident; below `MIN_BOOTSTRAP_SAMPLES` the case is not tested ("same").
Ratio mode has less power than time mode: it inherits the noise of torch's medians too (a torch
reference with 16 samples and a heavy tail leaves a 1.5x loss at p ~ 0.02 before correction).

Many cases are judged at once, so p-values are Holm-corrected over the tested cases: `alpha`
bounds the chance that noise flags any case of the run, not each case (at alpha per case, noise
fails a 10-case run 7-10% of the time in simulation).

Status: a case whose rows are not all ok is "failed" (ok in base and failed in new: "regression");
"skipped" rows (a peer not installed, CUDA on a CPU box) are not failures.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from rich.console import Console
from rich.table import Table

from .store import RunStoreError, load, load_manifest
from .summary import problem_columns, with_ratios

Metric = Literal["time", "ratio"]

# The columns that name a case. `repeat` is not among them: repeats of a case are pooled.
CASE_AXES = (
    "optimizer", "implementation", "backend", "size", "dtype", "device", "world_size", "problem",
)  # fmt: skip
# Sort order of the report: what needs attention first.
VERDICTS = ("regression", "failed", "improvement", "fixed", "added", "removed", "skipped")
VERDICTS += ("same", "n/a")
BOOTSTRAP_RESAMPLES = 1000
MIN_BOOTSTRAP_SAMPLES = 8


def case_axes(*frames: pd.DataFrame) -> list[str]:
    """The axis columns present in any of the frames: flags one run lacks are None there."""
    present = {c for df in frames for c in df.columns}
    flags = sorted(c for c in present if c.startswith("flag_"))
    return [c for c in CASE_AXES if c in present] + flags


def _scalar(value: Any) -> Any:
    """A hashable, comparable key value: NaN and None alike are None; numpy scalars are python."""
    if value is None or (not isinstance(value, (str, bytes)) and pd.isna(value)):
        return None
    return value.item() if isinstance(value, np.generic) else value


# Axes added after runs were recorded: an old run's rows hold their value implicitly.
_AXIS_DEFAULTS = {"world_size": 1}


def _axis_value(row: dict[str, Any], axis: str) -> Any:
    value = _scalar(row.get(axis))
    return _AXIS_DEFAULTS.get(axis) if value is None else value


def pool_cases(df: pd.DataFrame, axes: list[str]) -> pd.DataFrame:
    """One row per case: its axes, its pooled ok samples, and one status for all its repeats."""
    cases: dict[tuple, dict[str, Any]] = {}
    for row in df.to_dict("records"):
        key = tuple(_axis_value(row, a) for a in axes)
        case = cases.setdefault(key, {**dict(zip(axes, key)), "chunks": [], "bad": [], "ok": 0})
        status = row.get("status", "ok")
        if status == "ok":
            case["ok"] += 1
            samples = row.get("samples_s")
            # a row without raw samples still has its median: a test on it has no power
            chunk = samples if samples is not None else [row.get("median_s", math.nan)]
            case["chunks"].append(np.asarray(chunk, dtype=float))
        elif status != "skipped":
            case["bad"].append(f"{status}: {row.get('error')}")
    out = []
    for case in cases.values():
        chunks, bad, ok = case.pop("chunks"), case.pop("bad"), case.pop("ok")
        samples = np.concatenate(chunks) if chunks else np.empty(0)
        status = "failed" if bad else "ok" if ok else "skipped"
        out.append({**case, "status": status, "error": bad[0] if bad else None, "samples": samples})
    columns = [*axes, "status", "error", "samples"]
    return pd.DataFrame(out, columns=columns)


def compare_runs(
    base: pd.DataFrame,
    new: pd.DataFrame,
    *,
    threshold: float = 0.05,
    alpha: float = 0.01,
    metric: Metric = "time",
) -> pd.DataFrame:
    """One row per case of either run: the axes, base/new medians, change, p_value and verdict.

    `change` is the quantity the verdict judges, above 1 meaning slower: new/base median time
    (metric="time") or base/new vs_torch_best (metric="ratio"). `p_raw` is the one-sided p-value
    in the direction of the change, `p_value` the same after Holm's correction over the cases
    compared. Sorted: regressions first.
    """
    if metric not in ("time", "ratio"):
        raise ValueError(f"metric must be 'time' or 'ratio', not {metric!r}")
    if threshold < 0 or not 0 < alpha < 1:
        raise ValueError(f"need threshold >= 0 and 0 < alpha < 1, got {threshold}, {alpha}")
    axes = case_axes(base, new)
    pooled = {"base": pool_cases(base, axes), "new": pool_cases(new, axes)}
    test: Callable[[dict, dict], dict[str, Any]] = _test_time
    if metric == "ratio":
        test = partial(_test_ratio, sides=(_RatioSide(pooled["base"]), _RatioSide(pooled["new"])))
    by_key = {
        side: {tuple(_scalar(r[a]) for a in axes): r for r in df.to_dict("records")}
        for side, df in pooled.items()
    }
    rows = []
    for key in {**by_key["base"], **by_key["new"]}:  # base order first, then new's additions
        b, n = by_key["base"].get(key), by_key["new"].get(key)
        row: dict[str, Any] = dict(zip(axes, key))
        row.update(base_median_s=_median(b), new_median_s=_median(n), n_base=_count(b))
        row.update(n_new=_count(n), change=math.nan, p_slower=math.nan, p_faster=math.nan)
        row.update(verdict=None, note="")
        row.update(_judge_status(b, n) or test(b, n))
        if metric == "time" and row["verdict"] is None:
            row["note"] = _power_note(row, alpha)
        rows.append(row)
    out = pd.DataFrame(rows)
    _decide(out, threshold, alpha)
    columns = [*axes, "verdict", "base_median_s", "new_median_s", "change", "p_value", "p_raw"]
    columns += ["n_base", "n_new", "note"]
    if metric == "ratio":
        columns[-3:-3] = ["base_vs_torch", "new_vs_torch"]
    out = out.reindex(columns=columns)
    rank = out["verdict"].map({v: i for i, v in enumerate(VERDICTS)})
    order = np.lexsort((-out["change"].fillna(-math.inf).to_numpy(), rank.to_numpy()))
    return out.iloc[order].reset_index(drop=True)


def _decide(out: pd.DataFrame, threshold: float, alpha: float) -> None:
    """Verdicts of the tested cases, in place, with Holm's correction over them.

    Each case tested at alpha would let noise fail a 10-case run 7-10% of the time (simulated:
    lognormal samples, sigma 0.05-0.2, 10-40 samples); Holm bounds the chance that noise flags
    any case of the run by alpha, and costs little power: a real slowdown has p-values orders
    of magnitude below alpha.
    """
    if out.empty:
        out["verdict"] = pd.Series(dtype=str)
        out["p_value"] = out["p_raw"] = pd.Series(dtype=float)
        return
    tested = out["verdict"].isna()
    slower = out["change"] >= 1
    out["p_raw"] = out["p_slower"].where(slower, out["p_faster"])
    for direction in ("p_slower", "p_faster"):
        out.loc[tested, direction] = _holm(out.loc[tested, direction].to_numpy(dtype=float))
    out["p_value"] = out["p_slower"].where(slower, out["p_faster"])
    regression = tested & (out["change"] > 1 + threshold) & (out["p_slower"] < alpha)
    improvement = tested & (out["change"] < 1 / (1 + threshold)) & (out["p_faster"] < alpha)
    out.loc[tested, "verdict"] = "same"
    out.loc[regression, "verdict"] = "regression"
    out.loc[improvement, "verdict"] = "improvement"


def _holm(p: np.ndarray) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values (NaN stays NaN and does not count as a test)."""
    adjusted = np.full_like(p, np.nan)
    valid = np.flatnonzero(~np.isnan(p))
    order = valid[np.argsort(p[valid])]
    m = len(order)
    running = 0.0
    for i, k in enumerate(order):
        running = max(running, min(1.0, (m - i) * p[k]))
        adjusted[k] = running
    return adjusted


def _median(case: dict | None) -> float:
    return float(np.median(case["samples"])) if case and len(case["samples"]) else math.nan


def _count(case: dict | None) -> int:
    return len(case["samples"]) if case else 0


def _judge_status(b: dict | None, n: dict | None) -> dict[str, Any] | None:
    """The verdicts that need no statistics; None when both sides hold ok samples."""
    if b is None:
        return {"verdict": "added"}
    if n is None:
        return {"verdict": "removed"}
    if n["status"] == "failed":
        was_ok = b["status"] == "ok"
        return {"verdict": "regression" if was_ok else "failed", "note": n["error"]}
    if b["status"] == "failed":
        return {"verdict": "fixed", "note": f"base {b['error']}"}
    if "skipped" in (b["status"], n["status"]):
        return {"verdict": "skipped"}
    return None


def _power_note(row: dict[str, Any], alpha: float) -> str:
    """Say when a test could not have flagged anything: its smallest p is not below alpha."""
    n, m = row["n_base"], row["n_new"]
    # the exact rank test cannot go below 1 / C(n+m, n): with 3 + 3 samples that is 0.05
    if n and m and 1 / math.comb(n + m, n) >= alpha:
        return f"too few samples ({n}+{m}) to reach p < {alpha:g}"
    return ""


def _test_time(b: dict, n: dict) -> dict[str, Any]:
    from scipy.stats import mannwhitneyu  # here: `workbench run` should not pay scipy's import

    x, y = n["samples"], b["samples"]
    change = float(np.median(x) / np.median(y))
    # One-sided, in the direction the medians moved: "is new stochastically greater (slower)?"
    # is the regression hypothesis. The other direction's p is left at 1: it can only be large,
    # it cannot make a verdict, and Holm's adjustment of a small p depends only on smaller ones.
    slower = change >= 1
    p = float(mannwhitneyu(x, y, alternative="greater" if slower else "less").pvalue)
    return {"change": change, "p_slower": p if slower else 1.0, "p_faster": 1.0 if slower else p}


class _RatioSide:
    """One run in ratio mode: vs_torch_best per case, and bootstrap medians of its rows."""

    def __init__(self, pooled: pd.DataFrame):
        self.axes = [c for c in pooled.columns if c not in ("status", "error", "samples")]
        frame = pooled.assign(
            median_s=[float(np.median(s)) if len(s) else math.nan for s in pooled["samples"]],
            status=pooled["status"].where(pooled["status"] != "failed", "error"),
        )
        # The point estimate is the summary's own figure. Pooled rows have no `repeat` column, so
        # with_ratios compares each case's pooled median with torch's pooled medians.
        rated = with_ratios(frame).to_dict("records")
        self.ratios = {self.case_key(r): r["vs_torch_best"] for r in rated}
        self.problem = problem_columns(frame)
        self.torch: dict[tuple, list[np.ndarray]] = {}
        self._torch_boot: dict[tuple, np.ndarray] = {}  # shared by every case of a problem
        self._rng = np.random.default_rng(0)  # seeded: the same runs always get the same verdict
        torch_ok = frame[(frame["implementation"] == "torch") & (frame["status"] == "ok")]
        for row in torch_ok.to_dict("records"):
            self.torch.setdefault(self.problem_key(row), []).append(row["samples"])

    def case_key(self, row: dict) -> tuple:
        return tuple(_scalar(row.get(c)) for c in self.axes)

    def problem_key(self, row: dict) -> tuple:
        return tuple(_scalar(row.get(c)) for c in self.problem)

    def vs_torch(self, row: dict) -> float:
        ratio = _scalar(self.ratios.get(self.case_key(row)))
        return math.nan if ratio is None else float(ratio)

    def boot_log_ratios(self, row: dict) -> np.ndarray:
        """Resampled log vs_torch_best: min over torch backends of resampled medians / ours."""
        key = self.problem_key(row)
        if key not in self._torch_boot:
            boots = [_boot_median(s, self._rng) for s in self.torch[key]]
            self._torch_boot[key] = np.min(boots, axis=0)
        return np.log(self._torch_boot[key] / _boot_median(row["samples"], self._rng))

    def smallest_sample(self, row: dict) -> int:
        return min(len(s) for s in [row["samples"], *self.torch.get(self.problem_key(row), [])])


def _boot_median(samples: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    idx = rng.integers(0, len(samples), size=(BOOTSTRAP_RESAMPLES, len(samples)))
    return np.median(samples[idx], axis=1)


def _test_ratio(b: dict, n: dict, *, sides: tuple[_RatioSide, _RatioSide]) -> dict[str, Any]:
    from scipy.stats import norm

    base, new = sides
    base_vs, new_vs = base.vs_torch(b), new.vs_torch(n)
    out: dict[str, Any] = {"base_vs_torch": base_vs, "new_vs_torch": new_vs}
    if b["implementation"] == "torch":
        return {**out, "verdict": "n/a", "note": "torch.optim is the reference of ratio mode"}
    if math.isnan(base_vs) or math.isnan(new_vs):
        return {**out, "verdict": "n/a", "note": "no ok torch.optim row for this problem"}
    out["change"] = change = base_vs / new_vs
    smallest = min(base.smallest_sample(b), new.smallest_sample(n))
    if smallest < MIN_BOOTSTRAP_SAMPLES:
        note = f"too few samples ({smallest} < {MIN_BOOTSTRAP_SAMPLES}) for the bootstrap"
        return {**out, "note": note}  # p stays NaN: "same", and outside Holm's family
    # the two runs are independent: the log change's variance is the sum of theirs
    se = math.hypot(base.boot_log_ratios(b).std(), new.boot_log_ratios(n).std())
    z = math.log(change) / se if se > 0 else math.copysign(math.inf, math.log(change))
    return {**out, "p_slower": float(norm.sf(z)), "p_faster": float(norm.cdf(z))}


# --- the command line: `workbench compare BASE NEW` ---------------------------------------------


def cmd_compare(args: argparse.Namespace) -> int:
    """Print the comparison; exit 1 on at least one regression, else 0 (2 is main's: bad input)."""
    console = Console(width=None if sys.stdout.isatty() else 200)
    if args.threshold < 0 or not 0 < args.alpha < 1:
        console.print("[red]error:[/red] --threshold must be >= 0 and --alpha in (0, 1)")
        return 2
    base, new = load(args.base), load(args.new)
    result = compare_runs(base, new, threshold=args.threshold, alpha=args.alpha, metric=args.metric)
    console.print(
        f"compare {args.base} -> {args.new}: metric {args.metric}, "
        f"threshold {args.threshold * 100:g}%, alpha {args.alpha:g}",
        highlight=False,
    )
    if args.metric == "time" and (hint := _machine_hint(args.base, args.new)):
        console.print(f"[yellow]{hint}", highlight=False)
    console.print(render_table(result, args.metric))
    counts = result["verdict"].value_counts()
    console.print(", ".join(f"{counts[v]} {v}" for v in VERDICTS if v in counts), highlight=False)
    return 1 if (result["verdict"] == "regression").any() else 0


def _machine_hint(base: Path, new: Path) -> str | None:
    """Absolute times from two machines differ by the machine: say so, and what to use instead."""
    keys = ("hostname", "cpu_model", "gpu_name")
    try:
        envs = [load_manifest(p).get("environment", {}) for p in (base, new)]
    except RunStoreError:  # a bare parquet file has no manifest beside it
        return None
    differ = [k for k in keys if envs[0].get(k) != envs[1].get(k)]
    if not differ:
        return None
    return f"the runs differ in {', '.join(differ)}: consider --metric ratio"


_STYLE = {"regression": "bold red", "failed": "red", "improvement": "green", "fixed": "green"}


def render_table(result: pd.DataFrame, metric: Metric) -> Table:
    """A rich Table of the comparison, one line per case."""
    flags = [c for c in result.columns if c.startswith("flag_")]
    axes = [c for c in (*CASE_AXES, *flags) if c in result and result[c].notna().any()]
    table = Table()
    for c in axes:
        table.add_column({"implementation": "impl"}.get(c, c.removeprefix("flag_")))
    quantity = ("base ms", "new ms") if metric == "time" else ("base vs torch", "new vs torch")
    for c in (*quantity, "change", "p (Holm)", "n", "verdict", "note"):
        table.add_column(c, justify="left" if c in ("verdict", "note") else "right")
    for row in result.to_dict("records"):
        if metric == "time":
            figures = [_num(row["base_median_s"] * 1e3), _num(row["new_median_s"] * 1e3)]
        else:
            figures = [_num(row["base_vs_torch"]), _num(row["new_vs_torch"])]
        verdict = row["verdict"]
        style = _STYLE.get(verdict, "")
        table.add_row(
            *("-" if _scalar(row[c]) is None else str(row[c]) for c in axes),
            *figures,
            "-" if pd.isna(row["change"]) else f"{row['change']:.3f}x",
            "-" if pd.isna(row["p_value"]) else f"{row['p_value']:.2g}",
            f"{row['n_base']}/{row['n_new']}",
            f"[{style}]{verdict}[/]" if style else verdict,
            row["note"] or "",
        )
    return table


def _num(value: Any) -> str:
    return "-" if value is None or pd.isna(value) else f"{value:.4g}"
