"""`workbench run | list | show | compare | plot | report | profile`: the harness, command line.

Exit codes: 0 done, 1 a run finished with failed cases is still 0 (failures are rows), 2 bad input
(a suite, an override or a run directory that cannot be used), 130 interrupted (rows kept).
`compare` exits 1 when it finds at least one regression.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import pandas as pd
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from workbench.results.compare import cmd_compare
from workbench.results.store import SUITE_COPY, RunStore, RunStoreError, load
from workbench.results.summary import summary_table

# Logs and CI are not terminals: give tables room there instead of rich's 80 columns.
console = Console(width=None if sys.stdout.isatty() else 200)


def _suite_errors() -> tuple[type[Exception], ...]:
    from workbench.harness.suite import SuiteError

    return (SuiteError, RunStoreError)


def cmd_run(args: argparse.Namespace) -> int:
    from workbench.harness import environment
    from workbench.harness.runner import run_cases
    from workbench.harness.suite import load_suite

    if args.resume:
        store = RunStore.open(args.resume)
        suite_path = args.resume / SUITE_COPY
        suite = load_suite(suite_path, store.manifest.get("overrides", []))
    else:
        if args.suite is None:
            raise SystemExit("workbench run: give a SUITE file, or --resume RUN_DIR")
        suite = load_suite(args.suite, args.set)
    cases = suite.cases()  # validates the whole sweep before any work
    if not args.resume:
        run_id = time.strftime(f"{suite.name}-%Y%m%d-%H%M%S")
        run_dir = args.out / run_id
        manifest = {
            "run_id": run_id,
            "suite": suite.name,
            "suite_file": str(args.suite),
            "overrides": list(args.set),
            "n_cases": len(cases),
            "environment": environment.capture_environment(),
            "capabilities": {d: environment.capabilities(d) for d in {c.device for c in cases}},
        }
        store = RunStore.create(run_dir, manifest, Path(args.suite).read_text())
    todo = len(cases) - len(store.done_case_ids() & {c.case_id for c in cases})
    console.print(f"run {store.run_dir}: {len(cases)} cases, {todo} to run")
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
    )
    try:
        with Progress(*columns, console=console, transient=True) as progress:
            task = progress.add_task("measuring", total=todo)

            def done(case, row) -> None:
                label = f"{case.optimizer} {case.implementation}/{case.backend} {case.size}"
                progress.update(task, advance=1, description=f"{label}: {row['status']}")

            run_cases(suite, store, cases, done)
    except KeyboardInterrupt:
        store.set_status("interrupted")
        console.print(
            f"[yellow]interrupted: {len(store.rows)} rows kept in {store.run_dir}; "
            f"finish with: workbench run --resume {store.run_dir}"
        )
        return 130
    store.set_status("complete")
    print_summary(load(store.run_dir))
    console.print(f"records: {store.run_dir / 'records.parquet'}")
    return 0


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
            store.run_dir.name, m.get("suite", "?"), m.get("status", "?"), m.get("started", "?"),
            f"{len(store.rows)}/{m.get('n_cases', '?')}",
        )  # fmt: skip
    console.print(table)
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    store = RunStore.open(args.run)
    env = store.manifest.get("environment", {})
    console.print(
        f"{store.run_dir.name}: suite {store.manifest.get('suite')}, "
        f"{store.manifest.get('status')}, torch {env.get('torch')}, git {env.get('git_sha')}"
    )
    if store.rows:
        print_summary(load(store.run_dir))
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
    from workbench.harness.suite import load_suite

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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="workbench", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run a suite into a new run directory")
    run.add_argument("suite", nargs="?", type=Path, help="suite TOML file")
    run.add_argument("--out", type=Path, default=Path("results"), help="parent of the run dir")
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                     help="override a suite key, e.g. --set timing.budget_s=1")  # fmt: skip
    run.add_argument("--resume", type=Path, metavar="RUN_DIR", help="finish an interrupted run")
    run.set_defaults(func=cmd_run)

    lst = sub.add_parser("list", help="list runs")
    lst.add_argument("results", nargs="?", type=Path, default=Path("results"))
    lst.set_defaults(func=cmd_list)

    show = sub.add_parser("show", help="summary table of a run")
    show.add_argument("run", type=Path)
    show.set_defaults(func=cmd_show)

    cmp = sub.add_parser("compare", help="per-case change from BASE to NEW; exit 1 on regression")
    cmp.add_argument("base", type=Path, help="baseline run directory (or its records.parquet)")
    cmp.add_argument("new", type=Path, help="run to judge against it")
    cmp.add_argument("--threshold", type=float, default=0.05,
                     help="smallest change of the median that counts (0.05: 5%%)")  # fmt: skip
    cmp.add_argument("--alpha", type=float, default=0.01,
                     help="significance level, Holm-corrected over the cases")  # fmt: skip
    cmp.add_argument("--metric", choices=("time", "ratio"), default="time",
                     help="time: absolute medians (same machine); ratio: vs torch.optim "
                          "measured inside each run (across machines)")  # fmt: skip
    cmp.set_defaults(func=cmd_compare)

    plot = sub.add_parser("plot", help="write a run's figures to RUN/figures (PNG + SVG)")
    plot.add_argument("run", type=Path)
    plot.set_defaults(func=cmd_plot)

    report = sub.add_parser("report", help="write RUN/report.html, one self-contained page")
    report.add_argument("run", type=Path)
    report.set_defaults(func=cmd_report)

    prof = sub.add_parser("profile", help="write a profiler trace of one case of a suite")
    prof.add_argument("suite", type=Path)
    prof.add_argument("--case", type=int, default=0, help="index into the suite's cases")
    prof.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    prof.add_argument("--out", type=Path, default=Path("results/trace.json"))
    prof.set_defaults(func=cmd_profile)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except _suite_errors() as e:
        console.print(f"[red]error:[/red] {e}", highlight=False)
        return 2


if __name__ == "__main__":
    sys.exit(main())
