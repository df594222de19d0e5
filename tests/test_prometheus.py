"""What Prometheus and Grafana users get: a scrape promtool accepts, alert rules that fire when they
should, a dashboard that only queries metrics the daemon exports.

promtool is Debian's prometheus package (installed by .ci/run); every check runs it for real.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from linepicker.config import Listen
from servers import Relay
from test_daemon import FAST, chosen, get, make_daemon, serving, until

CONTRIB = Path(__file__).resolve().parent.parent / "contrib"


def promtool(*args: str, stdin: str | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    path = shutil.which("promtool")
    if path is None:
        pytest.skip("promtool is not installed (CI installs Debian's prometheus package)")
    return subprocess.run([path, *args], input=stdin, capture_output=True, text=True, timeout=60, cwd=cwd)


def exported_names(exposition: str) -> set[str]:
    """Every series name a query can use: each family as typed, plus a summary's _sum and _count."""
    names = set()
    for match in re.finditer(r"^# TYPE (\S+) (\S+)$", exposition, re.MULTILINE):
        name, kind = match.groups()
        names.add(name)
        if kind in ("summary", "histogram"):
            names |= {f"{name}_sum", f"{name}_count"}
    return names


def samples(exposition: str) -> dict[tuple[str, tuple], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(exposition)
        for s in family.samples
    }


def test_a_live_scrape_passes_promtool_and_counts_only_real_switches(relay: Relay, write_config, db_path: Path) -> None:
    config = write_config({"a": relay.url("a", delay_ms=5), "b": relay.url("b", delay_ms=30)}, probe=FAST, policy={"fall": 2, "rise": 2})
    daemon = make_daemon(config, db_path, Listen("127.0.0.1", 0))

    async def body() -> tuple[str, str]:
        await until(lambda: chosen(daemon) == "a" and daemon.url is not None, what="a first choice")
        await until(lambda: daemon.live.rounds["daemon"] >= 2, what="two rounds")
        first = (await asyncio.to_thread(get, daemon.url + "metrics"))[2]
        relay.set("a", mode="block")
        await until(lambda: chosen(daemon) == "b", what="the switch to b")
        return first, (await asyncio.to_thread(get, daemon.url + "metrics"))[2]

    first, second = serving(daemon, body)
    for exposition in (first, second):
        checked = promtool("check", "metrics", stdin=exposition)
        assert (checked.returncode, checked.stdout + checked.stderr) == (0, "")
    before, after = samples(first), samples(second)
    relay = ("relay", "default")  # every series but process_* names its relay: the one relay of a top-level lines: config
    assert before[("linepicker_switches_total", (relay,))] == 0, "the first choice is not a switch"
    assert after[("linepicker_switches_total", (relay,))] == 1
    family = next(f for f in text_string_to_metric_families(first) if f.name == "linepicker_line_ttfb_window_seconds")
    assert family.type == "summary"
    p50 = before[("linepicker_line_ttfb_window_seconds", (("line", "a"), ("quantile", "0.5"), relay))]
    assert 0.004 < p50 < 1, "the name and quantile label users query still answer"
    count = before[("linepicker_line_ttfb_window_seconds_count", (("line", "a"), relay))]
    total = before[("linepicker_line_ttfb_window_seconds_sum", (("line", "a"), relay))]
    assert count >= 2 and 0.004 < total / count < 1
    assert after[("linepicker_line_ttfb_window_seconds_count", (("line", "a"), relay))] >= count, "a counter never goes back"
    assert before[("process_resident_memory_bytes", ())] > 1e6
    assert before[("linepicker_probe_interval_seconds", (relay,))] == FAST["interval"]


def test_the_alert_rules_pass_promtool_and_their_unit_tests() -> None:
    checked = promtool("check", "rules", str(CONTRIB / "prometheus" / "alerts.yml"))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "4 rules found" in checked.stdout
    alerts = {rule["alert"] for group in yaml.safe_load((CONTRIB / "prometheus" / "alerts.yml").read_text())["groups"] for rule in group["rules"]}
    assert alerts == {"LinepickerChosenLineDown", "LinepickerNothingEligible", "LinepickerRoundsStopped", "LinepickerFrequentSwitching"}
    tested = promtool("test", "rules", "alerts_test.yml", cwd=CONTRIB / "prometheus")
    assert tested.returncode == 0, tested.stdout + tested.stderr


def dashboard_queries(dashboard: dict) -> list[tuple[str, str]]:
    """(panel title, expr) of every query, row panels' children included."""
    queries = []
    for panel in dashboard["panels"]:
        for inner in [panel, *panel.get("panels", [])]:
            queries += [(inner["title"], target["expr"]) for target in inner.get("targets", [])]
    return queries


def test_the_grafana_dashboard_queries_only_what_the_daemon_exports(relay: Relay, write_config, db_path: Path, tmp_path: Path) -> None:
    dashboard = json.loads((CONTRIB / "grafana" / "linepicker.json").read_text())
    config = write_config({"a": relay.url("a")}, probe=FAST)  # the chat families are exported, empty, without probe.chat too
    daemon = make_daemon(config, db_path, Listen("127.0.0.1", 0))

    async def body() -> str:
        await until(lambda: chosen(daemon) == "a" and daemon.url is not None, what="a first choice")
        return (await asyncio.to_thread(get, daemon.url + "metrics"))[2]

    exported = exported_names(serving(daemon, body))
    queries = dashboard_queries(dashboard)
    assert len(queries) >= 10
    for title, expr in queries:
        used = set(re.findall(r"\b(?:linepicker|process)_[a-z_]+\b", expr))
        assert used, f"{title!r} queries no linepicker metric: {expr}"
        assert used <= exported, f"{title!r} queries {used - exported}, which the daemon does not export"

    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    variables = {variable["name"] for variable in dashboard["templating"]["list"]}
    assert {"datasource", "job", "vantage", "line"} <= variables
    for panel in dashboard["panels"]:
        box = panel["gridPos"]
        assert box["x"] + box["w"] <= 24 and box["h"] > 0, panel["title"]
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
            assert [t["refId"] for t in panel["targets"]] == sorted({t["refId"] for t in panel["targets"]}), panel["title"]

    # Every query is PromQL that Prometheus parses: promtool checks it as a recording rule.
    grafana = {"$__rate_interval": "5m", "$job": ".*", "$vantage": ".*", "$line": ".*"}
    rules = []
    for index, (_, expr) in enumerate(queries):
        for variable, value in grafana.items():
            expr = expr.replace(variable, value)
        assert "$" not in expr, f"an unknown Grafana variable in {expr}"
        rules.append({"record": f"dashboard:query{index}", "expr": expr})
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    checked = promtool("check", "rules", str(path))
    assert checked.returncode == 0, checked.stdout + checked.stderr
