"""The daemon's HTTP side under requests no browser of the user's would send: foreign Host and Origin
values, and clients that connect and hold on (silent, half-sent, dripping, never reading).

Requests are written byte by byte on raw sockets to a running daemon on
127.0.0.1, so every header is exactly what a DNS-rebinding page or a
misbehaving client would send.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import resource
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Awaitable, Callable

import pytest

from linepicker.config import Listen, load_config
from linepicker.daemon.guard import refusal
from linepicker.daemon.runner import Daemon
from linepicker.store import Store
from servers import Relay

FAST = {"timeout": 1, "samples": 1, "interval": 0.3, "down_interval": 0.15}


def serving(daemon: Daemon, body: Callable[[], Awaitable[Any]]) -> Any:
    async def main() -> Any:
        task = asyncio.ensure_future(daemon.serve())
        try:
            deadline = time.monotonic() + 10
            while daemon.url is None and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            return await body()
        finally:
            daemon.stop("test over")
            await asyncio.wait_for(task, 10)
            daemon.store.close()

    return asyncio.run(main())


def raw_get(port: int, path: str, headers: dict[str, str], version: str = "HTTP/1.1", timeout: float = 5) -> tuple[int, str]:
    """Send exactly these headers; the status code and body of the answer."""
    head = f"GET {path} {version}\r\n" + "".join(f"{name}: {value}\r\n" for name, value in headers.items()) + "Connection: close\r\n\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(head.encode("latin-1"))
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    status_line, _, rest = data.partition(b"\r\n")
    return int(status_line.split()[1]), rest.partition(b"\r\n\r\n")[2].decode(errors="replace")


def start_daemon_process(config: Path, db: Path, open_files: int) -> tuple[subprocess.Popen, int, list[bytes]]:
    """A real daemon under an open-file limit; its process, HTTP port and (growing) log."""
    env = {k: v for k, v in os.environ.items() if "PROXY" not in k.upper()}
    limit = lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (open_files, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))  # noqa: E731
    process = subprocess.Popen(
        [sys.executable, "-m", "linepicker", "daemon", "--config", str(config), "--db", str(db), "--listen", "127.0.0.1:0"],
        stderr=subprocess.PIPE, env=env, preexec_fn=limit,
    )
    log: list[bytes] = []
    threading.Thread(target=lambda: log.extend(iter(process.stderr.readline, b"")), daemon=True).start()  # type: ignore[union-attr]
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        found = re.search(rb"status page http://127\.0\.0\.1:(\d+)/", b"".join(log))
        if found:
            return process, int(found.group(1)), log
        time.sleep(0.05)
    process.kill()
    raise AssertionError(b"".join(log).decode(errors="replace"))


@pytest.fixture
def daemon(relay: Relay, write_config, db_path: Path) -> Daemon:
    config = write_config({"a": relay.url("a")}, probe=FAST)
    return Daemon(load_config(config), Store(db_path), Listen("127.0.0.1", 0))


PATHS = ["/", "/api/status", "/metrics", "/healthz"]


def test_only_requests_naming_the_daemon_are_answered(daemon: Daemon) -> None:
    """Issue 11 item 10: a DNS-rebinding page (Host: its own name, resolved to 127.0.0.1) read /api/status."""

    async def body() -> dict[tuple[str, str], tuple[int, str]]:
        port = int(daemon.url.rsplit(":", 1)[1].strip("/"))  # type: ignore[union-attr]
        await asyncio.sleep(0.5)  # a round, so that /healthz is not stale
        cases = {
            "rebinding name": {"Host": f"rebind.attacker.example:{port}"},
            "rebinding name, no port": {"Host": "rebind.attacker.example"},
            "loopback, wrong port": {"Host": "127.0.0.1:1"},
            "loopback, no port (80)": {"Host": "127.0.0.1"},
            "another address": {"Host": f"10.1.2.3:{port}"},
            "malformed": {"Host": f"a b:{port}"},
            "foreign page": {"Host": f"127.0.0.1:{port}", "Origin": "https://attacker.example"},
            "sandboxed page": {"Host": f"127.0.0.1:{port}", "Origin": "null"},
            "listen address": {"Host": f"127.0.0.1:{port}"},
            "localhost": {"Host": f"localhost:{port}"},
            "localhost with the root dot": {"Host": f"localhost.:{port}"},
            "IPv6 loopback": {"Host": f"[::1]:{port}"},
            "HTTP/1.0 without Host": {},
            "own page": {"Host": f"127.0.0.1:{port}", "Origin": f"http://127.0.0.1:{port}"},
            "local page": {"Host": f"localhost:{port}", "Origin": "http://localhost:3000"},
        }
        answers = {}
        for name, headers in cases.items():
            for path in PATHS:
                version = "HTTP/1.0" if not headers else "HTTP/1.1"
                answers[name, path] = await asyncio.to_thread(raw_get, port, path, headers, version)
        return answers

    answers = serving(daemon, body)
    refused = {"rebinding name", "rebinding name, no port", "loopback, wrong port", "loopback, no port (80)", "another address", "malformed", "foreign page", "sandboxed page"}
    for (case, path), (status, text) in answers.items():
        if case in refused:
            assert status == 403, (case, path, status, text[:200])
            assert text.startswith("forbidden: ") and text.count("\n") == 1, (case, text)
            assert '"lines"' not in text and "linepicker_" not in text
        else:
            assert status == 200, (case, path, status, text[:200])


@pytest.mark.parametrize(
    "listen, host, origin, answered",
    [
        (Listen("0.0.0.0", 9137), "192.168.1.5:9137", None, True),  # every address is the listen address
        (Listen("0.0.0.0", 9137), "evil.example:9137", None, False),
        (Listen("192.168.1.5", 9137), "192.168.1.5:9137", "http://192.168.1.5:9137", True),
        (Listen("192.168.1.5", 9137), "192.168.1.6:9137", None, False),
        (Listen("box.lan", 9137), "BOX.LAN:9137", None, True),
        (Listen("127.0.0.1", 9137), "127.0.0.1:9137", "http://127.0.0.1.attacker.example", False),
        (Listen("127.0.0.1", 9137), "127.0.0.1:9137", "http://user@localhost", False),  # an Origin never has userinfo
    ],
)
def test_the_listen_address_and_loopback_names_are_what_is_answered(listen: Listen, host: str, origin: str | None, answered: bool) -> None:
    assert (refusal(listen, host, origin, 9137) is None) is answered


# ---------------------------------------------------------------- clients that hold connections: issue 11 item 18


def hostile(port: int, kind: str) -> socket.socket:
    """A connection that never completes a request in time: silent, half a head, or a body announced and not sent."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    if kind == "half a request head":
        sock.sendall(f"GET /api/status HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n".encode())
    elif kind == "a head dripped a byte a second":
        sock.sendall(b"G")
    elif kind == "a body announced, never sent":
        sock.sendall(f"POST /api/status HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 100000\r\n\r\nx".encode())
    return sock


def closed_after(sock: socket.socket, started: float, limit: float, drip: bool) -> float | None:
    """Seconds until the daemon closed the connection (read everything it sent first), None if not within `limit`."""
    sock.settimeout(1.0)
    while time.monotonic() - started < limit:
        try:
            if drip:
                sock.sendall(b"E")
            if not sock.recv(65536):
                return time.monotonic() - started
        except socket.timeout:
            continue
        except OSError:
            return time.monotonic() - started
    return None


KINDS = ["silent", "half a request head", "a head dripped a byte a second", "a body announced, never sent"]


@pytest.mark.parametrize("kind", KINDS)
def test_a_connection_that_does_not_finish_its_request_is_closed(relay: Relay, write_config, tmp_path: Path, kind: str) -> None:
    """aiohttp kept every one of these open for an hour (its keep-alive timeout), each holding a descriptor."""
    from linepicker.daemon.listener import BODY_S, IDLE_S

    config = write_config({"a": relay.url("a")}, probe={**FAST, "interval": 5})
    process, port, log = start_daemon_process(config, tmp_path / "lp.db", 256)
    try:
        started = time.monotonic()
        connections = [hostile(port, kind) for _ in range(5)]
        waits = [closed_after(sock, started, IDLE_S + 5, kind.startswith("a head dripped")) for sock in connections]
    finally:
        process.terminate()
        process.wait(timeout=10)
    bound = BODY_S if kind.startswith("a body") else IDLE_S
    assert all(wait is not None and wait < bound + 3 for wait in waits), f"{kind}: closed after {waits} s (bound {bound} s)"


def test_hundreds_of_idle_connections_under_a_low_file_limit_cost_the_probes_nothing(relay: Relay, write_config, tmp_path: Path) -> None:
    """300 silent, half-sent and dripping connections under `ulimit -n 256` made 570 of 600 samples
    `unreachable: Too many open files`, every line down, and 41 MB of tracebacks in 25 s."""
    from linepicker.daemon.listener import IDLE_S

    config = write_config({f"l{n}": relay.url(f"l{n}", delay_ms=20) for n in range(8)}, probe={"timeout": 2, "samples": 3, "interval": 0.5, "down_interval": 0.5})
    db = tmp_path / "lp.db"
    process, port, log = start_daemon_process(config, db, 256)
    try:
        started = time.time()
        held = []
        for n in range(300):
            with contextlib.suppress(OSError):
                held.append(hostile(port, KINDS[n % 3]))
        during = raw_get(port, "/healthz", {"Host": f"127.0.0.1:{port}"})  # takes the place of a connection that sent no request
        time.sleep(IDLE_S + 2)  # every one of them past its deadline
        status, text = raw_get(port, "/healthz", {"Host": f"127.0.0.1:{port}"})
        assert process.poll() is None
    finally:
        process.terminate()
        process.wait(timeout=10)
        for sock in held:
            sock.close()
    with contextlib.closing(sqlite3.connect(db)) as conn:
        outcomes = dict(conn.execute("select outcome, count(*) from samples where started_at >= ? group by outcome", [started]).fetchall())
    assert len(held) == 300
    assert outcomes.get("ok", 0) >= 8 * 3 * 3 and set(outcomes) == {"ok"}, outcomes
    assert (status, text) == during == (200, "ok\n")
    text_log = b"".join(log).decode(errors="replace")
    assert len(text_log) < 20_000 and "Traceback" not in text_log, text_log[-3000:]


def test_clients_that_never_read_their_answers_lose_their_place(relay: Relay, write_config, tmp_path: Path) -> None:
    """Past the connection cap new clients wait in the kernel's backlog, costing no descriptor; a client
    that leaves its answers unread loses its connection after SEND_S, and the next one is answered."""
    from linepicker.daemon.listener import SEND_S

    config = write_config({"a": relay.url("a")}, probe={**FAST, "interval": 5})
    process, port, log = start_daemon_process(config, tmp_path / "lp.db", 256)  # a cap of 32 connections
    readers = []
    try:
        for _ in range(32):
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.connect(("127.0.0.1", port))
            sock.sendall(f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode() * 1000)  # answers pile up unread
            readers.append(sock)
        time.sleep(1)
        started = time.monotonic()
        status, text = raw_get(port, "/healthz", {"Host": f"127.0.0.1:{port}"}, timeout=SEND_S + 10)
        waited = time.monotonic() - started
    finally:
        process.terminate()
        process.wait(timeout=10)
        for sock in readers:
            sock.close()
    assert (status, text) == (200, "ok\n")
    assert 2 < waited < SEND_S + 5, f"answered after {waited:.1f}s: it waited its turn, until the readers that never read were cut off"
    assert "Traceback" not in b"".join(log).decode(errors="replace")


def test_probes_failing_for_want_of_descriptors_are_not_held_against_the_lines(relay: Relay, write_config, tmp_path: Path) -> None:
    """EMFILE is this machine's failure: such a sample is `local`, counts neither way, and the daemon says so once."""
    config = write_config({f"l{n}": relay.url(f"l{n}", delay_ms=200) for n in range(30)}, probe={"timeout": 2, "samples": 2, "interval": 0.5}, policy={"fall": 1})
    db = tmp_path / "lp.db"
    env = {k: v for k, v in os.environ.items() if "PROXY" not in k.upper()}
    limit = lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (20, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))  # noqa: E731
    process = subprocess.Popen([sys.executable, "-m", "linepicker", "daemon", "--config", str(config), "--db", str(db), "--listen", "off"],
                               stderr=subprocess.PIPE, text=True, env=env, preexec_fn=limit)
    time.sleep(6)
    process.terminate()
    _, log = process.communicate(timeout=15)
    with contextlib.closing(sqlite3.connect(db)) as conn:
        local = conn.execute("select count(*), count(success) from samples where outcome = 'local'").fetchone()
        rounds = conn.execute("select count(*) from rounds where kind = 'daemon'").fetchone()[0]
        error = conn.execute("select error from samples where outcome = 'local' limit 1").fetchone()
        chosen = conn.execute("select count(*) from decisions").fetchone()[0]
    assert local[0] > 0 and local[1] == 0, f"samples that hit the limit: {local[0]}, of them counted: {local[1]}"
    assert "Too many open files" in error[0] and "not the line" in error[0]
    assert rounds >= 3 and log.count("not counted against their lines") == 1, log
    assert "is down" not in log and chosen >= 1, "no line fell for this machine's shortage"
    assert "Traceback" not in log


# ---------------------------------------------------------------- web load and probe timing: issue 11 item 17

HAMMER = r"""
import http.client, sys, threading, time
port, seconds = int(sys.argv[1]), float(sys.argv[2])
def hammer():
    conn, end = http.client.HTTPConnection("127.0.0.1", port, timeout=30), time.monotonic() + seconds
    while time.monotonic() < end:
        conn.request("GET", "/", headers={"Host": f"127.0.0.1:{port}"})
        conn.getresponse().read()
threads = [threading.Thread(target=hammer) for _ in range(8)]
for t in threads: t.start()
for t in threads: t.join()
"""


def test_eight_clients_reloading_the_page_do_not_move_the_probes_timing(relay: Relay, write_config, tmp_path: Path) -> None:
    """Each page load cost ~100 ms of the loop the probes are timed on (10 lines, a day of samples): 8 clients
    reloading it moved a 50 ms line's ttfb to 789 ms. bench/bench_web.py measures it finely (< 2 ms)."""
    from linepicker.probe.phases import Phases
    from linepicker.probe.sample import Sample

    config = write_config({f"l{n}": relay.url(f"l{n}", delay_ms=50) for n in range(10)}, probe={"timeout": 5, "samples": 3, "interval": 1})
    db = tmp_path / "lp.db"
    store = Store(db)
    ids = store.line_ids(load_config(config).active_lines)
    now = time.time()
    for minute in range(24 * 60, 0, -1):  # a day at a daemon's pace, for the page's charts
        store.add_samples(store.start_round("daemon"), ids, [Sample(f"l{n}", k, now - minute * 60 + k, "ok", True, Phases(ttfb_ms=50.0)) for n in range(10) for k in range(3)])
    store.close()
    process, port, log = start_daemon_process(config, db, 4096)
    try:
        time.sleep(2)
        quiet_from = time.time()
        time.sleep(6)
        loaded_from = time.time()
        subprocess.run([sys.executable, "-c", HAMMER, str(port), "6"], check=True, timeout=60)
        loaded_to = time.time()
        first = raw_get(port, "/api/status", {"Host": f"127.0.0.1:{port}"})[1]
        time.sleep(2.5)
        second = raw_get(port, "/api/status", {"Host": f"127.0.0.1:{port}"})[1]
    finally:
        process.terminate()
        process.wait(timeout=10)

    def ttfb(since: float, until: float) -> list[float]:
        with contextlib.closing(sqlite3.connect(db)) as conn:
            rows = conn.execute("select ttfb_ms from samples where started_at >= ? and started_at < ? and outcome = 'ok'", [since, until]).fetchall()
        return sorted(row[0] for row in rows)

    quiet, loaded = ttfb(quiet_from, loaded_from), ttfb(loaded_from, loaded_to)
    shift = loaded[len(loaded) // 2] - quiet[len(quiet) // 2]
    assert len(loaded) >= 0.7 * len(quiet), f"rounds went on under load: {len(loaded)} samples against {len(quiet)}"
    assert shift < 15, f"median ttfb {quiet[len(quiet) // 2]:.1f} ms quiet, {loaded[len(loaded) // 2]:.1f} ms while the page was reloaded"
    rounds = [sum(json.loads(body)["daemon"]["rounds"].values()) for body in (first, second)]
    assert rounds[1] > rounds[0], "what is served follows the rounds"
