"""`linepicker daemon` with a `gateway:` block: it serves the gateway, hands its URL out while alive,
learns from real requests, and hands the chosen line back when it stops."""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from linepicker.config import Listen
from linepicker.gatewaylease import live_gateway
from servers import ApiRelay, ServerThread, start_api_relay
from test_daemon import FAST, chosen, get, make_daemon, serving, start_daemon_process, until
from test_prometheus import promtool
from test_top import free_port

KEY = "sk-daemon-gw-SECRET-4f7a9c2e81"
GATEWAY = {"listen": "127.0.0.1:0"}


@pytest.fixture
def api(server: ServerThread) -> ApiRelay:
    return start_api_relay(server)


def env_exports(db: Path) -> str:
    """What `eval "$(linepicker env)"` would run in a new shell, through the console script's fast path."""
    code = f"import sys\nfrom linepicker.entry import main\nsys.argv = ['linepicker', 'env', '--shell', 'bash', '--db', {str(db)!r}]\nmain()\n"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60).stdout


def stream_text(base_url: str) -> tuple[str, str | None]:
    client = openai.OpenAI(base_url=f"{base_url}/v1", api_key=KEY, max_retries=0, timeout=10)
    with client.chat.completions.with_streaming_response.create(
        model="gpt-x", messages=[{"role": "user", "content": "hi"}], stream=True, stream_options={"include_usage": True}
    ) as raw:
        return "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices), raw.headers.get("x-linepicker-line")


def test_a_running_daemon_serves_the_gateway_and_hands_it_out_until_it_stops(api: ApiRelay, write_config, db_path: Path, tmp_path: Path) -> None:
    dotenv, settings = tmp_path / "app.env", tmp_path / "claude" / "settings.json"
    config = write_config({"a": api.url("a"), "b": api.url("b")}, probe=FAST, gateway=GATEWAY,
                          targets={"dotenv": str(dotenv), "claude_settings": str(settings)})
    daemon = make_daemon(config, db_path)

    async def body() -> dict[str, Any]:
        await until(lambda: chosen(daemon) is not None and daemon.gateway is not None and daemon.gateway.url is not None, what="a choice")
        url = daemon.gateway.url
        await until(lambda: dotenv.exists() and url in dotenv.read_text(), what="the targets to name the gateway")
        return {
            "url": url,
            "served": await asyncio.to_thread(stream_text, url),
            "env": await asyncio.to_thread(env_exports, db_path),
            "dotenv": dotenv.read_text(),
            "settings": json.loads(settings.read_text()),
        }

    seen = serving(daemon, body)
    url, line = seen["url"], chosen(make_daemon(config, db_path))
    line_url = api.url(line)
    assert seen["served"][1] == line, "the gateway sends requests to the chosen line"
    assert f"export OPENAI_BASE_URL='{url}/v1'" in seen["env"] and f"export ANTHROPIC_BASE_URL='{url}'" in seen["env"]
    assert f"OPENAI_BASE_URL={url}/v1" in seen["dotenv"] and seen["settings"]["env"]["ANTHROPIC_BASE_URL"] == url
    after = env_exports(db_path)
    assert f"export OPENAI_BASE_URL='{line_url}/v1'" in after, "a stopped daemon's gateway is never handed out"
    assert f"OPENAI_BASE_URL={line_url}/v1" in dotenv.read_text(), "the targets name the line again"
    assert json.loads(settings.read_text())["env"]["ANTHROPIC_BASE_URL"] == line_url
    assert live_gateway(str(db_path)) is None


def metric(text: str, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


def test_real_requests_are_evidence_a_failing_line_is_skipped_rechecked_and_left(
    api: ApiRelay, write_config, db_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Line a answers probes but opens every stream with an error: only real requests can tell."""
    caplog.set_level(logging.DEBUG, logger="linepicker")
    config = write_config({"a": api.url("a", "error_event"), "b": api.url("b")}, probe={**FAST, "interval": 30, "down_interval": 30},
                          gateway={**GATEWAY, "breaker_failures": 2})
    daemon = make_daemon(config, db_path, Listen("127.0.0.1", 0))

    async def body() -> dict[str, Any]:
        await until(lambda: chosen(daemon) is not None and daemon.url is not None, what="a first round")
        if chosen(daemon) != "a":  # both answer probes alike; make a the one in force, as it was when it began to fail
            daemon.live.set_order("a")
        served = [await asyncio.to_thread(stream_text, daemon.gateway.url) for _ in range(4)]
        await until(lambda: daemon.live.order[0].name == "b", what="b to lead the gateway's order")
        await until(lambda: len(_traffic_rows(db_path)) == 6, what="the six attempts to be recorded (in batches, within a second)")
        page, api_status, metrics = [await asyncio.to_thread(get, daemon.url + path) for path in ("", "api/status", "metrics")]
        return {"served": served, "page": page[2], "api": json.loads(api_status[2]), "metrics": metrics[2]}

    seen = serving(daemon, body)
    assert [line for _, line in seen["served"]] == ["b"] * 4, "no error reached the client: b answered every time"
    assert all(text.split() == [f"b{i}" for i in range(5)] for text, _ in seen["served"])
    assert len([r for r in api.requests["a"] if r["path"] == "v1/chat/completions"]) == 2, "skipped after two failures"
    metrics = seen["metrics"]
    assert metric(metrics, "linepicker_gateway_requests_total", line="a", outcome="model_error") == 2
    assert metric(metrics, "linepicker_gateway_requests_total", line="b", outcome="ok") == 4
    assert metric(metrics, "linepicker_gateway_failovers_total", from_line="a", to_line="b") == 2
    assert metric(metrics, "linepicker_gateway_ttfb_seconds_count", line="b") == 4
    assert metric(metrics, "linepicker_gateway_line_skipped", line="a") == 1
    if shutil.which("promtool"):  # CI installs it (.ci/run); the rest of this test needs no promtool
        linted = promtool("check", "metrics", stdin=metrics)
        assert linted.returncode == 0, linted.stdout + linted.stderr
    traffic = {line["name"]: line["traffic"] for line in seen["api"]["lines"]}
    assert (traffic["a"]["failures"], traffic["a"]["failovers"], traffic["a"]["breaker"]) == (2, 2, "open")
    assert traffic["b"]["requests"] == 4 and traffic["b"]["ttft_p50_ms"] is not None
    a_line = next(line for line in seen["api"]["lines"] if line["name"] == "a")
    assert not a_line["healthy"] and "real requests" in a_line["why_not"]
    assert "gateway (medians): 4 requests" in seen["page"] and "skipped, tried again in" in seen["page"]
    assert _rechecked(db_path), "a re-check right after the breaker opened, not at the next round in 30 s"
    with_rows = _traffic_rows(db_path)
    assert [(line, outcome, failover) for line, outcome, failover in with_rows[:2]] == [("a", "model_error", 1), ("b", "ok", 0)]
    everything = [seen["page"], json.dumps(seen["api"]), metrics, caplog.text, *(p.read_bytes().decode("latin-1") for p in db_path.parent.iterdir())]
    for text in everything:
        assert KEY not in text and KEY[:12] not in text, "the key (or a piece of it) was kept"


def _traffic_rows(db: Path) -> list[tuple[str, str, int]]:
    import sqlite3

    with sqlite3.connect(db) as conn:
        return conn.execute("select l.name, t.outcome, t.failover from traffic t join lines l on l.id = t.line_id order by t.id").fetchall()


def _rechecked(db: Path) -> bool:
    import sqlite3

    with sqlite3.connect(db) as conn:
        return conn.execute("select count(*) from rounds where kind = 'daemon-recheck'").fetchone()[0] > 0


def wait_for(condition: Callable[[], Any], timeout: float = 15, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if found := condition():
            return found
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.parametrize("stop", ["SIGTERM", "kill -9"])
def test_env_names_the_gateway_only_while_its_daemon_lives(api: ApiRelay, write_config, db_path: Path, stop: str) -> None:
    config = write_config({"a": api.url("a")}, probe=FAST, gateway=GATEWAY)
    process = start_daemon_process(config, db_path, "--listen", "off")
    try:
        url = wait_for(lambda: live_gateway(str(db_path)), what="the daemon's gateway")
        exports = wait_for(lambda: "OPENAI_BASE_URL" in (text := env_exports(db_path)) and text, what="a choice")
        assert f"export OPENAI_BASE_URL='{url}/v1'" in exports
        assert stream_text(url)[1] == "a"
        if stop == "SIGTERM":
            process.send_signal(signal.SIGTERM)
            _, err = process.communicate(timeout=10)
            assert process.returncode == 0 and "Traceback" not in err
            assert "clients are handed a" in err
        else:
            process.kill()
            process.wait(timeout=10)
    finally:
        process.kill()
        process.communicate(timeout=10)
    assert f"export OPENAI_BASE_URL='{api.url('a')}/v1'" in env_exports(db_path), "a dead daemon's lease is never believed"


def test_a_gateway_port_in_use_is_one_line_not_a_traceback(api: ApiRelay, write_config, db_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = write_config({"a": api.url("a")}, probe=FAST, gateway={"listen": f"127.0.0.1:{port}"})
        process = start_daemon_process(config, db_path, "--listen", "off")
        _, err = process.communicate(timeout=20)
    assert process.returncode == 2, err
    assert f"gateway.listen 127.0.0.1:{port}: cannot bind" in err and "Traceback" not in err


def test_each_relay_serves_its_own_gateway_to_its_own_lines(api: ApiRelay, tmp_path: Path, db_path: Path) -> None:
    """Two relays, two gateways: each hands out its own address for its own variables and forwards
    only to its own lines; metrics say which relay; a stopped daemon hands the lines back."""
    import anthropic
    import textwrap

    ports = {"whatai": free_port(), "claude": free_port()}
    config = tmp_path / "lines.yaml"
    config.write_text(textwrap.dedent(f"""\
        probe: {{timeout: 2, samples: 1, interval: 1, down_interval: 1}}
        relays:
          whatai:
            exports: [OPENAI_BASE_URL]
            gateway: {{listen: 127.0.0.1:{ports["whatai"]}}}
            lines:
              - {{name: w1, url: "{api.url("w1")}"}}
          claude:
            probe: {{api: anthropic}}
            exports: [ANTHROPIC_BASE_URL]
            gateway: {{listen: 127.0.0.1:{ports["claude"]}}}
            lines:
              - {{name: c1, url: "{api.url("c1")}"}}
        """))
    listen = free_port()
    process = start_daemon_process(config, db_path, "--listen", f"127.0.0.1:{listen}")
    gateways = {relay: f"http://127.0.0.1:{port}" for relay, port in ports.items()}
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not all(live_gateway(str(db_path), relay) for relay in ports):
            time.sleep(0.1)
        served = env_exports(db_path)
        while time.monotonic() < deadline and not ("OPENAI_BASE_URL" in served and "ANTHROPIC_BASE_URL" in served):
            time.sleep(0.2)
            served = env_exports(db_path)
        text, line = stream_text(gateways["whatai"])
        message = anthropic.Anthropic(base_url=gateways["claude"], api_key=KEY, max_retries=0, timeout=10).messages.create(
            model="claude-x", max_tokens=10, messages=[{"role": "user", "content": "hi"}]
        )
        time.sleep(1.2)  # the gateway writes its evidence once a second
        exposition = urllib_get(f"http://127.0.0.1:{listen}/metrics")
    finally:
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=20)
    assert f"export OPENAI_BASE_URL='{gateways['whatai']}/v1'" in served
    assert f"export ANTHROPIC_BASE_URL='{gateways['claude']}'" in served
    assert line == "w1" and text.startswith("w10"), "the whatai gateway forwards to whatai's line"
    assert message.content[0].text.startswith("c10"), "the claude gateway forwards to claude's line"
    assert not [r for r in api.requests["c1"] if r["path"] == "v1/chat/completions"], "no request crosses to the other relay"
    requests = {(s.labels["relay"], s.labels["line"]) for f in text_string_to_metric_families(exposition) for s in f.samples
                if s.name == "linepicker_gateway_requests_total"}
    assert requests == {("whatai", "w1"), ("claude", "c1")}
    assert KEY not in err and KEY not in exposition
    after = env_exports(db_path)
    assert f"export OPENAI_BASE_URL='{api.url('w1')}/v1'" in after and f"export ANTHROPIC_BASE_URL='{api.url('c1')}'" in after
    assert all(live_gateway(str(db_path), relay) is None for relay in ports)


def urllib_get(url: str) -> str:
    import urllib.request

    with urllib.request.urlopen(url, timeout=5) as response:
        return response.read().decode()


def test_two_relays_on_one_gateway_address_is_a_config_error_naming_both(tmp_path: Path) -> None:
    from linepicker.config import parse_setup
    from linepicker.errors import ConfigError

    text = """\
relays:
  a:
    exports: [OPENAI_BASE_URL]
    gateway: {listen: 127.0.0.1:9138}
    lines: [{name: m, url: "http://127.0.0.1:1"}]
  b:
    exports: [ANTHROPIC_BASE_URL]
    gateway: {listen: 127.0.0.1:9138}
    lines: [{name: m, url: "http://127.0.0.1:2"}]
"""
    with pytest.raises(ConfigError) as error:
        parse_setup(text.encode(), tmp_path / "lines.yaml")
    message = str(error.value)
    assert "lines.yaml:8" in message and "'a'" in message and "'b'" in message and "127.0.0.1:9138" in message


def test_the_policy_counts_real_requests_a_line_failed_beside_its_probes(write_config, run, db_path: Path) -> None:
    """Probes say both lines answer and a is faster; the gateway's record says a failed most real
    requests: a's score carries those failures and the choice goes to b. Traffic never times a line."""
    from conftest import stdout_json
    from linepicker.config import load_config
    from linepicker.probe.phases import Phases
    from linepicker.probe.sample import Sample
    from linepicker.store import Store
    from linepicker.traffic import Attempt

    config = write_config({"a": "http://127.0.0.1:9/a", "b": "http://127.0.0.1:9/b"})
    now = time.time()
    with Store(db_path) as store:
        ids = store.line_ids(load_config(config).active_lines)
        round_id = store.start_round("pick")
        store.add_samples(round_id, ids, [
            Sample(name, seq, now - 60 + seq, "ok", True, Phases(dns_ms=1, connect_ms=1, tls_ms=1, ttfb_ms=ttfb))
            for seq in range(10) for name, ttfb in (("a", 40.0), ("b", 70.0))
        ])
        store.finish_round(round_id, None, "seeded")

    def scores() -> dict[str, dict[str, Any]]:
        return {line["name"]: line for line in stdout_json(run("status", "--json", "--config", str(config)))["lines"]}

    before = scores()
    assert before["a"]["score"] < before["b"]["score"] and before["a"]["score_parts"]["failure_ms"] == 0
    with Store(db_path) as store:
        ids = store.line_ids(load_config(config).active_lines)
        store.add_traffic(ids, [
            Attempt("a", 1, now - 30 + n, "POST", "/v1/chat/completions", "not_api" if n % 4 else "ok", n % 4 == 0, ttfb_ms=5000.0)
            for n in range(12)
        ])
    after = scores()
    assert after["a"]["score_parts"]["failure_ms"] > 0, "failed real requests count against the line"
    assert after["a"]["score"] is None or after["a"]["score"] > after["b"]["score"], "b now waits less for a client than a, failures included"
    assert after["a"]["score"] is not None or "success" in after["a"]["why_not"]
    assert after["a"]["score_parts"]["p50_ms"] == before["a"]["score_parts"]["p50_ms"], "a completion's 5 s head is not a probe's latency"
