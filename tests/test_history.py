"""`history` in the terminal and `report` as HTML, from a made-up day (and older, rolled-up days)."""

from __future__ import annotations

import json
import time
from html.parser import HTMLParser
from pathlib import Path

from linepicker.config import load_config
from linepicker.daemon.runner import retain
from linepicker.store import Store
from seed import seed_history

LINES = {"a": "https://a.relay.test", "b": "https://b.relay.test", "c": "https://c.relay.test"}


def seeded(write_config, db_path: Path, **seed) -> Path:
    config = write_config(LINES)
    store = Store(db_path)
    seed_history(store, config, **seed)
    ids = store.line_ids(load_config(config).active_lines)
    now = time.time()
    store.record_decision("a", LINES["a"], None, "a has the best score (40.1 ms)", None)
    store.record_decision("c", LINES["c"], "a", "c scores 30 ms against 40 ms", None)
    store.db.execute("update decisions set decided_at = ? where name = 'a'", [now - 20 * 3600])
    store.db.execute("update decisions set decided_at = ? where name = 'c'", [now - 9 * 3600])
    store.db.conn.commit()
    assert ids
    store.close()
    return config


def test_history_json_shows_the_outage_and_the_switches_in_order(write_config, run, db_path: Path) -> None:
    config = seeded(write_config, db_path)
    result = run("history", "--config", str(config), "--json", "--buckets", "24")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["bucket_s"] == 3600
    lines = {line["name"]: line["buckets"] for line in data["lines"]}
    assert list(lines) == ["a", "b", "c"]
    assert all(len(buckets) == 24 for buckets in lines.values())
    dead = [i for i, b in enumerate(lines["c"]) if b["samples"] and b["failures"] == b["samples"]]
    assert dead == [16, 17], "c was down from 8 to 6 hours ago"
    assert all(b["failures"] == 0 and 25 < b["p50_ms"] < 55 for b in lines["a"])
    assert sum(b["failures"] for b in lines["b"]) > 0
    assert [(d["previous"], d["name"]) for d in data["decisions"]] == [(None, "a"), ("a", "c")]


def test_history_in_the_terminal_draws_sparklines_and_the_timeline(write_config, run, db_path: Path) -> None:
    config = seeded(write_config, db_path)
    result = run("history", "--config", str(config), "--buckets", "24", "--line", "c")
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "c https://c.relay.test" in out and "a https://a.relay.test" not in out
    assert "last 24 h, one mark per 1 h" in out
    spark = next(line.strip() for line in out.splitlines() if line.strip() and set(line.strip()) <= set("▁▂▃▄▅▆▇█✗▲"))
    assert len(spark) == 24 and spark[16:18] == "✗✗"
    assert set(spark) - {"✗"} <= set("▁▂▃▄▅▆▇█"), "no outlier in a steady day"
    assert "a → c" in out and "c scores 30 ms" in out


def test_history_rejects_an_unknown_line_and_a_bad_period(write_config, run, db_path: Path) -> None:
    config = seeded(write_config, db_path)
    unknown = run("history", "--config", str(config), "--line", "zz")
    assert unknown.exit_code == 2 and "no line named 'zz'" in unknown.stderr and "Traceback" not in unknown.output
    bad = run("history", "--config", str(config), "--since", "yesterday")
    assert bad.exit_code == 2 and "--since" in bad.stderr


def test_days_past_raw_retention_come_from_the_hourly_roll_ups(write_config, run, db_path: Path) -> None:
    config = seeded(write_config, db_path, end=time.time() - 10 * 86400)
    with Store(db_path) as store:
        rolled, _ = retain(store, load_config(config).retention, time.time())
    assert rolled.samples > 1000
    data = json.loads(run("history", "--config", str(config), "--json", "--since", "14d", "--buckets", "14").stdout)
    a = next(line for line in data["lines"] if line["name"] == "a")["buckets"]
    filled = [b for b in a if b["samples"]]
    assert filled and all(b["rolled_up"] for b in filled)
    assert sum(b["samples"] for b in filled) == 720, "every sample is counted once in the roll-ups"
    assert all(30 < b["p50_ms"] < 50 and b["p10_ms"] is None for b in filled)


class Report(HTMLParser):
    """Card titles, charts and the rows of the decisions table, as a reader sees them."""

    def __init__(self) -> None:
        super().__init__()
        self.names: list[str] = []
        self.charts: list[str] = []
        self.rows: list[str] = []
        self._name = False
        self._row: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list) -> None:
        attributes = dict(attrs)
        self._name = tag == "h3"
        if tag == "svg":
            self.charts.append(attributes.get("aria-label", ""))
        if tag == "tr":
            self._row = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "tr" and self._row is not None:
            self.rows.append(" ".join(self._row))
            self._row = None

    def handle_data(self, data: str) -> None:
        if self._name:
            self.names.append(data.strip())
            self._name = False
        if self._row is not None and data.strip():
            self._row.append(data.strip())


def test_report_is_one_offline_html_file_that_a_browser_renders(write_config, run, db_path: Path, tmp_path: Path) -> None:
    from browser import rendered_dom, screenshot

    config = seeded(write_config, db_path)
    out = tmp_path / "report.html"
    result = run("report", "--html", str(out), "--config", str(config), "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["lines"] == ["a", "b", "c"]
    text = out.read_text()
    assert "http://" not in text.replace("http://www.w3.org/2000/svg", "") and "<script" not in text, "nothing to fetch"
    report = Report()
    report.feed(rendered_dom(out.as_uri()))
    assert report.names == ["a", "b", "c"]
    assert [chart.rsplit(" to ", 1)[0] for chart in report.charts] == [f"{name}: time to first byte, 24 h" for name in "abc"]
    assert any("a → c" in row and "c scores 30 ms" in row for row in report.rows)
    assert screenshot(out.as_uri(), "report.png").stat().st_size > 10_000


def _limited(argv: list[str], cwd: Path) -> "subprocess.CompletedProcess[str]":
    """The real CLI with 1 GiB of address space: a span that costs memory in proportion fails instead of swapping."""
    import resource
    import subprocess
    import sys

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (2**30, 2**30))

    return subprocess.run([sys.executable, "-m", "linepicker", *argv], capture_output=True, text=True, cwd=cwd, timeout=120, preexec_fn=limit)


def test_history_and_report_refuse_spans_past_the_longest_retention(write_config, db_path: Path, tmp_path: Path) -> None:
    config = seeded(write_config, db_path)
    common = ["--config", str(config), "--db", str(db_path)]
    for argv in (["history", "--since", "9999999d"], ["report", "--html", "r.html", "--since", "10000000d"], ["history", "--since", "3651d"]):
        done = _limited([*argv, *common], tmp_path)
        assert done.returncode == 2, done.stderr[-500:]
        assert "Traceback" not in done.stderr and "at most 3650d" in done.stderr, done.stderr
    longest = _limited(["report", "--html", "r.html", "--since", "3650d", *common], tmp_path)
    assert longest.returncode == 0, longest.stderr[-500:]
    assert _limited(["history", "--since", "3650d", *common], tmp_path).returncode == 0
