"""The command line's contract: exit codes, one writer per run, `interrupted`, progress lines in a
log, `--strict`, and `python -m workbench`."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from workbench.cli import NO_STABILITY, main
from workbench.results import RunStore, load

ROOT = Path(__file__).resolve().parents[1]
SUITE = """
[suite]
name = "cli"
[axes]
optimizers = ["Adamax"]
implementations = {implementations}
backends = ["forloop", "foreach"]
sizes = ["4x1k"]
{extra}
"""
FAST = [
    "timing.budget_s=0.01",
    "timing.warmup_s=0",
    "timing.min_steps=3",
    "measure.memory=false",
    "measure.launches=false",
    "measure.bandwidth_probe=false",
]


def _suite(tmp_path: Path, implementations: str = '["torch"]', extra: str = "") -> Path:
    path = tmp_path / "cli.toml"
    path.write_text(SUITE.format(implementations=implementations, extra=extra))
    return path


def _run(tmp_path: Path, suite: Path, *more: str) -> tuple[int, Path | None]:
    sets = [a for s in FAST for a in ("--set", s)]
    code = main(["run", str(suite), "--out", str(tmp_path / "out"), *sets, *more])
    runs = [p for p in (tmp_path / "out").iterdir() if p.is_dir()] if code != 2 else []
    return code, runs[0] if runs else None


def test_python_dash_m_workbench_is_the_console_script(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "workbench", "list", str(tmp_path)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "run" in done.stdout and "status" in done.stdout  # the (empty) table's header


def test_a_suite_that_is_not_utf8_is_refused_naming_the_file_and_byte(tmp_path: Path, capsys):
    bad = tmp_path / "latin1.toml"
    text = SUITE.format(implementations='["torch"]', extra="# caf\xe9 au lait")
    bad.write_bytes(text.encode("latin-1"))
    assert main(["run", str(bad), "--out", str(tmp_path / "out")]) == 2
    message = " ".join(capsys.readouterr().out.split())  # rich may wrap a long line
    assert f"latin1.toml: byte {text.index(chr(0xE9))}: not UTF-8 text" in message
    assert not (tmp_path / "out").exists()


def test_progress_in_a_log_is_one_line_per_case_and_strict_judges_the_rows(tmp_path, capsys):
    code, run = _run(tmp_path, _suite(tmp_path), "--strict")
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith("[")]
    assert len(lines) == 2, out
    for i, (line, backend) in enumerate(zip(lines, ["forloop", "foreach"]), start=1):
        assert re.fullmatch(
            rf"\[{i}/2\] Adamax torch/{backend} 4x1k float32: ok [0-9.e+-]+ ms( \[[a-z, -]+\])?"
            r"  ETA \d+:\d\d",
            line,
        ), line
    df = load(run)
    unstable = not df["stable"].all()
    assert code == (1 if unstable else 0), out  # --strict: 1 exactly when a row is not stable
    assert ("strict:" in out) == unstable
    assert main(["show", str(run)]) == 0  # without --strict, an unstable row is just a row


def test_a_run_that_measured_nothing_exits_1(tmp_path: Path, capsys) -> None:
    code, run = _run(tmp_path, _suite(tmp_path, implementations='["no_such_module:make"]'))
    assert code == 1
    assert set(load(run)["status"]) == {"error"}
    assert "no case was measured: all 1 failed or were skipped" in capsys.readouterr().out


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_a_run_whose_cases_were_all_skipped_exits_1(tmp_path: Path) -> None:
    code, run = _run(tmp_path, _suite(tmp_path, extra='devices = ["cuda"]'))
    assert code == 1
    assert set(load(run)["status"]) == {"skipped"}


def _stored_run(tmp_path: Path, name: str, rows: list[dict]) -> Path:
    run = tmp_path / name
    with RunStore.create(run, {"run_id": name, "suite": "synthetic"}, "") as store:
        for row in rows:
            store.append(row)
        store.set_status("complete")
    return run


def _row(case_id: str, backend: str, **extra: object) -> dict:
    row = {
        "case_id": case_id, "optimizer": "Adam", "implementation": "torch", "backend": backend,
        "size": "4x1k", "dtype": "float32", "device": "cpu", "median_s": 1e-3, "status": "ok",
        "error": None,
    }  # fmt: skip
    return {**row, **extra}


def test_strict_show_fails_unstable_failed_and_unmeasured_stability(tmp_path: Path, capsys):
    good = [_row("a", "forloop", stable=True, noise=0.01, flags=[])]
    flagged = [*good, _row("b", "foreach", stable=False, noise=0.2, flags=["noisy"])]
    skipped = [*good, _row("c", "fused", status="skipped", stable=False, flags=[])]
    failed = [*good, _row("d", "fused", status="error", error="boom", stable=False, flags=[])]
    old = [_row("e", "forloop")]  # recorded before rows had `stable`
    assert main(["show", "--strict", str(_stored_run(tmp_path, "good", good))]) == 0
    assert main(["show", "--strict", str(_stored_run(tmp_path, "skipped", skipped))]) == 0
    capsys.readouterr()
    assert main(["show", "--strict", str(_stored_run(tmp_path, "flagged", flagged))]) == 1
    assert re.search(r"strict: unstable: b .*foreach.*: noisy", capsys.readouterr().out)
    assert main(["show", "--strict", str(_stored_run(tmp_path, "failed", failed))]) == 1
    assert "strict: failed: d" in capsys.readouterr().out
    assert main(["show", "--strict", str(_stored_run(tmp_path, "old", old))]) == 1
    assert NO_STABILITY in " ".join(capsys.readouterr().out.split())
    assert main(["show", str(tmp_path / "old")]) == 0


HOLDER = """
import sys, time
from pathlib import Path
from workbench.results.store import RunStore

manifest = {"run_id": "held", "suite": "cli", "overrides": sys.argv[3:], "n_cases": 2}
store = RunStore.create(Path(sys.argv[1]), manifest, Path(sys.argv[2]).read_text())
print("locked", flush=True)
time.sleep(600)
"""


def test_one_writer_per_run_and_a_dead_writer_makes_it_interrupted(tmp_path: Path, capsys):
    run = tmp_path / "out" / "held"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(run), str(_suite(tmp_path)), *FAST],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert main(["run", "--resume", str(run)]) == 2
        message = " ".join(capsys.readouterr().out.split())
        assert f"another workbench (pid {holder.pid}) is writing this run" in message
        assert main(["list", str(tmp_path / "out")]) == 0
        assert "running" in capsys.readouterr().out
    finally:
        holder.send_signal(signal.SIGKILL)  # as a crash or the OOM killer would end it
        holder.wait()
    assert main(["list", str(tmp_path / "out")]) == 0
    assert "interrupted" in capsys.readouterr().out
    assert main(["show", str(run)]) == 0
    assert "interrupted" in capsys.readouterr().out
    assert json.loads((run / "manifest.json").read_text())["status"] == "running"  # untouched
    assert main(["run", "--resume", str(run)]) == 0  # the kernel let go of the dead one's lock
    assert len(load(run)) == 2
    assert RunStore.open(run).manifest["status"] == "complete"
