"""`workbench export` (github-benchmark, json, csv) and `workbench compare --markdown`.

Runs are the synthetic ones of test_compare: 10 cases (5 implementation/backend pairs x 2 sizes),
lognormal samples around known medians, so every exported figure can be recomputed here.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.test_compare import QUIET, REFERENCE, SLOWED, synthetic_rows, write_run
from workbench.cli import main

# What github-action-benchmark's `customSmallerIsBetter` tool reads (bencher reads it too):
# [{"name": str, "unit": str, "value": number, "range": str, "extra": str}], the last two optional.
GITHUB_BENCHMARK_SCHEMA = {
    "type": "array",
    "minItems": 1,
    "items": {
        "type": "object",
        "required": ["name", "unit", "value"],
        "properties": {
            "name": {"type": "string", "minLength": 1},
            "unit": {"const": "ms"},
            "value": {"type": "number"},
            "range": {"type": "string", "pattern": "^± [0-9.e+-]+$"},
            "extra": {"type": "string"},
        },
        "additionalProperties": False,
    },
}


def export(run: Path, *args: str) -> int:
    return main(["export", str(run), *args])


def key_of(row: dict) -> tuple[str, str, str]:
    return row["implementation"], row["backend"], row["size"]


def expected_name(impl: str, backend: str, size: str) -> str:
    # synthetic_rows sets flag_weight_decay at the large size only: named where it is set
    flag = " weight_decay=0.1" if size == "100x10k" else ""
    return f"Adamax {impl}/{backend} {size} float32 cpu{flag}"


def test_the_schema_rejects_what_the_tool_would_not_read() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    good = [{"name": "a", "unit": "ms", "value": 1.5, "range": "± 0.12", "extra": "n=3"}]
    jsonschema.validate(good, GITHUB_BENCHMARK_SCHEMA)
    for bad in (
        [{"name": "a", "unit": "ms", "value": "1.5"}],  # value as text
        [{"name": "a", "unit": "s", "value": 1.5}],
        [{"name": "a", "value": 1.5}],
        [{"name": "a", "unit": "ms", "value": 1.5, "range": 0.12}],
    ):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, GITHUB_BENCHMARK_SCHEMA)


def test_github_benchmark_entries_are_the_pooled_medians_of_ok_cases(
    tmp_path: Path, capsys
) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    rows = synthetic_rows(0, repeats=2, recorded=True, status={SLOWED: "error"}, **QUIET)
    half_failed = ("torch", "forloop", "10x1k")  # one repeat timed out, the other is ok
    for row in rows:
        if key_of(row) == half_failed and row["repeat"] == 1:
            row.update(status="timeout", error="TimeoutError", samples_s=None)
    run = write_run(tmp_path / "run", rows)
    out = tmp_path / "ci" / "bench.json"
    capsys.readouterr()
    assert export(run, "--format", "github-benchmark", "--out", str(out)) == 0
    entries = json.loads(out.read_text())
    jsonschema.validate(entries, GITHUB_BENCHMARK_SCHEMA)
    names = [e["name"] for e in entries]
    assert len(set(names)) == len(names)
    # 10 cases, 2 repeats each: 8 entries; the failed rows counted, and the cases they fail
    assert len(entries) == 8
    assert expected_name(*SLOWED) not in names and expected_name(*half_failed) not in names
    err = capsys.readouterr().err
    assert "8 entries; left out: error rows: 2, failed cases: 2, timeout rows: 1" in err
    pooled: dict[str, list[float]] = {}
    for row in rows:
        if key_of(row) not in (SLOWED, half_failed):
            pooled.setdefault(expected_name(*key_of(row)), []).extend(row["samples_s"])
    assert set(names) == set(pooled)
    for entry in entries:
        assert entry["value"] == pytest.approx(np.median(pooled[entry["name"]]) * 1e3, rel=1e-12)
        assert entry["extra"].startswith("n_samples=80 ")  # 2 repeats x 40 samples, one entry
        assert "stable=yes" in entry["extra"] and "flags=none" in entry["extra"]


def test_the_range_is_the_half_width_of_the_medians_ci(tmp_path: Path, capsys) -> None:
    rows = synthetic_rows(0, **QUIET)  # no `noise` column: an older run's rows
    for row in rows:
        row.update(median_ci_low_s=row["median_s"] - 1e-4, median_ci_high_s=row["median_s"] + 1e-4)
    noisy = synthetic_rows(1, **QUIET)
    for row in noisy:
        row["noise"] = 0.05  # no CI columns: the noise column is the relative half-width
    capsys.readouterr()
    assert export(write_run(tmp_path / "ci", rows)) == 0
    assert {e["range"] for e in json.loads(capsys.readouterr().out)} == {"± 0.1"}
    assert export(write_run(tmp_path / "noise", noisy)) == 0
    for entry in json.loads(capsys.readouterr().out):
        assert entry["range"] == f"± {0.05 * entry['value']:.3g}"
        assert "noise=±5.0%" in entry["extra"]


def test_json_export_is_strict_json_with_every_row_and_the_manifest(tmp_path: Path, capsys) -> None:
    rows = synthetic_rows(0, status={REFERENCE: "error"}, **QUIET)
    run = write_run(tmp_path / "quick-1", rows, hostname="ci-box")
    capsys.readouterr()
    assert export(run, "--format", "json") == 0

    def no_constants(name: str) -> None:
        raise AssertionError(f"{name} is not JSON")

    data = json.loads(capsys.readouterr().out, parse_constant=no_constants)
    assert data["manifest"]["run_id"] == "quick-1"
    assert data["manifest"]["environment"] == {"hostname": "ci-box"}
    assert len(data["rows"]) == len(rows) == 10
    by_id = {r["case_id"]: r for r in data["rows"]}
    for row in rows:
        got = by_id[row["case_id"]]
        assert got["status"] == row["status"]
        if row["samples_s"] is None:
            assert got["samples_s"] is None
        else:
            assert got["samples_s"] == pytest.approx(row["samples_s"])  # an array, as a list
    assert {r["flag_weight_decay"] for r in data["rows"]} == {None, 0.1}  # NaN is null


def test_csv_export_reads_back_with_pandas(tmp_path: Path) -> None:
    rows = synthetic_rows(0, recorded=True, extra={SLOWED: {"flags": ["noisy", "cold"]}})
    run = write_run(tmp_path / "run", rows)
    out = tmp_path / "run.csv"
    assert export(run, "--format", "csv", "--out", str(out)) == 0
    back = pd.read_csv(out)
    assert len(back) == len(rows)
    assert list(back["case_id"]) == [r["case_id"] for r in rows]
    first = [float(x) for x in back["samples_s"].iloc[0].split(";")]
    assert first == pytest.approx(rows[0]["samples_s"])
    flags = dict(zip(back["case_id"], back["flags"]))
    slowed = next(r["case_id"] for r in rows if key_of(r) == SLOWED)
    assert flags[slowed] == "noisy;cold"
    assert back["median_s"].to_numpy() == pytest.approx([r["median_s"] for r in rows])


def test_an_unreadable_run_exits_2_naming_the_file(tmp_path: Path, capsys) -> None:
    capsys.readouterr()
    assert export(tmp_path / "nowhere") == 2
    captured = capsys.readouterr()
    assert f"{tmp_path / 'nowhere'}: no such file" in captured.err
    assert captured.out == ""  # nothing on stdout, which a CI step may be piping into a file
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "records.parquet").write_bytes(b"garbage")
    assert export(bad, "--format", "csv") == 2
    err = capsys.readouterr().err
    assert str(bad / "records.parquet") in err and "cannot be read as parquet" in err


# --- compare --markdown -------------------------------------------------------------------------


def _table_rows(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("| ") and "---" not in line]


def test_markdown_puts_the_regression_first_and_fails_the_gate(tmp_path: Path) -> None:
    base = write_run(tmp_path / "base", synthetic_rows(0, **QUIET))
    new_rows = synthetic_rows(1, slow={SLOWED: 1.5}, status={REFERENCE: "error"}, **QUIET)
    for row in new_rows:
        if row["status"] == "error":
            row["error"] = "RuntimeError: a|b <lambda>\nsecond line"  # would break a table row
    new = write_run(tmp_path / "new", new_rows)
    (new / "figures").mkdir()
    (new / "figures" / "latency_vs_size.png").write_bytes(b"")
    (new / "report.html").write_text("<html></html>")
    md = tmp_path / "comment.md"
    assert main(["compare", str(base), str(new), "--markdown", str(md)]) == 1
    text = md.read_text()
    gate = next(line for line in text.splitlines() if "gate" in line)
    assert "fails the gate" in gate and "1 regression" in gate and "1 new-failure" in gate
    rows = _table_rows(text)
    header_cells = rows[0].count(" | ")
    assert all(r.count(" | ") == header_cells for r in rows)  # the error's pipe was escaped
    first, second = rows[1], rows[2]
    assert "foreach" in first and "100x10k" in first and "**regression**" in first
    (change,) = re.findall(r"\| (\d+\.\d{3})x \|", first)
    assert float(change) == pytest.approx(1.5, rel=0.1)
    assert "**new-failure**" in second and "a\\|b &lt;lambda&gt;" in second
    details = text.index("<details>")
    assert "8 other cases: 8 same" in text
    assert all(text.index(r) > details for r in rows if "| same |" in r)
    # links relative to the comment's folder
    assert "(new/report.html)" in text and "(new/figures/latency_vs_size.png)" in text


def test_markdown_on_stdout_passes_when_nothing_changed(tmp_path: Path, capsys) -> None:
    base = write_run(tmp_path / "base", synthetic_rows(0, **QUIET))
    new = write_run(tmp_path / "new", synthetic_rows(1, **QUIET))
    capsys.readouterr()
    assert main(["compare", str(base), str(new), "--markdown"]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith("### Benchmarks: `base` → `new`")
    assert "**✅ passes the gate**" in captured.out and "fails" not in captured.out
    assert "10 same" in captured.out and "figures" not in captured.out  # new has none
    assert "compare " in captured.err and "10 same" in captured.err  # the console's report
    assert len(_table_rows(captured.out)) == 1 + 10  # the details table: header and 10 cases
