"""The figures of `workbench history`, drawn from its tidy frame (workbench.results.history).

Per optimizer, two figures, so that the page grows with optimizers rather than with cases:

- trends: small multiples, a panel per problem (size, dtype, device, flags), a line per
  implementation/backend: the pooled median step time per run, its noise band (median ± the
  half-width of its 95% CI), the gate's verdicts against the previous run marked (red ▲ a
  regression, green ▼ an improvement), unstable points hollow;
- ratio: per problem, the best workbench backend's vs_torch_best per run (torch.optim's fastest
  median / ours, measured side by side in each run: above 1 we are faster), the backend named
  where the best one changes.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from workbench.results.compare import CASE_AXES, DEFAULT_THRESHOLD

from ._common import STYLE, SkipFigure, figure_legend, line_styles, panel_grid, styled
from .report import CSS  # the run report's look, so that the two pages read alike

# What the gate's verdicts look like on a trend: a slower step points up, a faster one down.
GATE_MARKS = {"regression": ("^", "#c0392b"), "improvement": ("v", "#1e8449")}
HOLLOW_LABEL = "unstable (flagged, or not stable): hollow"
BAND_LABEL = "noise band: median ± half-width of its 95% CI"
LINE_AXES = ("optimizer", "implementation", "backend")  # a figure, then a line, not a panel


def axes_of(history: pd.DataFrame) -> list[str]:
    """The case axes the frame holds, flags last (the order compare.case_axes gives)."""
    flags = sorted(c for c in history.columns if c.startswith("flag_"))
    return [c for c in CASE_AXES if c in history.columns] + flags


def panel_labels(cases: pd.DataFrame) -> pd.Series:
    """Each row's problem, "100x10k · float32 · cpu · weight_decay=0.1": the axes that are not
    the optimizer, implementation or backend, named as results.history.case_label names them
    (which this module does not import: that module imports this one to write its page)."""
    problem = [a for a in axes_of(cases) if a not in LINE_AXES]

    def label(row: pd.Series) -> str:
        parts = []
        for a in problem:
            v = None if pd.isna(row[a]) else row[a]
            if v is None or (a == "world_size" and v == 1):
                continue
            named = a.startswith("flag_") or a == "world_size"
            parts.append(f"{a.removeprefix('flag_')}={v}" if named else str(v))
        return " · ".join(parts) or "all"

    return cases.apply(label, axis=1) if len(cases) else pd.Series(dtype=str)


def _runs_axis(ax: Axes, n_runs: int) -> None:
    ax.set_xlim(0.5, n_runs + 0.5)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    ax.set_xlabel("run (# in the table of runs)")


@styled
def trend_figure(cases: pd.DataFrame, optimizer: str, n_runs: int) -> Figure:
    """The trends of one optimizer's cases: see the module docstring."""
    data = cases[np.isfinite(cases["median_s"].astype(float))]
    if data.empty:
        raise SkipFigure(f"{optimizer}: no case has a median step time")
    data = data.assign(
        variant=data["implementation"].astype(str) + "/" + data["backend"].astype(str),
        panel=panel_labels(data),
    )
    panels = list(dict.fromkeys(data["panel"]))
    fig, axes = panel_grid(len(panels), ncols=3, panel_w=4.0, panel_h=2.8, extra_h=0.7)
    styles = line_styles(data)
    for ax, panel in zip(axes, panels):
        for variant, line in data[data["panel"] == panel].groupby("variant", sort=False):
            _trend_line(ax, line.sort_values("order"), str(variant), styles[str(variant)])
        ax.set_title(panel)
        ax.set_ylabel("median step (ms)")
        ax.set_ylim(bottom=0)  # linear from 0: a 1.5x step up looks like one
        _runs_axis(ax, n_runs)
    fig.suptitle(f"{optimizer}: median step time per run")
    figure_legend(fig, axes, _proxies())
    return fig


def _trend_line(ax: Axes, line: pd.DataFrame, label: str, style: dict) -> None:
    x = line["order"].to_numpy(dtype=float)
    y = line["median_s"].to_numpy(dtype=float) * 1e3
    # an unknown noise (one sample: inf) has no band to draw, rather than one to the axes' edge
    noise = line["noise"].to_numpy(dtype=float)
    noise = np.where(np.isfinite(noise), noise, np.nan)
    color = style["color"]
    ax.fill_between(x, y * np.clip(1 - noise, 0, None), y * (1 + noise), color=color, alpha=0.15,
                    linewidth=0)  # fmt: skip
    ax.plot(x, y, color=color, linestyle=style["linestyle"], linewidth=1.2, label=label)
    stable = ~line["stable"].eq(False).to_numpy()  # unknown (None) is stable, as in compare
    marker = style["marker"]
    ax.scatter(x[stable], y[stable], color=color, marker=marker, s=14, zorder=3)
    ax.scatter(x[~stable], y[~stable], facecolors="white", edgecolors=color, marker=marker, s=22,
               linewidths=1.2, zorder=3)  # fmt: skip
    verdicts = line["verdict"].to_numpy()
    for verdict, (mark, mark_color) in GATE_MARKS.items():
        hit = verdicts == verdict
        ax.scatter(x[hit], y[hit], marker=mark, s=80, color=mark_color, edgecolors="black",
                   linewidths=0.6, zorder=4)  # fmt: skip


def _proxies() -> list:
    """Legend entries for what no line is labelled with: the gate's marks, hollow, the band."""
    look = {"linestyle": "none", "markersize": 8}
    marks = [
        Line2D([], [], marker=m, color=c, markeredgecolor="black", label=f"{v} (the gate)", **look)
        for v, (m, c) in GATE_MARKS.items()
    ]
    hollow = Line2D(
        [], [], marker="o", color="grey", markerfacecolor="white", label=HOLLOW_LABEL, **look
    )
    return [*marks, hollow, Patch(color="grey", alpha=0.25, label=BAND_LABEL)]


def best_ratios(cases: pd.DataFrame) -> pd.DataFrame:
    """Per run and problem, the workbench backend with the highest vs_torch_best, and that ratio."""
    ours = cases[(cases["implementation"] == "workbench") & (cases["status"] == "ok")]
    ours = ours[np.isfinite(ours["vs_torch_best"].astype(float))]
    if ours.empty:
        return pd.DataFrame(columns=["order", "panel", "backend", "vs_torch_best"])
    ours = ours.assign(panel=panel_labels(ours))
    best = ours.loc[ours.groupby(["order", "panel"], sort=False)["vs_torch_best"].idxmax()]
    return best[["order", "panel", "backend", "vs_torch_best"]].sort_values("order")


@styled
def ratio_figure(cases: pd.DataFrame, optimizer: str, n_runs: int) -> Figure:
    """One optimizer's best backend against torch.optim per run: see the module docstring."""
    best = best_ratios(cases)
    if best.empty:
        raise SkipFigure(f"{optimizer}: no run has ok torch.optim and workbench rows side by side")
    fig, (ax,) = panel_grid(1, panel_w=8.0, panel_h=3.0, extra_h=0.5)
    palette = matplotlib.colormaps["tab10"].colors
    for i, (panel, line) in enumerate(best.groupby("panel", sort=False)):
        color = palette[i % len(palette)]
        backends = line["backend"].astype(str).tolist()
        changed = f", now {backends[-1]}" if len(set(backends)) > 1 else ""
        label = f"{panel} (best: {backends[0]}{changed})"
        ax.plot(line["order"], line["vs_torch_best"], marker="o", markersize=4, color=color,
                label=label)  # fmt: skip
        # which design wins can move between commits: name the new one where it does
        for k in range(1, len(line)):
            if backends[k] != backends[k - 1]:
                xy = (line["order"].iloc[k], line["vs_torch_best"].iloc[k])
                ax.annotate(backends[k], xy, xytext=(0, 5), textcoords="offset points",
                            ha="center", fontsize=7, color=color)  # fmt: skip
    ax.axhline(1.0, color="grey", linewidth=0.8, linestyle="--")
    ax.set_ylabel("torch.optim best / ours (×)")
    ax.set_ylim(bottom=0)
    _runs_axis(ax, n_runs)
    fig.suptitle(f"{optimizer}: best workbench backend vs torch.optim (higher is better)")
    figure_legend(fig, [ax])
    return fig


def png_uri(fig: Figure) -> str:
    """The figure as a data:image/png;base64 URI, for a page that must open without network."""
    buf = io.BytesIO()
    with matplotlib.rc_context(STYLE):
        fig.savefig(buf, format="png", metadata={"Software": None})
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


# --- the page --------------------------------------------------------------------------------

GATE_FIRED = ("regression", "new-failure", "missing", "improvement")  # worth a line on the page
PAGE_CSS = """
tr.regression td, tr.new-failure td, tr.missing td { color: #a33; background: #fdf3f2; }
tr.improvement td { color: #1e6b34; background: #f0f9f2; }
b.bad { color: #c0392b; } b.good { color: #1e8449; }
"""


def write_page(path: Path, runs: pd.DataFrame, history: pd.DataFrame, notes: list[str]) -> Path:
    """Write the history page (inline CSS, figures as data URIs, no script, no link out)."""
    n_runs = len(runs)
    if "optimizer" not in history:
        history = history.assign(optimizer="all cases")
    sections = [_header(runs, history), *_notices(n_runs, notes), _runs(runs), _gate(history)]
    for name, cases in history.groupby("optimizer", sort=False):
        sections.append(_optimizer(str(name), cases, n_runs))
    page = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>workbench history</title><style>{CSS}{PAGE_CSS}</style></head>\n<body>\n"
        + "\n".join(s for s in sections if s)
        + "\n</body></html>\n"
    )
    path.write_text(page, encoding="utf-8")
    return path


def _e(value: object) -> str:
    return html.escape("" if value is None else str(value))


def _header(runs: pd.DataFrame, history: pd.DataFrame) -> str:
    dates = [d for d in runs["started"] if d]
    span = f" · {_e(dates[0])} → {_e(dates[-1])}" if dates else ""
    return (
        f'<h1>Benchmark history</h1>\n<p class="sub">{len(runs)} runs{span} · '
        f"{history['case'].nunique()} cases · {history['optimizer'].nunique()} optimizers</p>\n"
        "<p>Runs are ordered by commit time where the manifest records it, else by start time. "
        "Each case (repeats pooled) is judged against the previous run as <code>workbench compare"
        "</code> judges it by default (median step time; a regression is significant, beyond the "
        f"{DEFAULT_THRESHOLD:.0%} threshold and beyond both runs' noise). Absolute times compare "
        "only on one machine: the table of runs names each run's host.</p>"
    )


def _notices(n_runs: int, notes: list[str]) -> list[str]:
    out = []
    if n_runs < 2:
        out.append(
            f'<p class="notice"><b>Only {n_runs} run.</b> Trends and verdicts need 2 or more '
            "runs: give more run directories, or a folder holding them.</p>"
        )
    if notes:
        items = "".join(f"<li>{_e(n)}</li>" for n in notes)
        out.append(f'<details class="skipped"><summary>left out ({len(notes)})</summary>'
                   f"<ul>{items}</ul></details>")  # fmt: skip
    return out


def _gate(history: pd.DataFrame) -> str:
    fired = history[history["verdict"].isin(GATE_FIRED)]
    if fired.empty:
        return (
            "<h2>Where the gate fired</h2>\n<p>Nowhere: no regression, improvement, new failure "
            "or missing case between consecutive runs.</p>"
        )
    rows = []
    for r in fired.sort_values(["order", "case"]).to_dict("records"):
        change = "–" if pd.isna(r["change"]) else f"{r['change']:.3f}×"
        median = "–" if pd.isna(r["median_s"]) else f"{r['median_s'] * 1e3:.4g}"
        rows.append(
            f'<tr class="{_e(r["verdict"])}"><td class="num">{r["order"]}</td>'
            f"<td>{_e(r['run_id'])}</td><td>{_e(r['case'])}</td><td>{_e(r['verdict'])}</td>"
            f'<td class="num">{change}</td><td class="num">{median}</td></tr>'
        )
    head = "".join(f"<th>{c}</th>" for c in ("#", "run", "case", "verdict", "change", "ms"))
    return (
        "<h2>Where the gate fired</h2>\n<p>Against the previous run; <i>change</i> is the new "
        "median over the previous one (above 1 is slower).</p>\n"
        f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
    )


def _counts(verdicts: dict[str, int]) -> str:
    def one(v: str, n: int) -> str:
        text = f"{n} {_e(v)}"
        if v in ("regression", "new-failure", "missing"):
            return f'<b class="bad">{text}</b>'
        return f'<b class="good">{text}</b>' if v == "improvement" else text

    return ", ".join(one(v, n) for v, n in verdicts.items()) or "–"


OTHER_MACHINE = (
    '<span class="mark">⚠</span> another machine than the previous run: its times do not '
    "compare (<code>workbench compare</code> would refuse the pair); "
)


def _runs(runs: pd.DataFrame) -> str:
    committed = runs["commit_time"].notna().any()
    cols = ["#", "run", "commit", *(["committed"] if committed else []), "started", "host"]
    head = "".join(f"<th>{c}</th>" for c in [*cols, "cases", "vs previous"])
    rows = []
    for r in runs.to_dict("records"):
        sha = f"{r['commit'][:10]}{' (dirty)' if r['dirty'] else ''}" if r["commit"] else "–"
        cells = [str(r["order"]), _e(r["run_id"]), f"<code>{_e(sha)}</code>"]
        cells += [_e(r["commit_time"] or "–")] if committed else []
        cells += [_e(r["started"] or "–"), _e(r["host"] or "–")]
        tds = "".join(f"<td>{c}</td>" for c in cells)
        against = (OTHER_MACHINE if r["other_machine"] else "") + _counts(r["verdicts"])
        rows.append(f'<tr>{tds}<td class="num">{r["cases"]}</td><td>{against}</td></tr>')
    return (
        f"<h2>Runs ({len(runs)})</h2>\n"
        f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
    )


def _optimizer(name: str, cases: pd.DataFrame, n_runs: int) -> str:
    fired = cases[cases["verdict"].isin(GATE_FIRED)]
    where = "; ".join(f"{r['verdict']} at run {r['order']}: {r['case']}"
                      for r in fired.to_dict("records"))  # fmt: skip
    parts = [
        f'<h2 id="{_e(name)}">{_e(name)}</h2>',
        f"<p>{cases['case'].nunique()} cases. Gate: {_e(where or 'never fired')}.</p>",
    ]
    captions = {
        "trend": "Median step time per run, a panel per problem, a line per implementation/"
        "backend; the band is the median ± the half-width of its 95% confidence interval. "
        "▲ red: a regression against the previous run, ▼ green: an improvement; hollow points "
        "are unstable (flagged, or recorded as not stable).",
        "ratio": "torch.optim's fastest median for the same problem over the best workbench "
        "backend's, measured side by side in each run (machine-independent); above 1 we are "
        "faster. The legend names the best backend, the plot the run where another takes over.",
    }
    for kind, build in (("trend", trend_figure), ("ratio", ratio_figure)):
        try:
            fig = build(cases, name, n_runs)
        except SkipFigure as e:
            parts.append(f'<p class="skipped">{kind} figure not drawn: {_e(e)}</p>')
            continue
        parts.append(
            f'<figure><img alt="{_e(name)} {kind}" src="{png_uri(fig)}">'
            f"<figcaption>{_e(captions[kind])}</figcaption></figure>"
        )
    return "\n".join(parts)
