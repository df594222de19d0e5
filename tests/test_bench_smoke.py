"""The benches in miniature, so they keep running as the code changes (their figures are not judged here)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

RUN = Path(__file__).resolve().parent.parent / "bench" / "run.py"


def test_every_bench_runs_in_miniature(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    proc = subprocess.run([sys.executable, str(RUN), "--quick", "--json", str(out)], capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads(out.read_text())["results"]
    assert [r["name"] for r in results] == ["accuracy", "load", "decision", "overhead", "startup", "store", "daemon", "gateway", "web"]
    assert all(r["checks"] for r in results)


def test_the_files_and_input_rows_of_reliability_md_measure_what_they_claim() -> None:
    """bench/hardening_files.py regenerates a table of docs/reliability.md; every item's row is there and none says it failed."""
    script = Path(__file__).resolve().parent.parent / "bench" / "hardening_files.py"
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    items = {int(row.split("|")[1]) for row in proc.stdout.splitlines()[2:] if row.startswith("|")}
    assert items == {1, 2, 3, 4, 6, 7, 9, 11, 12, 13, 15, 21, 23}
    for bad in ("CHANGED", "DIFFER", "NOT written", "TRACEBACK", "commands run: YES", "Traceback"):
        assert bad not in proc.stdout, bad


def test_the_network_rows_of_reliability_md_measure_what_they_claim() -> None:
    """bench/hardening_net.py regenerates a table of docs/reliability.md: every item's row is there, none crashed."""
    script = Path(__file__).resolve().parent.parent / "bench" / "hardening_net.py"
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [row for row in proc.stdout.splitlines()[2:] if row.startswith("|")]
    assert {int(row.split("|")[1]) for row in rows} == {8, 10, 14, 16, 17, 18, 19, 20, 22}
    assert "Traceback" not in proc.stdout and "crashed" not in "".join(row.split("|")[4] for row in rows)
