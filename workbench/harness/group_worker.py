"""One latency group measured in a fresh process: ``python -m workbench.harness.group_worker
SPEC.json OUT.json``, started by the runner for every group of a suite with ``repeats`` > 1.

Repeats in one process share its history (allocator state, memory placement, address layout), so
their agreement says little; in separate processes, the spread between them is the
between-process noise that a second run of the suite will meet (pyperf judges a benchmark by
values from several processes for the same reason). The worker loads the suite as the run did
(its file and overrides), sets the same conditions, measures the group by the same path
(measure.measure_group) and writes the rows, failures included, as JSON.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from . import conditions, quiet
from .cases import Case
from .measure import CaseFailure, Outcome, case_row, failed_outcome, measure_group
from .suite import Suite
from .suite_loader import load_suite

# a worker that has not written its rows by then is killed: its cases become error rows
_TIMEOUT_S = 3600


def measure_in_worker(cases: list[Case], suite: Suite, log: Path) -> list[tuple[Case, Outcome]]:
    """Measure `cases` (one group) in a child process; per case a callable giving its row."""
    with tempfile.TemporaryDirectory(prefix="workbench-group-") as tmp:
        spec, out = Path(tmp) / "spec.json", Path(tmp) / "rows.json"
        spec.write_text(
            json.dumps(
                {
                    "suite": str(suite.path),
                    "overrides": list(suite.overrides),
                    "case_ids": [c.case_id for c in cases],
                    "log": str(log),
                }
            )
        )
        cmd = [sys.executable, "-m", "workbench.harness.group_worker", str(spec), str(out)]
        with open(log, "ab") as stderr:
            try:
                proc = subprocess.run(cmd, stderr=stderr, timeout=_TIMEOUT_S, check=False)
                code: int | str = proc.returncode
            except subprocess.TimeoutExpired:
                code = f"killed after {_TIMEOUT_S} s"
        if code != 0 or not out.exists():
            error = RuntimeError(f"the group's worker process exited with {code} (see {log})")
            return [(case, failed_outcome(error)) for case in cases]
        rows = json.loads(out.read_text())
    return [(case, _replay(rows[case.case_id])) for case in cases]


def _replay(row: dict[str, Any]) -> Outcome:
    """The worker's row, or the failure it recorded, as the runner's outcome."""

    def outcome() -> dict[str, Any]:
        if row.get("status", "ok") != "ok":
            failure = CaseFailure(row["status"], row.get("error") or "")
            raise failure
        return row

    return outcome


def main(spec_path: str, out_path: str) -> int:
    """The worker process: measure the spec's group and write its rows (one per case id)."""
    spec = json.loads(Path(spec_path).read_text())
    conditions.control()
    quiet.log_to(Path(spec["log"]))
    suite = load_suite(spec["suite"], spec["overrides"])
    by_id = {c.case_id: c for c in suite.cases()}
    cases = [by_id[i] for i in spec["case_ids"]]
    rows = {case.case_id: case_row(case, outcome) for case, outcome in measure_group(cases, suite)}
    Path(out_path).write_text(json.dumps(rows, default=_plain))
    return 0


def _plain(value: Any) -> Any:
    """JSON for what a row may hold besides plain Python: numpy scalars and arrays."""
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
