"""`workbench compare BASE NEW --markdown [FILE]`: the comparison as a pull request comment.

A headline (does the gate pass, how many of each verdict), then a table of what needs a look:
regressions, new failures and missing cases, then inconclusive ones, then improvements; the other
cases in a collapsed <details> block; and links to the new run's figures and report where
`workbench plot` / `workbench report` wrote them. Reads compare_runs' output, decides nothing.
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
import pandas as pd

from .compare import CASE_AXES, GATE_VERDICTS, VERDICTS, Metric

# The table up front, in this order; everything else goes in the collapsed block.
ATTENTION = ("regression", "new-failure", "missing", "inconclusive", "improvement")
# GitHub refuses a comment over 65536 characters: the collapsed rows give way first.
COMMENT_LIMIT = 65_000
# Where `workbench plot` and `workbench report` write (workbench.plots; not imported: matplotlib).
FIGURES_DIR, REPORT = "figures", "report.html"


def render_markdown(
    result: pd.DataFrame,
    base: Path,
    new: Path,
    metric: Metric,
    *,
    allow_missing: bool = False,
    link_root: Path | None = None,
) -> str:
    """The comment for compare_runs' `result`. Links are relative to `link_root` (where the text
    will be read from: the folder of the file written; default the working directory)."""
    counts = result["verdict"].value_counts()
    gate = [v for v in GATE_VERDICTS if v != "missing" or not allow_missing]
    failing = [f"{counts[v]} {v}" for v in gate if v in counts]
    tally = ", ".join(f"{counts[v]} {v}" for v in VERDICTS if v in counts) or "no cases"
    lines = [f"### Benchmarks: `{_run_name(base)}` → `{_run_name(new)}`", ""]
    lines.append(
        f"**❌ fails the gate:** {', '.join(failing)}" if failing else "**✅ passes the gate**"
    )
    lines += ["", f"{len(result)} cases, metric `{metric}`: {tally}.", ""]
    axes = [c for c in result.columns if _is_axis(c) and result[c].notna().any()]
    first = result[result["verdict"].isin(ATTENTION)]
    rank = first["verdict"].map({v: i for i, v in enumerate(ATTENTION)}).to_numpy()
    first = first.iloc[np.argsort(rank, kind="stable")]  # stable: compare's order within a verdict
    rest = result[~result["verdict"].isin(ATTENTION)]
    budget = COMMENT_LIMIT - 2_000  # room for the headline, the links and the block's tags
    if len(first):
        table, budget = _table(first, axes, metric, budget)
        lines += [*table, ""]
    else:
        lines += ["No case moved beyond the threshold and the noise.", ""]
    if len(rest):
        kinds = ", ".join(
            f"{counts[v]} {v}" for v in VERDICTS if v in counts and v not in ATTENTION
        )
        table, _ = _table(rest, axes, metric, budget)
        lines += ["<details>", f"<summary>{len(rest)} other cases: {kinds}</summary>", ""]
        lines += [*table, "", "</details>", ""]
    lines += _links(new, link_root or Path.cwd())
    return "\n".join(lines).rstrip() + "\n"


def write_markdown(
    target: str, result: pd.DataFrame, base: Path, new: Path, metric: Metric, **kw: Any
) -> None:
    """render_markdown to the file `target`, or to stdout for "-"."""
    if target == "-":
        sys.stdout.write(render_markdown(result, base, new, metric, **kw))
        return
    path = Path(target)
    text = render_markdown(result, base, new, metric, link_root=path.resolve().parent, **kw)
    path.write_text(text, encoding="utf-8")


def _is_axis(column: str) -> bool:
    return column in CASE_AXES or column.startswith("flag_")


def _run_name(path: Path) -> str:
    path = Path(path)
    return (path.parent if path.suffix == ".parquet" else path).name or str(path)


def _table(
    rows: pd.DataFrame, axes: list[str], metric: Metric, budget: int
) -> tuple[list[str], int]:
    """The table's lines within `budget` characters (a last line says how many did not fit), and
    the budget left."""
    names = [{"implementation": "impl"}.get(c, c.removeprefix("flag_")) for c in axes]
    quantity = ["base ms", "new ms"] if metric == "time" else ["base vs torch", "new vs torch"]
    header = [*names, *quantity, "change", "noise floor", "verdict", "note"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    budget -= sum(len(line) + 1 for line in lines)
    records = rows.to_dict("records")
    for i, row in enumerate(records):
        line = "| " + " | ".join(_cells(row, axes, metric)) + " |"
        if len(line) + 1 > budget:
            lines.append(f"\n… and {len(records) - i} more cases: see `workbench compare`'s output")
            return lines, 0
        lines.append(line)
        budget -= len(line) + 1
    return lines, budget


def _cells(row: dict[str, Any], axes: list[str], metric: Metric) -> list[str]:
    if metric == "time":
        figures = [_num(row["base_median_s"], 1e3), _num(row["new_median_s"], 1e3)]
    else:
        figures = [_num(row["base_vs_torch"]), _num(row["new_vs_torch"])]
    change, floor = row["change"], row["noise_floor"]
    verdict = row["verdict"]
    return [
        *(_escape(_axis(row[c])) for c in axes),
        *figures,
        "-" if _missing(change) else f"{change:.3f}x",
        "-" if _missing(floor) else f"±{_pct(floor)}",
        f"**{verdict}**" if verdict in GATE_VERDICTS else str(verdict),
        _escape("" if _missing(row["note"]) else str(row["note"])),
    ]


def _links(new: Path, root: Path) -> list[str]:
    """Links to the new run's report and PNG figures, where they were written."""
    run_dir = Path(new)
    run_dir = run_dir.parent if run_dir.suffix == ".parquet" else run_dir
    found = [run_dir / REPORT] if (run_dir / REPORT).is_file() else []
    found += sorted((run_dir / FIGURES_DIR).glob("*.png"))
    if not found:
        return []
    links = [f"[{p.name}]({_relative(p, root)})" for p in found]
    return [f"New run's report and figures: {' · '.join(links)}"]


def _relative(path: Path, root: Path) -> str:
    # relative, so that the link works wherever the run and the comment are checked out together
    return quote(Path(os.path.relpath(path.resolve(), root.resolve())).as_posix(), safe="/._-~")


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _axis(value: Any) -> str:
    return "-" if _missing(value) else str(value)


def _num(value: Any, scale: float = 1.0) -> str:
    return "-" if _missing(value) else f"{value * scale:.4g}"


def _pct(x: float) -> str:
    if not math.isfinite(x):
        return "inf"
    return f"{x * 100:.0f}%" if x >= 0.1 else f"{x * 100:.1f}%"


def _escape(text: str) -> str:
    """A table cell: a pipe would end it, a newline the row, `<...>` would be read as HTML."""
    text = text.replace("\r", "").replace("\n", " ").replace("|", "\\|")
    return text.replace("<", "&lt;").replace(">", "&gt;")
