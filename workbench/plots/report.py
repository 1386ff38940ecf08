"""`<run>/report.html`: one self-contained page per run, to mail, attach to a CI job, or archive.

Everything is inside the file: figures as base64 PNG, styles inline, no scripts, no links out.
It says where the numbers come from (commit, versions, machine, what the device could not
measure), how many rows can be trusted at face value, then the numbers (summary table, with
unstable/flagged rows marked ⚠ and a legend of the flags), then what failed and why, then the
figures.
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from workbench.results.summary import (
    flag_legend,
    row_flags,
    stability_recorded,
    summary_table,
    unstable,
)

from .render import FIGURES, Rendered, load_run, render_run

REPORT = "report.html"

CSS = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222;
       padding: 0 1em; }
h1 { font-size: 1.5em; margin-bottom: 0.2em; } h2 { margin-top: 1.8em; font-size: 1.2em; }
.sub { color: #666; margin-top: 0; }
table { border-collapse: collapse; font-size: 12px; margin: 0.5em 0; }
th, td { border-bottom: 1px solid #ddd; padding: 3px 8px; text-align: left; vertical-align: top; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
th { background: #f4f4f4; position: sticky; top: 0; }
tr.failed td { color: #a33; background: #fff5f5; } tr.skipped td { color: #888; }
tr.unstable td { color: #777;
  background: repeating-linear-gradient(135deg, #fffaf0 0 6px, #f6eedc 6px 12px); }
.mark { color: #b36b00; font-weight: bold; }
.legend { font-size: 12px; color: #555; margin: 0.3em 0 1em; padding-left: 1.2em; }
.kv th { background: none; width: 14em; color: #555; font-weight: normal; }
.notice { padding: 0.8em 1em; background: #fff4e0; border-left: 4px solid #e69b00; }
.failure { margin: 0.6em 0; padding: 0.5em 0.8em; border-left: 4px solid #c0392b;
           background: #fdf3f2; }
pre { white-space: pre-wrap; word-break: break-word; margin: 0.3em 0; font-size: 12px; }
figure { margin: 1.5em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { color: #555; font-size: 13px; }
.skipped { color: #777; font-size: 13px; }
"""

# Convergence rows read differently from latency rows: a table of their own when present, with
# the columns of `workbench show` (workbench.harness.convergence.convergence_table), kept here so
# that the report imports no torch.
CONVERGENCE_COLUMNS = {
    "optimizer": "optimizer",
    "implementation": "impl",
    "backend": "backend",
    "problem": "problem",
    "dtype": "dtype",
    "device": "device",
    "final_loss": "final loss",
    "best_loss": "best loss",
    "steps_to_target": "steps to target",
    "time_to_target_s": "s to target",
    "total_time_s": "total s",
    "distance_to_reference": "vs reference",
    "status": "status",
}


def write_report(
    run_dir: str | Path, out: str | Path | None = None, rendered: Rendered | None = None
) -> Path:
    """Render the run's figures and write the report; returns its path (`<run>/report.html`).

    `rendered`: figures already rendered for this run (by `render_run`), to embed as they are.
    """
    rendered = rendered or render_run(run_dir)
    df, manifest = load_run(rendered.run_dir)
    sections = [
        _header(manifest, df),
        _stability(df),
        _environment(manifest),
        _unavailable(manifest),
        _results(df),
        _failures(df),
        _figures(rendered),
    ]
    title = f"workbench run {manifest.get('run_id', rendered.run_dir.name)}"
    page = (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{_e(title)}</title><style>{CSS}</style></head>\n<body>\n"
        + "\n".join(s for s in sections if s)
        + "\n</body></html>\n"
    )
    path = Path(out) if out else rendered.run_dir / REPORT
    path.write_text(page, encoding="utf-8")
    return path


def _e(value: object) -> str:
    return html.escape("" if value is None else str(value))


def _fmt(value: object) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def _kv(pairs: Iterable[tuple[str, object]]) -> str:
    rows = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in pairs if v is not None)
    return f'<table class="kv">{rows}</table>'


MARK = "⚠"


def _table(frame: pd.DataFrame, shaky: Iterable[bool] | None = None) -> str:
    """A plain HTML table; rows whose status is not ok are marked, numbers right-aligned.

    `shaky`, one per row in order: rows not to take at face value (unstable or flagged), shown
    muted and striped with a ⚠ before their flags ("unstable" without any; in the first cell when
    the table has no flags column).
    """
    head = "".join(f"<th>{_e(c)}</th>" for c in frame.columns)
    numeric = {c for c in frame.columns if frame[c].dtype.kind in "fiu"}
    marks = list(shaky) if shaky is not None else [False] * len(frame)
    body = []
    for (_, row), marked in zip(frame.iterrows(), marks):
        status = row.get("status", "ok")
        cls = "" if status == "ok" else f' class="{"skipped" if status == "skipped" else "failed"}"'
        if marked and status == "ok":
            cls = ' class="unstable"'
        cells = []
        mark_in = "flags" if "flags" in frame.columns else frame.columns[0]
        for c, v in row.items():
            text = _e(_fmt(v))
            if c == mark_in and marked:
                text = f'<span class="mark">{MARK}</span> {text or "unstable"}'
            cells.append(f'<td class="num">{text}</td>' if c in numeric else f"<td>{text}</td>")
        body.append(f"<tr{cls}>{''.join(cells)}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _stability(df: pd.DataFrame) -> str:
    """The count a reader checks before the numbers: how many ok rows are stable, how many rows
    are flagged, and which rows did not run ok at all (no-op included)."""
    if df.empty:
        return ""
    ok = df["status"] == "ok"
    not_ok = df.loc[~ok, "status"].value_counts()
    others = ", ".join(f"{n} {status}" for status, n in not_ok.items())
    tail = f" · not ok: {_e(others)}" if others else " · every row ok"
    if not stability_recorded(df):
        return (
            f'<p class="stability">Stability not recorded (a run from before the stability '
            f"checks): {int(ok.sum())} ok rows, none marked{tail}</p>"
        )
    if "stable" in df.columns:  # a NaN (a row from an older run in the frame) is not known stable
        stable = int((ok & df["stable"].map(lambda v: v is True or v is np.True_)).sum())
    else:
        stable = int((ok & ~unstable(df)).sum())
    flagged = int(row_flags(df).map(bool).sum())
    return (
        f'<p class="stability"><b>{stable} of {int(ok.sum())} ok rows stable; {flagged} '
        f"flagged</b>{tail}</p>"
    )


def _legend(df: pd.DataFrame) -> str:
    items = "".join(f"<li><b>{_e(f)}</b>: {_e(m)}</li>" for f, m in flag_legend(df).items())
    return (
        f'<ul class="legend"><li><span class="mark">{MARK}</span> marks a row not to take at face '
        f"value (striped): it carries one of these flags, or is recorded as not stable.</li>"
        f"{items}</ul>"
    )


def _header(manifest: Mapping[str, Any], df: pd.DataFrame) -> str:
    run_id = manifest.get("run_id", "?")
    counts = df["status"].value_counts() if len(df) else pd.Series(dtype=int)
    tally = ", ".join(f"{n} {status}" for status, n in counts.items()) or "no rows"
    lines = [
        f"<h1>Run {_e(run_id)}</h1>",
        f'<p class="sub">suite <b>{_e(manifest.get("suite"))}</b> · {_e(manifest.get("status"))}'
        f" · {_e(manifest.get('started'))} → {_e(manifest.get('finished', '…'))} · "
        f"{len(df)} of {_e(manifest.get('n_cases', '?'))} cases: {_e(tally)}</p>",
    ]
    if manifest.get("overrides"):
        lines.append(f"<p>overrides: <code>{_e(' '.join(manifest['overrides']))}</code></p>")
    if not (df["status"] == "ok").any():
        what = "The run holds no rows yet." if df.empty else f"No case finished ok ({tally})."
        lines.append(
            f'<p class="notice"><b>{_e(what)}</b> There is nothing to plot or compare; '
            "the failures below say why.</p>"
        )
    return "\n".join(lines)


def _environment(manifest: Mapping[str, Any]) -> str:
    env = manifest.get("environment", {})
    sha = env.get("git_sha")
    dirty = env.get("git_dirty")
    git = None if sha is None else f"{sha}{' (dirty: uncommitted changes)' if dirty else ''}"
    gpu = env.get("gpu_name")
    if gpu:
        extras = [
            f"driver {env['gpu_driver']}" if env.get("gpu_driver") else None,
            f"{env['gpu_memory_bytes'] / 2**30:.0f} GiB" if env.get("gpu_memory_bytes") else None,
            f"SM clock {env.get('gpu_sm_clock_mhz')}/{env.get('gpu_sm_clock_max_mhz')} MHz"
            if env.get("gpu_sm_clock_mhz")
            else None,
            f"power {env.get('gpu_power_w')}/{env.get('gpu_power_limit_w')} W"
            if env.get("gpu_power_w")
            else None,
            f"{env['gpu_temperature_c']} °C" if env.get("gpu_temperature_c") else None,
        ]
        gpu = ", ".join([gpu, *[x for x in extras if x]])
    torch_version = env.get("torch")
    if torch_version and env.get("torch_cuda"):
        torch_version += f" (CUDA {env['torch_cuda']})"
    cpu = env.get("cpu_model")
    if cpu:
        cpu += f", {env.get('logical_cores')} logical cores, {env.get('torch_threads')} threads"
    probes = manifest.get("stream_bandwidth") or {}
    pairs = [
        ("git", git),
        ("python", env.get("python")),
        ("torch", torch_version),
        ("triton", env.get("triton")),
        ("numpy", env.get("numpy")),
        ("CPU", cpu),
        ("GPU", gpu or "none"),
        ("OS", env.get("os")),
        ("host", env.get("hostname")),
        *(
            (f"stream bandwidth ({dev})", f"{bw / 1e9:.1f} GB/s")
            for dev, bw in probes.items()
            if bw
        ),
    ]
    return "<h2>Environment</h2>\n" + _kv(pairs)


def _unavailable(manifest: Mapping[str, Any]) -> str:
    """What this machine could not measure, grouped by reason (one GPU-less reason, not eight)."""
    by_reason: dict[str, list[str]] = {}
    for device, caps in (manifest.get("capabilities") or {}).items():
        for name, reason in (caps or {}).items():
            if reason:
                by_reason.setdefault(str(reason), []).append(f"{name} ({device})")
    for name, reason in (manifest.get("environment", {}).get("unavailable") or {}).items():
        by_reason.setdefault(str(reason), []).append(name)
    if not by_reason:
        return ""
    items = "".join(
        f"<li><b>{_e(', '.join(names))}</b>: {_e(reason)}</li>"
        for reason, names in by_reason.items()
    )
    return f"<h2>Not measured on this machine</h2>\n<ul>{items}</ul>"


def _results(df: pd.DataFrame) -> str:
    if df.empty:
        return ""
    convergence = df["problem"].notna() if "problem" in df.columns else pd.Series(False, df.index)
    parts = []
    latency = df[~convergence]
    if (~convergence).any():
        parts += [
            "<h2>Summary</h2>",
            "<p>Times in ms (median, IQR of the raw samples); <i>vs torch</i> is torch.optim's "
            "fastest median for the same problem over this one, measured in this run "
            "(above 1 is faster); <i>of probe</i> is the fraction of the streaming bandwidth; "
            "<i>± %</i> is the half-width of the median's 95% confidence interval.</p>",
            _legend(df),
            _table(summary_table(latency), unstable(latency)),
        ]
    if convergence.any():
        conv = df[convergence]
        cols = {k: v for k, v in CONVERGENCE_COLUMNS.items() if k in conv.columns}
        table = conv[list(cols)].rename(columns=cols)
        if "flags" in conv.columns:
            table.insert(len(table.columns) - 1, "flags", row_flags(conv).map(", ".join))
        legend = [] if parts else [_legend(df)]  # once, before the first table
        parts += ["<h2>Convergence</h2>", *legend, _table(table, unstable(conv))]
    return "\n".join(parts)


def _label(row: Mapping[str, Any]) -> str:
    keys = ("optimizer", "implementation", "backend", "problem", "size", "dtype", "device")
    # dict.fromkeys: a convergence case's size is its problem's name; say it once
    parts = list(dict.fromkeys(str(row[k]) for k in keys if isinstance(row.get(k), str)))
    flags = [f"{k[5:]}={row[k]}" for k in row if k.startswith("flag_") and pd.notna(row[k])]
    return " / ".join(parts + flags) + (f" #{row['repeat']}" if "repeat" in row else "")


def _failures(df: pd.DataFrame) -> str:
    if df.empty:
        return ""
    failed = df[df["status"] != "ok"]
    if failed.empty:
        return "<h2>Failures</h2>\n<p>None: every case ran ok.</p>"
    # Errors first: a skipped peer that is not installed matters less than a crash.
    failed = failed.assign(_skip=failed["status"] == "skipped").sort_values("_skip", kind="stable")
    items = []
    for _, row in failed.iterrows():
        r = row.to_dict()
        trace = r.get("traceback")
        details = (
            f"<details><summary>traceback</summary><pre>{_e(trace)}</pre></details>"
            if isinstance(trace, str) and trace
            else ""
        )
        items.append(
            f'<div class="failure"><b>{_e(r["status"])}</b> · {_e(_label(r))} · '
            f"<code>{_e(r.get('case_id', ''))}</code><pre>{_e(r.get('error'))}</pre>{details}</div>"
        )
    return f"<h2>Failures ({len(failed)})</h2>\n" + "\n".join(items)


def _figures(rendered: Rendered) -> str:
    parts = ["<h2>Figures</h2>"]
    for spec in FIGURES:
        png = rendered.png(spec.name)
        if png is None:
            continue
        data = base64.b64encode(png.read_bytes()).decode("ascii")
        parts.append(
            f'<figure id="{_e(spec.name)}"><img alt="{_e(spec.title)}" '
            f'src="data:image/png;base64,{data}"><figcaption><b>{_e(spec.title)}.</b> '
            f"{_e(spec.caption)} (<code>figures/{_e(spec.name)}.svg</code>)</figcaption></figure>"
        )
    if len(parts) == 1:
        parts.append("<p>No figure: the run has no data to plot.</p>")
    if rendered.skipped:
        items = "".join(f"<li>{_e(n)}: {_e(r)}</li>" for n, r in rendered.skipped.items())
        n = len(rendered.skipped)
        parts.append(
            f'<details class="skipped"><summary>figures not drawn ({n})</summary>'
            f"<ul>{items}</ul></details>"
        )
    return "\n".join(parts)
