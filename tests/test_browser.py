"""The run report and the history page in a real browser: headless Chromium loads each page from
disk, with the network off, and a script appended to a copy of the page reports what the browser
made of it: every <img> decoded (naturalWidth > 0), the tables there, no resource fetched from
outside the page. Console messages are read from Chromium's log. Skipped where Chromium is absent
(Debian: apt install chromium); nothing is installed by the test."""

from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
from contextlib import redirect_stdout
from pathlib import Path

import pytest

from tests.test_history import history_runs
from workbench.cli import main

BROWSER = next(
    (p for name in ("chromium", "chromium-browser", "google-chrome") if (p := shutil.which(name))),
    None,
)
pytestmark = pytest.mark.skipif(
    BROWSER is None, reason="no Chromium on PATH (apt install chromium)"
)
SAMPLE_RUN = Path(__file__).resolve().parent.parent / "notebooks" / "sample_run"

# Appended to a copy of the page: on load, what the browser decoded, into a <pre> that
# --dump-dom prints. The pages themselves carry no script.
CHECK = """
<script>
window.addEventListener("load", () => {
  const images = [...document.images];
  const out = document.createElement("pre");
  out.id = "wb-check";
  out.textContent = JSON.stringify({
    images: images.length,
    undecoded: images.filter((i) => !(i.complete && i.naturalWidth > 0)).map((i) => i.alt),
    tables: document.querySelectorAll("table").length,
    fetched: performance.getEntriesByType("resource").map((r) => r.name)
      .filter((n) => !n.startsWith("data:")),
  });
  document.body.appendChild(out);
});
</script>
"""


def _open(page: Path, tmp_path: Path) -> tuple[dict, list[str]]:
    """What the browser decoded in `page`, and what its console printed (Chromium logs every
    console message, error or not, as INFO:CONSOLE; the pages have no script of their own, so any
    line is a finding: an uncaught error, a refused resource)."""
    probe = tmp_path / f"probe-{page.name}"
    probe.write_text(page.read_text(encoding="utf-8") + CHECK, encoding="utf-8")
    command = [
        str(BROWSER), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
        f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr", "--v=0",
        "--proxy-server=127.0.0.1:9", "--virtual-time-budget=10000", "--dump-dom", probe.as_uri(),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    found = re.search(r'<pre id="wb-check">(.*?)</pre>', done.stdout, re.S)
    assert found, f"the page did not finish loading:\n{done.stderr[-2000:]}"
    report = json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&"))
    console = [line for line in done.stderr.splitlines() if ":CONSOLE" in line]
    return report, console


def _assert_clean(report: dict, console: list[str], tables: int) -> None:
    assert report["images"] > 0 and report["undecoded"] == [], report
    assert report["tables"] >= tables, report
    assert report["fetched"] == [], report  # self-contained: nothing from outside the page
    assert console == [], console


def test_the_check_sees_a_broken_figure_and_a_console_error(tmp_path: Path) -> None:
    page = tmp_path / "broken.html"
    page.write_text(
        '<html><body><img alt="fig" src="data:image/png;base64,AAAA">'
        '<script>console.error("boom")</script></body></html>'
    )
    report, console = _open(page, tmp_path)
    assert report["undecoded"] == ["fig"]
    assert any("boom" in line for line in console)


def test_the_run_report_opens_in_a_browser(tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(SAMPLE_RUN, run)
    assert main(["report", str(run)]) == 0
    report, console = _open(run / "report.html", tmp_path)
    _assert_clean(report, console, tables=1)


def test_the_history_page_opens_in_a_browser(tmp_path: Path) -> None:
    root, out = tmp_path / "runs", tmp_path / "site"
    history_runs(root)
    with redirect_stdout(io.StringIO()):
        assert main(["history", str(root), "--out", str(out)]) == 0
    report, console = _open(out / "index.html", tmp_path)
    _assert_clean(report, console, tables=1)
