"""`workbench compare BASE NEW`: the gate's command line (the comparison itself is compare.py's):
the table, the verdict counts, the machine check, the Markdown comment and the exit code."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import pandas as pd
from rich.console import Console
from rich.table import Table

from .compare import (
    CASE_AXES,
    DEFAULT_LOSS_TOLERANCE,
    GATE_VERDICTS,
    VERDICTS,
    Metric,
    cell_text,
    compare_runs,
    percent,
    scalar_value,
)
from .markdown import write_markdown
from .store import RunStoreError, load, load_manifest

# --- the command line: `workbench compare BASE NEW` ---------------------------------------------


def cmd_compare(args: argparse.Namespace) -> int:
    """Print the comparison; exit 1 when a case is a regression, a new failure or missing (unless
    args.allow_missing), else 0; 2 on bad input (main's), and in time mode on runs whose machine
    fingerprints differ (unless args.allow_other_machine). Inconclusive cases are counted only."""
    markdown = getattr(args, "markdown", None)  # --markdown FILE; "-": stdout
    # Markdown on stdout is the output (`> comment.md`): the console's report goes to stderr
    console = Console(width=None if sys.stdout.isatty() else 200, stderr=markdown == "-")
    # getattr: a Namespace built by a caller of cmd_compare may predate these two options
    loss_tolerance = getattr(args, "loss_tolerance", DEFAULT_LOSS_TOLERANCE)
    if args.threshold < 0 or not 0 < args.alpha < 1 or not loss_tolerance >= 0:
        console.print(
            "[red]error:[/red] --threshold and --loss-tolerance must be >= 0, --alpha in (0, 1)"
        )
        return 2
    base, new = load(args.base), load(args.new)
    differ, machine_note = _machine_difference(args.base, args.new)
    if args.metric == "time" and differ:
        if not getattr(args, "allow_other_machine", False):
            console.print(f"[red]error:[/red] {_refusal(differ)}", highlight=False)
            return 2
        machine_note = f"the runs' machines differ ({_fields(differ)}), --allow-other-machine"
    result = compare_runs(
        base, new, threshold=args.threshold, alpha=args.alpha, metric=args.metric,
        loss_tolerance=loss_tolerance,
    )  # fmt: skip
    console.print(
        f"compare {args.base} -> {args.new}: metric {args.metric}, "
        f"threshold {args.threshold * 100:g}%, alpha {args.alpha:g}",
        highlight=False,
    )
    if args.metric == "time" and machine_note:
        console.print(f"[yellow]{machine_note}", highlight=False)
    console.print(render_table(result, args.metric))
    counts = result["verdict"].value_counts()
    console.print(", ".join(f"{counts[v]} {v}" for v in VERDICTS if v in counts), highlight=False)
    exact = result["exact_verdict"].value_counts()
    if len(exact):  # what the exact columns alone say, of the cases where both runs hold them
        shown = ", ".join(f"{exact[v]} {v}" for v in VERDICTS if v in exact)
        console.print(f"bytes/loss alone: {shown}", highlight=False)
    gate = [v for v in GATE_VERDICTS if v != "missing" or not args.allow_missing]
    failing = [f"{counts[v]} {v}" for v in gate if v in counts]
    if failing:
        hint = (
            " (--allow-missing accepts missing cases)"
            if "missing" in gate and "missing" in counts
            else ""
        )
        console.print(f"[red]fails the gate:[/red] {', '.join(failing)}{hint}", highlight=False)
    if markdown is not None:
        missing_ok = args.allow_missing
        write_markdown(markdown, result, args.base, args.new, args.metric, allow_missing=missing_ok)
    return 1 if failing else 0


def _machine_difference(base: Path, new: Path) -> tuple[dict[str, tuple[Any, Any]], str | None]:
    """Where both runs record a machine fingerprint: {field: (base value, new value)} for the
    fields that differ, and no hint. Where one predates the fingerprint: {} (never a refusal:
    its manifest may lack the facts) and a hint where hostname, CPU or GPU differ."""
    try:
        envs = [load_manifest(p).get("environment") or {} for p in (base, new)]
    except RunStoreError:  # a bare parquet file has no manifest beside it
        return {}, None
    prints = [env.get("machine") for env in envs]
    if isinstance(prints[0], dict) and isinstance(prints[1], dict):
        keys = [*prints[0], *(k for k in prints[1] if k not in prints[0])]
        pairs = {k: (prints[0].get(k), prints[1].get(k)) for k in keys}
        return {k: v for k, v in pairs.items() if v[0] != v[1]}, None
    keys = ("hostname", "cpu_model", "gpu_name")
    differ = [k for k in keys if envs[0].get(k) != envs[1].get(k)]
    if not differ:
        return {}, None
    return {}, f"the runs differ in {', '.join(differ)}: consider --metric ratio"


def _fields(differ: dict[str, tuple[Any, Any]]) -> str:
    return "; ".join(f"{k} {b!r} vs {n!r}" for k, (b, n) in differ.items())


def _refusal(differ: dict[str, tuple[Any, Any]]) -> str:
    return (
        f"the runs were measured on different machines ({_fields(differ)}): their absolute "
        "times do not compare. Use --metric ratio (ours against torch.optim, measured inside "
        "each run), or --allow-other-machine if you know that the two time alike"
    )


_STYLE = {
    "regression": "bold red", "new-failure": "bold red", "missing": "bold red",
    "inconclusive": "yellow", "failed": "red", "improvement": "green", "fixed": "green",
}  # fmt: skip


def render_table(result: pd.DataFrame, metric: Metric) -> Table:
    """A rich Table of the comparison, one line per case; `noise` is the noise floor, +-%."""
    flags = [c for c in result.columns if c.startswith("flag_")]
    axes = [c for c in (*CASE_AXES, *flags) if c in result and result[c].notna().any()]
    table = Table()
    for c in axes:
        table.add_column({"implementation": "impl"}.get(c, c.removeprefix("flag_")))
    quantity = ("base ms", "new ms") if metric == "time" else ("base vs torch", "new vs torch")
    # the exact verdict beside the case's own, so that a "regression" at 1.000x reads right
    exact = "exact_verdict" in result and bool(result["exact_verdict"].notna().any())
    words = ("bytes/loss", "verdict", "note") if exact else ("verdict", "note")
    for c in (*quantity, "change", "noise", "p (Holm)", "n", *words):
        table.add_column(c, justify="left" if c in words else "right")
    for row in result.to_dict("records"):
        if metric == "time":
            figures = [_num(row["base_median_s"] * 1e3), _num(row["new_median_s"] * 1e3)]
        else:
            figures = [_num(row["base_vs_torch"]), _num(row["new_vs_torch"])]
        table.add_row(
            *("-" if scalar_value(row[c]) is None else str(row[c]) for c in axes),
            *figures,
            "-" if pd.isna(row["change"]) else f"{row['change']:.3f}x",
            "-" if pd.isna(row["noise_floor"]) else f"±{percent(row['noise_floor'])}",
            "-" if pd.isna(row["p_value"]) else f"{row['p_value']:.2g}",
            f"{row['n_base']}/{row['n_new']}",
            *([_styled(cell_text(row["exact_verdict"]) or "-")] if exact else []),
            _styled(row["verdict"]),
            cell_text(row["note"]),
        )
    return table


def _styled(verdict: str) -> str:
    style = _STYLE.get(verdict, "")
    return f"[{style}]{verdict}[/]" if style else verdict


def _num(value: Any) -> str:
    return "-" if value is None or pd.isna(value) else f"{value:.4g}"
