"""The daemon in-process and as a real process, against loopback lines whose behaviour changes mid-run."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any, Awaitable, Callable

import pytest
from prometheus_client.parser import text_string_to_metric_families

from linepicker.config import load_config
from linepicker.daemon.runner import Daemon, retain
from linepicker.probe.phases import Phases
from linepicker.probe.sample import Sample
from linepicker.store import Store
from linepicker.config import Listen
from seed import seed_history
from servers import Relay

FAST = {"timeout": 1, "samples": 1, "interval": 0.3, "down_interval": 0.15}


def make_daemon(config_path: Path, db_path: Path, listen: Listen | None = None) -> Daemon:
    return Daemon(load_config(config_path), Store(db_path), listen)


async def until(condition: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.02)


def serving(daemon: Daemon, body: Callable[[], Awaitable[Any]]) -> Any:
    """Run the daemon's scheduler on a loop while `body` watches it, then stop it as SIGTERM would."""

    async def main() -> Any:
        task = asyncio.ensure_future(daemon.serve())
        try:
            return await body()
        finally:
            daemon.stop("test over")
            await asyncio.wait_for(task, 10)
            daemon.store.close()

    return asyncio.run(main())


def chosen(daemon: Daemon) -> str | None:
    choice = daemon.store.choice()
    return choice.name if choice else None


def get(url: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.headers.get("Content-Type", ""), response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("Content-Type", ""), exc.read().decode()


def test_switches_when_the_current_line_goes_bad_and_hands_the_choice_out(relay: Relay, write_config, db_path: Path, tmp_path: Path) -> None:
    hook_out = tmp_path / "hook.json"
    hook = [sys.executable, "-c", f"import json, os, sys; json.dump({{k: v for k, v in os.environ.items() if k.startswith('LINEPICKER_')}} | {{'argv': sys.argv[1:]}}, open({str(hook_out)!r}, 'w'))", "$LINEPICKER_URL"]
    dotenv = tmp_path / "app.env"
    dotenv.write_text("OTHER=keep me\n")
    config = write_config(
        {"a": relay.url("a", delay_ms=5), "b": relay.url("b", delay_ms=60)},
        probe=FAST,
        policy={"fall": 2, "rise": 2},
        targets={"dotenv": str(dotenv)},
        on_switch=hook,
    )
    daemon = make_daemon(config, db_path)

    async def body() -> None:
        await until(lambda: chosen(daemon) == "a", what="a first choice")
        await until(lambda: hook_out.exists(), what="on_switch for the first choice")
        hook_out.unlink()
        relay.set("a", mode="html502")
        await until(lambda: chosen(daemon) == "b", what="the switch to b")
        await until(lambda: hook_out.exists(), what="on_switch for the switch")

    serving(daemon, body)
    ran = json.loads(hook_out.read_text())
    assert ran["LINEPICKER_LINE"] == "b"
    assert ran["LINEPICKER_URL"] == relay.base + "/line/b"
    assert ran["LINEPICKER_PREVIOUS"] == "a"
    assert ran["argv"] == ["$LINEPICKER_URL"], "the hook's arguments never pass through a shell"
    text = dotenv.read_text()
    assert "OTHER=keep me" in text and f"OPENAI_BASE_URL={relay.base}/line/b/v1" in text
    with sqlite3.connect(db_path) as conn:
        decisions = conn.execute("select previous, name, reason from decisions order by id").fetchall()
    assert [(p, n) for p, n, _ in decisions] == [(None, "a"), ("a", "b")]
    assert "not eligible" in decisions[1][2]


def test_does_not_flap_between_two_lines_within_the_margin(relay: Relay, write_config, db_path: Path) -> None:
    config = write_config({"a": relay.url("a", delay_ms=40), "b": relay.url("b", delay_ms=40)}, probe=FAST)
    daemon = make_daemon(config, db_path)

    async def body() -> None:
        await until(lambda: chosen(daemon) is not None, what="a first choice")
        for step in range(12):  # the two lines trade places by a few ms, round after round
            relay.set("a", delay_ms=40 + (5 if step % 2 else 0))
            relay.set("b", delay_ms=40 + (0 if step % 2 else 5))
            await asyncio.sleep(0.2)

    serving(daemon, body)
    with sqlite3.connect(db_path) as conn:
        rounds = conn.execute("select count(*) from rounds where kind = 'daemon'").fetchone()[0]
        decisions = conn.execute("select count(*) from decisions").fetchone()[0]
    assert rounds >= 5
    assert decisions == 1, "a few ms either way is not worth a switch"


def test_rise_and_fall_count_consecutive_rounds(relay: Relay, write_config, db_path: Path) -> None:
    config = write_config(
        {"a": relay.url("a", delay_ms=5), "b": relay.url("b", delay_ms=80)},
        probe=FAST,
        policy={"fall": 3, "rise": 2, "min_success_rate": 0.1},
    )
    daemon = make_daemon(config, db_path)

    async def rounds(n: int) -> list[str]:
        states = []
        for _ in range(n):
            await daemon.full_round()
            states.append(daemon.live.health_of("a").label(2, 3))
        return states

    async def body() -> None:
        assert await rounds(1) == ["up"]
        assert chosen(daemon) == "a"
        relay.set("a", mode="error503")
        assert await rounds(3) == ["failing 1/3", "failing 2/3", "down"]
        assert chosen(daemon) == "b", "replaced as soon as it has fallen"
        relay.set("a", delay_ms=5)
        assert await rounds(2) == ["rising 1/2", "up"]
        relay.set("a", mode="error503")
        assert await rounds(1) == ["failing 1/3"]
        relay.set("a", delay_ms=5)
        assert await rounds(1) == ["up"], "one good round resets the count of failures"

    asyncio.run(body())
    daemon.store.close()


def test_the_current_line_that_falls_is_replaced_on_the_fast_schedule(relay: Relay, write_config, db_path: Path) -> None:
    config = write_config(
        {"a": relay.url("a", delay_ms=5), "b": relay.url("b", delay_ms=60)},
        probe={**FAST, "interval": 3, "down_interval": 0.1},
        policy={"fall": 3, "min_success_rate": 0.1, "failure_penalty_ms": 0},  # only rise/fall decides here
    )
    daemon = make_daemon(config, db_path)

    async def body() -> None:
        await until(lambda: chosen(daemon) == "a", what="a first choice")
        relay.set("a", mode="html502")
        await until(lambda: chosen(daemon) == "b", timeout=10, what="the switch to b")

    serving(daemon, body)
    with sqlite3.connect(db_path) as conn:
        kind, reason = conn.execute(
            "select r.kind, d.reason from decisions d join rounds r on r.id = d.round_id where d.name = 'b'"
        ).fetchone()
        full_rounds = conn.execute("select count(*) from rounds where kind = 'daemon'").fetchone()[0]
    assert kind == "daemon-watch", "the fall was counted by the chosen line's watch, not at the next full rounds"
    assert full_rounds <= 2, "the watch rounds did the counting"
    assert "down: failed its latest probes" in reason


def test_targets_are_rewritten_only_when_the_choice_changes(relay: Relay, write_config, db_path: Path, tmp_path: Path) -> None:
    settings = tmp_path / "settings.json"
    settings.write_text('{"model": "opus"}\n')
    config = write_config({"a": relay.url("a")}, probe=FAST, targets={"claude_settings": str(settings)})
    daemon = make_daemon(config, db_path)
    seen: list[tuple[int, int]] = []

    async def body() -> None:
        await until(lambda: chosen(daemon) == "a", what="a first choice")
        for _ in range(10):
            info = settings.stat()
            seen.append((info.st_ino, info.st_mtime_ns))
            await asyncio.sleep(0.1)

    serving(daemon, body)
    assert sum(daemon.live.rounds.values()) >= 3
    assert len(set(seen)) == 1, "an unchanged choice must not touch the user's file"
    assert json.loads(settings.read_text()) == {"model": "opus", "env": {"ANTHROPIC_BASE_URL": relay.base + "/line/a"}}


def test_retention_rolls_old_samples_into_hours_and_deletes_them(relay: Relay, write_config, db_path: Path) -> None:
    config = load_config(write_config({"a": relay.url("a")}, probe=FAST, retention={"raw": "1d", "hourly": "30d"}))
    store = Store(db_path)
    ids = store.line_ids(config.active_lines)
    now = time.time()
    old_round = store.start_round("daemon")

    def sample(at: float, ok: bool, ttfb: float) -> Sample:
        return Sample("a", 0, at, "ok" if ok else "http_5xx", ok, Phases(ttfb_ms=ttfb if ok else None))

    hour = now - 2 * 86400 - (now - 2 * 86400) % 3600  # within one hour, two days ago
    store.add_samples(old_round, ids, [sample(hour + 600 + i, i % 4 != 0, 100 + i) for i in range(8)])
    store.add_samples(old_round, ids, [sample(now - 40 * 86400, True, 50)])  # past hourly retention once rolled up
    store.db.execute("update rounds set started_at = ? where id = ?", [hour, old_round])
    store.db.conn.commit()
    store.add_samples(store.start_round("daemon"), ids, [sample(now - 60, True, 20)])
    rolled, pruned = retain(store, config.retention, now)
    assert rolled.samples == 9
    assert pruned == 1, "the 40-day-old hour is past retention.hourly"
    with sqlite3.connect(db_path) as conn:
        left = conn.execute("select count(*) from samples").fetchone()[0]
        hours = conn.execute("select samples, successes, ttfb_min_ms, ttfb_max_ms, outcomes from hourly").fetchall()
        rounds = conn.execute("select count(*) from rounds").fetchone()[0]
    assert left == 1, "recent samples stay raw"
    assert rounds == 1, "a round left without samples is dropped"
    assert len(hours) == 1
    samples, successes, low, high, outcomes = hours[0]
    assert (samples, successes) == (8, 6)
    assert (low, high) == (101, 107)
    assert json.loads(outcomes) == {"ok": 6, "http_5xx": 2}
    store.close()


def test_status_api_and_metrics_agree_with_the_database(relay: Relay, write_config, db_path: Path) -> None:
    config = write_config({"a": relay.url("a", delay_ms=5), "b": relay.url("b", mode="block")}, probe=FAST)
    daemon = make_daemon(config, db_path, Listen("127.0.0.1", 0))

    async def body() -> tuple:
        await until(lambda: chosen(daemon) == "a" and daemon.url is not None, what="a first choice")
        await until(lambda: daemon.live.health_of("b").label(2, 3) == "down", what="b to fall")
        base = daemon.url
        fetched = await asyncio.gather(*(asyncio.to_thread(get, base + path) for path in ("api/status", "metrics", "healthz", "")))
        return fetched

    (s_code, s_type, s_body), (m_code, m_type, m_body), (h_code, _, h_body), (p_code, p_type, page) = serving(daemon, body)
    assert s_code == 200 and "json" in s_type
    status = json.loads(s_body)
    with sqlite3.connect(db_path) as conn:
        name, url = conn.execute("select name, url from decisions order by id desc limit 1").fetchone()
        a_samples = conn.execute("select count(*) from samples s join lines l on l.id = s.line_id where l.name = 'a'").fetchone()[0]
    assert status["chosen"] == {"name": name, "url": url}
    lines = {line["name"]: line for line in status["lines"]}
    assert lines["a"]["healthy"] and lines["a"]["state"] == "up"
    assert lines["b"]["state"] == "down" and lines["b"]["last_outcome"] == "not_api"
    assert lines["a"]["samples_in_window"] <= a_samples

    assert m_code == 200 and m_type.startswith("text/plain")
    families = {family.name: family for family in text_string_to_metric_families(m_body)}
    values = {(f.name, tuple(sorted(s.labels.items()))): s.value for f in families.values() for s in f.samples}
    relay = ("relay", "default")  # the one relay of a config with top-level lines:
    assert values[("linepicker_line_chosen", (("line", "a"), relay))] == 1
    assert values[("linepicker_line_chosen", (("line", "b"), relay))] == 0
    assert values[("linepicker_line_up", (("line", "b"), relay))] == 0
    assert values[("linepicker_line_success_ratio", (("line", "a"), relay))] == 1
    assert values[("linepicker_line_phase_seconds", (("line", "a"), ("phase", "ttfb"), relay))] > 0.004
    assert families["linepicker_rounds"].type == "counter"
    assert "linepicker_last_round_timestamp_seconds" in families

    assert (h_code, h_body.strip()) == (200, "ok")
    assert p_code == 200 and "text/html" in p_type
    assert "<svg" in page and ">a<" in page and ">b<" in page


def test_sighup_reload_keeps_the_old_config_when_the_new_one_is_broken(relay: Relay, write_config, db_path: Path) -> None:
    config = write_config({"a": relay.url("a")}, probe=FAST)
    daemon = make_daemon(config, db_path)

    async def body() -> None:
        await until(lambda: chosen(daemon) == "a", what="a first choice")
        good = config.read_text()
        config.write_text("lines: [oops\n")
        await daemon.reload()
        assert [line.name for line in daemon.live.config.lines] == ["a"]
        config.write_text(good.replace("lines:", f"lines:\n- name: b\n  url: {relay.url('b')}", 1))
        await daemon.reload()
        assert [line.name for line in daemon.live.config.lines] == ["b", "a"]
        await until(lambda: "b" in daemon.live.health, what="the new line to be probed")

    serving(daemon, body)


def start_daemon_process(config: Path, db: Path, *extra: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if "PROXY" not in k.upper()}
    return subprocess.Popen(
        [sys.executable, "-m", "linepicker", "daemon", "--config", str(config), "--db", str(db), *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )


def wait_for_rounds(db: Path, count: int, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with sqlite3.connect(db) as conn:
                if conn.execute("select count(*) from rounds").fetchone()[0] >= count:
                    return
        except sqlite3.OperationalError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"fewer than {count} rounds in {timeout}s")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_the_daemon_cleanly_even_mid_round(relay: Relay, write_config, db_path: Path, sig: signal.Signals) -> None:
    config = write_config({"a": relay.url("a"), "slow": relay.url("slow", mode="hang")}, probe={**FAST, "timeout": 30})
    process = start_daemon_process(config, db_path, "--listen", "off")
    try:
        wait_for_rounds(db_path, 1)
        time.sleep(0.3)  # the round is now waiting on the hanging line
        started = time.monotonic()
        process.send_signal(sig)
        _, err = process.communicate(timeout=10)
        took = time.monotonic() - started
    finally:
        process.kill()
    assert process.returncode == 0, err
    assert took < 6, f"took {took:.1f}s to stop"
    assert "Traceback" not in err
    assert "daemon stopped" in err
    with sqlite3.connect(db_path) as conn:
        assert conn.execute("select count(*) from rounds where finished_at is null").fetchone()[0] == 0
        assert conn.execute("pragma integrity_check").fetchone()[0] == "ok"


def test_sighup_reloads_the_config_of_a_running_daemon(relay: Relay, write_config, db_path: Path) -> None:
    config = write_config({"a": relay.url("a")}, probe=FAST)
    process = start_daemon_process(config, db_path, "--listen", "off")
    try:
        wait_for_rounds(db_path, 1)
        good = config.read_text()
        config.write_text("lines: {broken\n")
        process.send_signal(signal.SIGHUP)
        time.sleep(0.5)
        config.write_text(good.replace("lines:", f"lines:\n- name: b\n  url: {relay.url('b')}", 1))
        process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while not relay.requests["b"] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert process.poll() is None, "a broken config must not stop the daemon"
    finally:
        process.terminate()
        _, err = process.communicate(timeout=10)
    assert relay.requests["b"], "the line added by the reload is probed"
    assert "config reload failed, keeping the running config" in err and "lines.yaml:" in err
    assert "config reloaded" in err and "2 lines" in err


def test_a_second_daemon_on_the_same_database_is_refused(relay: Relay, write_config, db_path: Path, run) -> None:
    config = write_config({"a": relay.url("a")}, probe=FAST)
    first = start_daemon_process(config, db_path, "--listen", "off")
    try:
        wait_for_rounds(db_path, 1)
        second = start_daemon_process(config, db_path, "--listen", "off")
        _, err = second.communicate(timeout=15)
        assert second.returncode == 1
        assert err.strip().splitlines()[-1] == f"linepicker: error: another linepicker daemon (pid {first.pid}) is already running on {db_path}"
        # The one-shot commands keep working beside it.
        assert run("pick", "--config", str(config)).exit_code == 0
        assert run("status", "--config", str(config)).exit_code == 0
        assert run("env").exit_code == 0
    finally:
        first.terminate()
        first.communicate(timeout=10)


@pytest.mark.parametrize("alias", ["file-symlink", "dir-symlink"])
def test_a_second_daemon_through_a_symlinked_path_is_refused(relay: Relay, write_config, db_path: Path, tmp_path: Path, alias: str) -> None:
    config = write_config({"a": relay.url("a")}, probe=FAST)
    first = start_daemon_process(config, db_path, "--listen", "off")
    second = None
    if alias == "file-symlink":
        other = tmp_path / "elsewhere.db"
        other.symlink_to(db_path)
    else:
        (tmp_path / "state-link").symlink_to(db_path.parent)
        other = tmp_path / "state-link" / db_path.name
    try:
        wait_for_rounds(db_path, 1)
        second = start_daemon_process(config, other, "--listen", "off")
        _, err = second.communicate(timeout=15)
        assert second.returncode == 1, err
        assert err.strip().splitlines()[-1] == f"linepicker: error: another linepicker daemon (pid {first.pid}) is already running on {other}"
    finally:
        if second is not None and second.poll() is None:
            second.terminate()
        first.terminate()
        first.communicate(timeout=10)


@pytest.mark.parametrize("listen", ["127.0.0.1:http", "127.0.0.1:\u00b2", "127.0.0.1:" + "9" * 5000, "127.0.0.1:65536", "127.0.0.1:-1"])
@pytest.mark.parametrize("command", [["daemon"], ["service", "install"]])
def test_the_listen_address_is_checked(write_config, relay: Relay, run, listen: str, command: list[str]) -> None:
    config = write_config({"a": relay.url("a")})
    result = run(*command, "--config", str(config), "--listen", listen)
    assert result.exit_code == 2
    assert "expected HOST:PORT" in result.stderr


def test_a_port_in_use_is_one_line_not_a_traceback(write_config, relay: Relay, db_path: Path) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        process = start_daemon_process(write_config({"a": relay.url("a")}, probe=FAST), db_path, "--listen", f"127.0.0.1:{port}")
        _, err = process.communicate(timeout=15)
    assert process.returncode == 2
    assert "Traceback" not in err
    assert f"127.0.0.1:{port}: cannot bind" in err


def test_binding_beyond_loopback_is_warned_about(write_config, relay: Relay, db_path: Path) -> None:
    process = start_daemon_process(write_config({"a": relay.url("a")}, probe=FAST), db_path, "--listen", "0.0.0.0:0")
    try:
        wait_for_rounds(db_path, 1)
    finally:
        process.terminate()
        _, err = process.communicate(timeout=10)
    assert "not loopback" in err


def test_service_install_writes_a_unit_that_runs_this_daemon(write_config, relay: Relay, run, tmp_path: Path) -> None:
    config = write_config({"a": relay.url("a")})
    result = run("service", "install", "--config", str(config), "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    unit = Path(data["path"])
    assert unit == tmp_path / "xdg-config" / "systemd" / "user" / "linepicker.service"
    text = unit.read_text()
    assert f'"-m" "linepicker" "daemon" "--config" "{config}" "--db" ' in text
    assert "network-online" not in text, "a user manager has no network-online.target: After= on it does nothing"
    assert "EnvironmentFile=-" in text and "OPENAI_API_KEY" not in text
    assert any("systemctl --user enable --now linepicker" in step for step in data["next_steps"])
    assert json.loads(run("service", "install", "--config", str(config), "--json").stdout)["changed"] is False
    assert json.loads(run("service", "uninstall", "--json", db=None).stdout) == {"removed": str(unit)}
    assert not unit.exists()
    assert run("service", "uninstall", db=None).stdout.startswith("no linepicker service file")


def test_service_install_refuses_the_bundled_config(run, tmp_path: Path) -> None:
    result = run("service", "install")
    assert result.exit_code == 2
    assert "run 'linepicker init' first" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "xdg-config" / "systemd").exists()


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze reads the unit as systemd would")
def test_a_unit_for_paths_with_percent_dollar_quotes_and_spaces_is_read_back_by_systemd(relay: Relay, run, tmp_path: Path) -> None:
    """systemd expands %-specifiers and $VARIABLES in ExecStart even inside quotes: '%z' is no specifier, so an unescaped one fails."""
    odd = tmp_path / 'my %z $HOME "relay" dir'
    odd.mkdir()
    config = odd / "lines.yaml"
    config.write_text(f"lines:\n  - name: a\n    url: {relay.url('a')}\n")
    result = run("service", "install", "--config", str(config), "--json", db=odd / "lp.db")
    assert result.exit_code == 0, result.output
    unit = Path(json.loads(result.stdout)["path"])
    text = unit.read_text()
    escaped = str(odd).replace("%", "%%").replace("$", "$$").replace('"', '\\"')
    assert f'"--config" "{escaped}/lines.yaml" "--db" "{escaped}/lp.db"' in text
    assert f"EnvironmentFile=-{str(odd).replace('%', '%%')}/linepicker.env" in text
    verified = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)
    assert verified.returncode == 0, verified.stderr
    assert "specifier" not in verified.stderr


def test_the_status_page_in_a_real_browser(relay: Relay, write_config, db_path: Path) -> None:
    from browser import rendered_dom, screenshot

    config = write_config(
        [
            {"name": "a", "url": relay.url("a", delay_ms=40)},
            {"name": "b", "url": relay.url("b", delay_ms=120), "insecure": True},
            {"name": "c", "url": relay.url("c", mode="block")},
        ],
        probe={**FAST, "interval": 5},
    )
    daemon = make_daemon(config, db_path, Listen("127.0.0.1", 0))
    seed_history(daemon.store, config)

    async def body() -> tuple[str, Path]:
        await until(lambda: chosen(daemon) == "a" and daemon.url is not None, what="a first choice")
        await until(lambda: daemon.live.health_of("c").label(2, 3) != "up", what="c to fail")
        dom = await asyncio.to_thread(rendered_dom, daemon.url)
        shot = await asyncio.to_thread(screenshot, daemon.url, "status-page.png")
        return dom, shot

    dom, shot = serving(daemon, body)
    from html.parser import HTMLParser

    class Cards(HTMLParser):
        """Collects each card's line name and badges, and counts the charts."""

        def __init__(self) -> None:
            super().__init__()
            self.names: list[str] = []
            self.chosen: list[str] = []
            self.charts = 0
            self._in: str | None = None

        def handle_starttag(self, tag: str, attrs: list) -> None:
            classes = dict(attrs).get("class", "") or ""
            if tag == "h3":
                self._in = "name"
            elif tag == "span" and "badge chosen" in classes:
                self.chosen.append(self.names[-1])
            elif tag == "svg" and "chart" in classes:
                self.charts += 1

        def handle_data(self, data: str) -> None:
            if self._in == "name":
                self.names.append(data.strip())
                self._in = None

    cards = Cards()
    cards.feed(dom)
    assert cards.names == ["a", "b", "c"]
    assert cards.chosen == ["a"]
    assert cards.charts == 3
    assert "Chosen line" in dom and "not_api" in dom
    assert dom.count("certificate NOT checked") == 1, "the insecure line is marked on the page"
    assert "all " in dom and "samples failed" in dom, "c's outage shows as failed buckets in its chart"
    assert shot.stat().st_size > 10_000


# ---------------------------------------------------------------- what the log says, and how often


def overlapping_daemon_log(relay: Relay, write_config, db_path: Path, rounds: int) -> str:
    """A daemon at debug level whose rounds take longer than probe.interval (a line hangs to the 1 s timeout)."""
    config = write_config({"a": relay.url("a") + "/v1", "slow": relay.url("slow", mode="hang")}, probe=FAST)
    process = start_daemon_process(config, db_path, "--listen", "off", "--log-level", "debug")
    try:
        wait_for_rounds(db_path, rounds, timeout=30)
        process.send_signal(signal.SIGHUP)  # a reload of the same file says nothing new about it
        time.sleep(0.5)
    finally:
        process.terminate()
        _, err = process.communicate(timeout=10)
    assert process.returncode == 0, err
    return err


def test_an_overlapping_round_is_said_once_in_linepicker_s_words(relay: Relay, write_config, db_path: Path) -> None:
    err = overlapping_daemon_log(relay, write_config, db_path, rounds=4)

    assert err.count("round skipped: the previous one is still running") == 1, err
    assert "maximum number of running instances" not in err and "Daemon._job" not in err
    assert "executed successfully" not in err and "Running job" not in err and "Looking for jobs" not in err
    assert "DEBUG daemon round 1 on a, slow: " in err, "debug still shows every round"
    [note] = [line for line in err.splitlines() if "ends in /v1" in line]
    assert " INFO config: " in note, "said once at start, as information: the config is valid"


def test_the_scheduler_s_own_log_is_there_on_request(relay: Relay, write_config, db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LINEPICKER_DEBUG_SCHEDULER", "1")
    err = overlapping_daemon_log(relay, write_config, db_path, rounds=2)
    assert "executed successfully" in err and "maximum number of running instances" in err


def test_the_daemon_logs_what_keeps_a_client_off_the_file_it_wrote(
    relay: Relay, write_config, db_path: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    codex = tmp_path / "config.toml"
    codex.write_text('model_provider = "other"\n')
    config = write_config({"a": relay.url("a")}, probe=FAST, targets={"codex": str(codex)})
    daemon = make_daemon(config, db_path)
    caplog.set_level("INFO", logger="linepicker")

    serving(daemon, lambda: until(lambda: chosen(daemon) == "a", what="a first choice"))

    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("Codex uses model_provider = 'other'" in message and f"{codex}:1" in message for message in warnings), warnings


def test_a_skip_is_said_again_only_after_a_calm_spell(caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """APScheduler's own events, as its scheduler sends them; the calm spell shortened from 10 minutes."""
    import datetime as dt

    from apscheduler.events import EVENT_JOB_MAX_INSTANCES, EVENT_JOB_MISSED, JobExecutionEvent, JobSubmissionEvent

    from linepicker.daemon.runner import SchedulerLog

    monkeypatch.setattr(SchedulerLog, "CALM_S", 0.3)
    said = SchedulerLog()
    caplog.set_level("WARNING", logger="linepicker")
    now = dt.datetime.now(dt.timezone.utc)
    for _ in range(3):
        said(JobSubmissionEvent(EVENT_JOB_MAX_INSTANCES, "round", "default", [now]))
        said(JobSubmissionEvent(EVENT_JOB_MAX_INSTANCES, "recheck", "default", [now]))
    time.sleep(0.4)
    said(JobSubmissionEvent(EVENT_JOB_MAX_INSTANCES, "round", "default", [now]))
    said(JobExecutionEvent(EVENT_JOB_MISSED, "retention", "default", now))

    messages = [record.getMessage() for record in caplog.records]
    assert len(messages) == 4, messages
    assert messages[0].startswith("round skipped: the previous one is still running (said again only after 0.3s without a skip)")
    assert messages[1].startswith("recheck skipped: the previous one is still running")
    assert messages[2].endswith("; 2 more runs skipped after this was last said)")
    assert messages[3].startswith(f"retention skipped: it was due at {now:%H:%M:%S} UTC and could not start in time")


def test_a_settings_file_with_a_lone_surrogate_fails_alone_and_on_switch_still_runs(relay: Relay, write_config, db_path: Path, tmp_path: Path) -> None:
    """A lone surrogate escape ("\\ud83d") once escaped write_targets as a UnicodeEncodeError: later targets and on_switch were skipped."""
    hook_out = tmp_path / "hook.txt"
    settings = tmp_path / "settings.json"
    settings.write_bytes(b'{"note": "\\ud83d", "env": {}}')
    later = tmp_path / "later.env"
    config = write_config(
        {"a": relay.url("a")},
        probe=FAST,
        targets={"claude_settings": str(settings), "template": [{"path": str(later), "template": "URL={url}\n"}]},
        on_switch=[sys.executable, "-c", f"open({str(hook_out)!r}, 'w').write('ran')"],
    )
    daemon = make_daemon(config, db_path)

    async def body() -> None:
        await until(lambda: hook_out.exists(), what="on_switch")

    serving(daemon, body)
    assert later.read_text() == f"URL={relay.base}/line/a\n"
    assert settings.read_bytes() == b'{"note": "\\ud83d", "env": {}}'
