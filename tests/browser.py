"""Headless Chromium for tests that check what a person sees: the rendered DOM and a screenshot.

Debian's chromium package (installed by .ci/run). The flags keep it off the
network: this machine has none, and Chromium's background services would try.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"
FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--hide-scrollbars", "--virtual-time-budget=2000",
]


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.skip("chromium is not installed (CI installs Debian's chromium package)")
    return path


def _run(url: str, *args: str) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory() as profile:
        return subprocess.run(
            [chromium(), *FLAGS, f"--user-data-dir={profile}", *args, url],
            capture_output=True, text=True, timeout=90, check=True,
        )


def rendered_dom(url: str) -> str:
    """The DOM after Chromium has parsed and laid out the page, as a person's browser would have it."""
    return _run(url, "--dump-dom").stdout


def screenshot(url: str, name: str, size: str = "1200,1600") -> Path:
    """Keep a PNG under artifacts/ for a person to look at; CI keeps the folder."""
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    _run(url, f"--screenshot={path}", f"--window-size={size}")
    return path


MEASURE = """<script>
const boxes = [];
document.querySelectorAll("svg.chart").forEach((chart, index) => {
  const view = chart.viewBox.baseVal;
  for (const text of chart.querySelectorAll("text")) {
    const box = text.getBBox();
    boxes.push({chart: index, text: text.textContent, left: box.x, right: box.x + box.width, top: box.y, bottom: box.y + box.height, width: view.width});
  }
});
document.body.setAttribute("data-boxes", JSON.stringify(boxes));
</script>"""


def chart_text_boxes(page: Path) -> list[dict]:
    """Where Chromium lays out every text of every chart on a saved page (its box in the chart's own
    units), measured by a script added to a copy: what a reader would find cut off or overlapping."""
    import html
    import json
    import re

    with tempfile.TemporaryDirectory() as folder:
        copy = Path(folder) / "measured.html"
        copy.write_text(page.read_text().replace("</body>", MEASURE + "</body>"))
        dom = rendered_dom(copy.as_uri())
    found = re.search(r'data-boxes="([^"]*)"', dom)
    assert found, "the measuring script did not run"
    return json.loads(html.unescape(found.group(1)))
