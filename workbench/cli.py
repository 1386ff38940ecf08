"""`workbench run | list | show | compare | plot | report | profile`: the harness, command line.

Exit codes:
  0    done. A run with some failed cases is still 0: failures are rows.
  1    `run`: no case was measured (every case failed or was skipped).
       `--strict` (`run`, `show`): a row failed, or a measured row is not stable (flagged, or
       recorded before stability was measured).
       `compare`: at least one regression.
  2    bad input: a suite, an override or a run directory that cannot be used, or a run that
       another process is writing (one writer per run directory).
  130  interrupted (rows kept; finish with `run --resume`).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import math
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pandas as pd
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from workbench.results.compare import DEFAULT_LOSS_TOLERANCE, DEFAULT_THRESHOLD
from workbench.results.compare_cli import cmd_compare
from workbench.results.store import SUITE_COPY, RunStore, RunStoreError, load, status_of
from workbench.results.summary import row_flags, summary_table

# statuses that are not failures: measured, or deliberately not run (no GPU, peer not installed)
_NOT_FAILED = ("ok", "skipped")
NO_STABILITY = "no stability data: recorded before stability was measured"

# Logs and CI are not terminals: give tables room there instead of rich's 80 columns.
console = Console(width=None if sys.stdout.isatty() else 200)


def _suite_errors() -> tuple[type[Exception], ...]:
    from workbench.harness.suite import SuiteError

    return (SuiteError, RunStoreError)


def cmd_run(args: argparse.Namespace) -> int:
    from workbench.harness import environment
    from workbench.harness.suite_loader import load_suite

    if args.resume:
        # the lock before anything else: a run another process is writing is refused (exit 2)
        with RunStore.open(args.resume, lock=True) as store:
            suite_path = args.resume / SUITE_COPY
            suite = load_suite(suite_path, store.manifest.get("overrides", []))
            return _measure(args, suite, store, suite.cases())
    if args.suite is None:
        raise SystemExit("workbench run: give a SUITE file, or --resume RUN_DIR")
    suite = load_suite(args.suite, args.set)
    cases = suite.cases()  # validates the whole sweep before any work
    run_id = _free_run_id(args.out, time.strftime(f"{suite.name}-%Y%m%d-%H%M%S"))
    manifest = {
        "run_id": run_id,
        "suite": suite.name,
        "suite_file": str(args.suite),
        "overrides": list(args.set),
        "n_cases": len(cases),
        "environment": environment.capture_environment(),
        "capabilities": {d: environment.capabilities(d) for d in {c.device for c in cases}},
    }
    suite_text = Path(args.suite).read_text(encoding="utf-8")  # load_suite checked it decodes
    # the store is locked for as long as the run goes on, and released however it ends
    with RunStore.create(args.out / run_id, manifest, suite_text) as store:
        args.run_dir = store.run_dir  # for `regress`, which judges the run just made
        return _measure(args, suite, store, cases)


def _free_run_id(out: Path, run_id: str) -> str:
    """`run_id`, or with -2, -3, ... where a run of the same second is there already (two
    quick runs back to back, as `workbench regress` in CI makes them)."""
    candidate, n = run_id, 2
    while (out / candidate).exists():
        candidate, n = f"{run_id}-{n}", n + 1
    return candidate


def _measure(args: argparse.Namespace, suite: Any, store: RunStore, cases: list[Any]) -> int:
    """Run the cases the store lacks, then the summary; the exit code of `run`."""
    from workbench.harness.runner import run_cases, visits_of

    done = store.done_case_ids()
    pending = [c for c in cases if c.case_id not in done]
    visits = visits_of(suite, cases)
    each = f", each group timed in {visits} visits (one per pass)" if visits > 1 else ""
    if visits > 1 and suite.timing.extra_visits:
        each += f", up to {suite.timing.extra_visits} more for groups still noisy"
    console.print(f"run {store.run_dir}: {len(cases)} cases, {len(pending)} to run{each}")
    # What is alive now (modules, suite, cases) outlives the run: frozen, the collection after
    # every group visit no longer walks its ~200k objects (135 ms a visit here, about 16 s of a
    # quick run). Unfrozen after, so that a caller's garbage and the interpreter's exit (where
    # nanobind, under triton, reports what was never freed) are as without it.
    gc.freeze()
    try:
        with _progress(pending, visits) as (on_case_done, on_visit_done):
            run_cases(suite, store, cases, on_case_done, on_visit_done)
    except KeyboardInterrupt:
        store.set_status("interrupted")
        console.print(
            f"[yellow]interrupted: {len(store.rows)} rows kept in {store.run_dir}; "
            f"finish with: workbench run --resume {store.run_dir}"
        )
        return 130
    finally:
        gc.unfreeze()
    store.set_status("complete")
    if not store.rows:
        console.print("[red]nothing was measured: the run has no rows")
        return 1
    df = load(store.run_dir)
    print_summary(df)
    console.print(f"records: {store.run_dir / 'records.parquet'}")
    code = 0
    if not (df["status"] == "ok").any():
        console.print(f"[red]no case was measured: all {len(df)} failed or were skipped")
        code = 1
    if args.strict and not _strict_passes(df):
        code = 1
    return code


OnCaseDone = Callable[[Any, dict[str, Any]], None]
OnVisitDone = Callable[[list[Any], int, int], None]


def _visit_label(index: int, of: int) -> str:
    """ "visit 2/3", or past the suite's visits "extra visit 1" (runner: extra_visits)."""
    return f"visit {index + 1}/{of}" if index < of else f"extra visit {index - of + 1}"


@contextlib.contextmanager
def _progress(pending: list[Any], visits: int = 1) -> Iterator[tuple[OnCaseDone, OnVisitDone]]:
    """What `run` shows while it measures: a live bar on a terminal; elsewhere (a log, CI), where
    a live bar would print nothing until the end, one plain line per finished case, and one per
    group visited in the passes before the last (each case visited counts one unit of work)."""
    total = len(pending)
    work = total * visits
    finished: set[str] = set()
    visited = 0
    began = time.monotonic()

    def eta() -> str:
        done = visited + len(finished)
        return _clock((time.monotonic() - began) / max(1, done) * (work - done))

    def upcoming() -> str:
        # the runner takes the pending cases in order (interleaved groups in the order of their
        # first case), so the first unfinished one is the one being measured
        nxt = next((c for c in pending if c.case_id not in finished), None)
        return _case_label(nxt) if nxt is not None else "done"

    def added(unit: list[Any], index: int, of: int) -> None:
        nonlocal work
        # `work` counts each case's visits but the last once (the rows' pass stands for it): the
        # last visit and any extra one (runner: extra_visits) are work beyond that
        if index >= of - 1:
            work += len(unit)

    if not sys.stdout.isatty():

        def plain(case: Any, row: dict[str, Any]) -> None:
            finished.add(case.case_id)
            print(f"[{len(finished)}/{total}] {progress_line(case, row)}  ETA {eta()}", flush=True)

        def plain_visit(unit: list[Any], index: int, of: int) -> None:
            nonlocal visited
            visited += len(unit)
            added(unit, index, of)
            print(f"[{_visit_label(index, of)}] {_group_label(unit)}  ETA {eta()}", flush=True)

        yield plain, plain_visit
        return
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=True) as progress:
        first = f"visit 1/{visits}: {_case_label(pending[0])}" if visits > 1 and pending else None
        task = progress.add_task(first or upcoming(), total=work)

        def live(case: Any, row: dict[str, Any]) -> None:
            finished.add(case.case_id)
            progress.update(task, advance=1, description=upcoming())

        def live_visit(unit: list[Any], index: int, of: int) -> None:
            added(unit, index, of)
            progress.update(
                task,
                total=work,
                advance=len(unit),
                description=f"{_visit_label(index, of)} done: {_group_label(unit)}",
            )

        yield live, live_visit


def _case_label(case: Any) -> str:
    ranks = f" ranks={case.world_size}" if case.world_size != 1 else ""
    return f"{case.optimizer} {case.implementation}/{case.backend} {case.size} {case.dtype}{ranks}"


def _group_label(unit: list[Any]) -> str:
    """`<optimizer> <size> <dtype>: N cases` (one case: its own label)."""
    if len(unit) == 1:
        return _case_label(unit[0])
    case = unit[0]
    return f"{case.optimizer} {case.size} {case.dtype}: {len(unit)} cases"


def progress_line(case: Any, row: dict[str, Any]) -> str:
    """`<optimizer> <implementation>/<backend> <size> <dtype>: <status> [<median> ms] [flags]`."""
    parts = [f"{_case_label(case)}: {row.get('status', '?')}"]
    median = row.get("median_s")
    if row.get("status") == "ok" and isinstance(median, float) and math.isfinite(median):
        parts.append(f"{_fmt(median * 1e3)} ms")
    flags = [] if row.get("flags") is None else list(row["flags"])  # a list, or numpy's array
    if flags:
        parts.append(f"[{', '.join(flags)}]")
    return " ".join(parts)


def _clock(seconds: float) -> str:
    whole = max(0, round(seconds))
    return f"{whole // 60}:{whole % 60:02d}"


def _strict_passes(df: pd.DataFrame) -> bool:
    """--strict: every row ok or skipped, and every ok row known to be stable. Prints why not."""
    status = df["status"].astype(str) if "status" in df else pd.Series("ok", index=df.index)
    problems = [
        f"failed: {_row_label(row)}: {row['status']}"
        for _, row in df[~status.isin(_NOT_FAILED)].iterrows()
    ]
    ok = status == "ok"
    if not ok.any():
        problems.append("no ok row: nothing was measured")
    elif "stable" not in df.columns:
        problems.append(f"unstable: all {int(ok.sum())} ok rows: {NO_STABILITY}")
    else:
        flags = row_flags(df)
        for index, row in df[ok].iterrows():
            stable = row["stable"]
            if stable is None or (isinstance(stable, float) and math.isnan(stable)):
                problems.append(f"unstable: {_row_label(row)}: {NO_STABILITY}")
            elif not bool(stable):
                why = ", ".join(flags[index]) or "not stable"
                problems.append(f"unstable: {_row_label(row)}: {why}")
    for problem in problems:
        console.print(f"[red]strict:[/red] {escape(problem)}", highlight=False)
    if problems:
        console.print(f"[red]strict: {len(problems)} problem(s) in {len(df)} rows", highlight=False)
    return not problems


def _row_label(row: pd.Series) -> str:
    axes = [row.get(c) for c in ("optimizer", "implementation", "backend", "size", "dtype")]
    named = " ".join(str(a) for a in axes if a is not None and a == a)  # a == a: not NaN
    return f"{str(row.get('case_id', '?'))[:8]} {named}".strip()


def print_summary(df: pd.DataFrame) -> None:
    if "loss_curve" in df:  # a convergence run: losses and distances, not latencies
        from workbench.harness.convergence import convergence_table

        table = convergence_table(df)
    else:
        table = summary_table(df)
    out = Table(show_lines=False)
    for c in table.columns:
        out.add_column(c, justify="right" if table[c].dtype.kind in "fi" else "left")
    for _, row in table.iterrows():
        out.add_row(*(_fmt(v) for v in row))
    console.print(out)
    failed = df[df["status"] != "ok"] if "status" in df else df.iloc[0:0]
    for _, row in failed.iterrows():
        console.print(f"[red]{row['status']}[/red] {row['case_id'][:8]}: {row['error']}")


def _fmt(value: object) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    return "-" if value is None else str(value)


def cmd_regress(args: argparse.Namespace) -> int:
    """Run the suite, then gate it against its machine's stored baseline (results/baselines.py);
    with none stored yet, or --save-baseline, the run becomes that baseline. Exit codes: the
    run's when it measured nothing (1) or was interrupted (130), else compare's."""
    from workbench.results import baselines

    run = argparse.Namespace(
        suite=args.suite, out=args.out, set=args.set, resume=None, strict=False
    )
    code = cmd_run(run)
    run_dir: Path = run.run_dir
    if code != 0:
        console.print(f"[red]regress: the run did not complete (exit {code}); nothing compared")
        return code
    stored = baselines.baseline_dir(args.baselines, run_dir)
    mid, fingerprint = baselines.machine_of(run_dir)
    if args.save_baseline or not baselines.has_baseline(stored):
        baselines.save_baseline(run_dir, stored)
        why = "--save-baseline" if args.save_baseline else "none was stored for this machine"
        console.print(
            f"regress: {run_dir} is now the baseline in {stored} ({why}); machine {mid}: "
            f"{', '.join(f'{k} {v}' for k, v in fingerprint.items())}. Commit it to share it.",
            highlight=False,
        )
        return 0
    console.print(f"regress: against the baseline of machine {mid} in {stored}", highlight=False)
    compare = argparse.Namespace(
        base=stored, new=run_dir, threshold=args.threshold, alpha=args.alpha, metric="time",
        allow_missing=args.allow_missing, loss_tolerance=args.loss_tolerance,
        allow_other_machine=False, markdown=args.markdown,
    )  # fmt: skip
    return cmd_compare(compare)


def cmd_list(args: argparse.Namespace) -> int:
    table = Table("run", "suite", "status", "started", "rows")
    for manifest_path in sorted(args.results.glob("*/manifest.json")):
        try:
            store = RunStore.open(manifest_path.parent)
        except RunStoreError as e:
            console.print(f"[red]{e}")
            continue
        m = store.manifest
        table.add_row(
            store.run_dir.name, m.get("suite", "?"), status_of(store.run_dir, m),
            m.get("started", "?"),
            f"{len(store.rows)}/{m.get('n_cases', '?')}",
        )  # fmt: skip
    console.print(table)
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    store = RunStore.open(args.run)
    env = store.manifest.get("environment", {})
    console.print(
        f"{store.run_dir.name}: suite {store.manifest.get('suite')}, "
        f"{status_of(store.run_dir, store.manifest)}, torch {env.get('torch')}, "
        f"git {env.get('git_sha')}"
    )
    df = load(store.run_dir) if store.rows else pd.DataFrame({"status": []})
    if store.rows:
        print_summary(df)
    if args.strict and not _strict_passes(df):
        return 1
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from workbench.plots import render_run  # matplotlib: loaded only for these two commands

    rendered = render_run(args.run)
    for path in rendered.paths():
        console.print(str(path), highlight=False)
    for name, reason in rendered.skipped.items():
        console.print(f"[dim]skipped {name}: {reason}", highlight=False)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from workbench.plots import write_report

    console.print(f"report: {write_report(args.run)}", highlight=False)
    return 0


def cmd_profile(args: argparse.Namespace) -> int:
    import torch

    from workbench.harness import launches
    from workbench.harness.step_protocols import build_workload
    from workbench.harness.suite_loader import load_suite

    suite = load_suite(args.suite, args.set)
    cases = suite.cases()
    if not 0 <= args.case < len(cases):
        raise SystemExit(f"workbench profile: --case {args.case} is not in 0..{len(cases) - 1}")
    case = cases[args.case]
    device = torch.device(case.device)
    # the step as the runner takes it: with its closure (LBFGS) or sparse grads (SparseAdam)
    workload = build_workload(case, device, seed=0, density=suite.sparse.density)
    workload.step()
    launches.trace(workload.step, device, args.out)
    console.print(f"trace of {case.axes()} written to {args.out}")
    return 0


STRICT_HELP = "exit 1 if a row failed or a measured row is not stable"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="workbench", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run a suite into a new run directory")
    run.add_argument("suite", nargs="?", type=Path, help="suite TOML file")
    run.add_argument("--out", type=Path, default=Path("results"), help="parent of the run dir")
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                     help="override a suite key, e.g. --set timing.budget_s=1")  # fmt: skip
    run.add_argument("--resume", type=Path, metavar="RUN_DIR", help="finish an interrupted run")
    run.add_argument("--strict", action="store_true", help=STRICT_HELP)
    run.set_defaults(func=cmd_run)

    lst = sub.add_parser("list", help="list runs")
    lst.add_argument("results", nargs="?", type=Path, default=Path("results"))
    lst.set_defaults(func=cmd_list)

    show = sub.add_parser("show", help="summary table of a run")
    show.add_argument("run", type=Path)
    show.add_argument("--strict", action="store_true", help=STRICT_HELP)
    show.set_defaults(func=cmd_show)

    cmp = sub.add_parser(
        "compare",
        help="per-case change from BASE to NEW; exit 1 on a regression, new failure or missing",
    )
    cmp.add_argument("base", type=Path, help="baseline run directory (or its records.parquet)")
    cmp.add_argument("new", type=Path, help="run to judge against it")
    _gate_options(cmp)
    cmp.add_argument("--metric", choices=("time", "ratio"), default="time",
                     help="time: absolute medians (same machine); ratio: vs torch.optim "
                          "measured inside each run (across machines)")  # fmt: skip
    cmp.add_argument("--allow-other-machine", action="store_true",
                     help="--metric time even when the runs' machine fingerprints differ (only "
                          "if you know the two machines time alike)")  # fmt: skip
    cmp.set_defaults(func=cmd_compare)

    reg = sub.add_parser(
        "regress",
        help="run a suite and gate it against its machine's stored baseline (the first run on "
        "a machine becomes it); exit 1 on a regression, new failure or missing case",
    )
    reg.add_argument("suite", type=Path, help="suite TOML file (suites/regress.toml)")
    reg.add_argument("--baselines", type=Path, default=Path("results/baselines"),
                     help="folder of baselines, one per machine id and suite (default "
                          "%(default)s)")  # fmt: skip
    reg.add_argument("--save-baseline", action="store_true",
                     help="store this run as its machine's baseline, not compare")  # fmt: skip
    reg.add_argument("--out", type=Path, default=Path("results"), help="parent of the run dir")
    reg.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                     help="override a suite key (the baseline should have been made with the "
                          "same)")  # fmt: skip
    _gate_options(reg)
    reg.set_defaults(func=cmd_regress)

    plot = sub.add_parser("plot", help="write a run's figures to RUN/figures (PNG + SVG)")
    plot.add_argument("run", type=Path)
    plot.set_defaults(func=cmd_plot)

    report = sub.add_parser("report", help="write RUN/report.html, one self-contained page")
    report.add_argument("run", type=Path)
    report.set_defaults(func=cmd_report)

    export = sub.add_parser(
        "export", help="a run's results for CI dashboards: github-benchmark JSON, json, csv"
    )
    export.add_argument("run", type=Path, help="run directory (or its records.parquet)")
    export.add_argument("--format", choices=("github-benchmark", "json", "csv"),
                        default="github-benchmark")  # fmt: skip
    export.add_argument("--out", type=Path, default=None, help="file to write (default: stdout)")
    export.set_defaults(func=_lazy("workbench.results.export", "cmd_export"))

    history = sub.add_parser(
        "history", help="a static page of many runs over time: trends, noise bands, regressions"
    )
    history.add_argument("runs", type=Path, nargs="+", help="run directories, or folders of them")
    history.add_argument("--out", type=Path, default=Path("site"), help="folder to write")
    history.set_defaults(func=_lazy("workbench.results.history", "cmd_history"))

    prof = sub.add_parser("profile", help="write a profiler trace of one case of a suite")
    prof.add_argument("suite", type=Path)
    prof.add_argument("--case", type=int, default=0, help="index into the suite's cases")
    prof.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    prof.add_argument("--out", type=Path, default=Path("results/trace.json"))
    prof.set_defaults(func=cmd_profile)
    return parser


def _gate_options(parser: argparse.ArgumentParser) -> None:
    """The gate's knobs, the same for `compare` and `regress`."""
    parser.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD,
                        help="smallest change of the median that counts (default %(default)s: "
                             "10%%)")  # fmt: skip
    parser.add_argument("--allow-missing", action="store_true",
                        help="a case of BASE missing from NEW does not fail the gate")  # fmt: skip
    parser.add_argument("--alpha", type=float, default=0.01,
                        help="significance level, Holm-corrected over the cases")  # fmt: skip
    parser.add_argument("--loss-tolerance", type=float, default=DEFAULT_LOSS_TOLERANCE,
                        help="a final loss worse than BASE's by more than this, relative, is a "
                             "regression (default %(default)g)")  # fmt: skip
    parser.add_argument("--markdown", nargs="?", const="-", default=None, metavar="FILE",
                        help="also write a PR comment in Markdown to FILE (no FILE: stdout, "
                             "and the table goes to stderr)")  # fmt: skip


def _lazy(module: str, name: str) -> Callable[[argparse.Namespace], int]:
    """A command whose module is imported when it runs: `workbench run` need not pay for it."""

    def command(args: argparse.Namespace) -> int:
        import importlib

        return getattr(importlib.import_module(module), name)(args)

    return command


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except _suite_errors() as e:
        console.print(f"[red]error:[/red] {e}", highlight=False)
        return 2


if __name__ == "__main__":
    sys.exit(main())
