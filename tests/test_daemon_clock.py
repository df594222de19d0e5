"""The daemon's pace and /healthz when the wall clock is stepped (NTP at boot, a suspended VM, a user with `date -s`).

The machine's clock is never touched: a real daemon process runs under
libfaketime (LD_PRELOAD), whose offset is read from a file the test rewrites,
so only that process sees its wall clock stepped; its monotonic clock stays
true (FAKETIME_DONT_FAKE_MONOTONIC). Staleness is also checked in-process with
a clock of the test's own.
"""

from __future__ import annotations

import asyncio
import os
import re
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from contextlib import closing
from pathlib import Path

import pytest

from linepicker.config import Listen, load_config
from linepicker.daemon.runner import Daemon
from linepicker.store import Store
from servers import Relay

FAKETIME_LIBS = [Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1"), Path("/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1"), Path("/usr/lib/faketime/libfaketime.so.1")]
FAKETIME = next((path for path in FAKETIME_LIBS if path.exists()), None)
FAST = {"timeout": 1, "samples": 1, "interval": 0.3, "down_interval": 0.3}


def healthz(port: int) -> tuple[int, str]:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(f"GET /healthz HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(4096):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body.decode()


def rounds_in(db: Path) -> int:
    with closing(sqlite3.connect(db)) as conn:
        return conn.execute("select count(*) from rounds where finished_at is not null").fetchone()[0]


@pytest.mark.skipif(FAKETIME is None, reason="libfaketime is not installed (.ci/run installs it)")
@pytest.mark.parametrize("step", ["-3600s", "+3600s"])
def test_stepping_the_wall_clock_neither_stops_the_rounds_nor_fools_healthz(relay: Relay, write_config, tmp_path: Path, step: str) -> None:
    """Issue 11 item 19: stepped back an hour, the daemon ran no round for an hour while /healthz said ok."""
    config = write_config({"a": relay.url("a")}, probe=FAST)
    db = tmp_path / "lp.db"
    offset = tmp_path / "faketime"
    offset.write_text("+0s\n")
    env = {k: v for k, v in os.environ.items() if "PROXY" not in k.upper()}
    env.update(LD_PRELOAD=str(FAKETIME), FAKETIME_TIMESTAMP_FILE=str(offset), FAKETIME_NO_CACHE="1", FAKETIME_DONT_FAKE_MONOTONIC="1")
    process = subprocess.Popen(
        [sys.executable, "-m", "linepicker", "daemon", "--config", str(config), "--db", str(db), "--listen", "127.0.0.1:0"],
        stderr=subprocess.PIPE, env=env,
    )
    log: list[bytes] = []
    threading.Thread(target=lambda: log.extend(iter(process.stderr.readline, b"")), daemon=True).start()  # type: ignore[union-attr]
    try:
        deadline = time.monotonic() + 20
        while not (found := re.search(rb"status page http://127\.0\.0\.1:(\d+)/", b"".join(log))) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert found, b"".join(log).decode(errors="replace")
        port = int(found.group(1))
        time.sleep(1.5)
        before = rounds_in(db)
        offset.write_text(step + "\n")
        answers = []
        for _ in range(25):  # 5 s, the health endpoint asked five times a second
            answers.append(healthz(port))
            time.sleep(0.2)
        after = rounds_in(db)
    finally:
        process.terminate()
        process.wait(timeout=10)
    text = b"".join(log).decode(errors="replace")
    assert after - before >= 8, f"{after - before} rounds in the 5 s after the step (one every 0.3 s before it)\n{text}"
    assert all(answer == (200, "ok\n") for answer in answers), [a for a in answers if a[0] != 200][:3]
    assert text.count("the wall clock was stepped") == 1 and "Traceback" not in text, text


def test_healthz_turns_503_when_rounds_stop_whatever_the_wall_clock_says(relay: Relay, write_config, db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Staleness is measured on the daemon's monotonic clock (here one the test moves), never on the wall clock."""
    config = write_config({"a": relay.url("a")}, probe=FAST)
    daemon = Daemon(load_config(config), Store(db_path), Listen("127.0.0.1", 0))
    ahead = [0.0]
    daemon.live.clock = lambda: time.monotonic() + ahead[0]

    async def main() -> list[tuple[int, str]]:
        task = asyncio.ensure_future(daemon.serve())
        try:
            while not daemon.live.rounds or daemon.url is None:
                await asyncio.sleep(0.05)
            port = int(daemon.url.rsplit(":", 1)[1].strip("/"))
            seen = [await asyncio.to_thread(healthz, port)]
            assert daemon._scheduler is not None
            daemon._scheduler.pause()  # the rounds stop
            await asyncio.sleep(0.5)  # a round in flight finishes
            real = time.time
            monkeypatch.setattr(time, "time", lambda: real() - 3600)  # and the wall clock says it is an hour earlier
            ahead[0] = 3 * 0.3 + 1 + 1  # past three intervals and one round's worth of timeouts
            seen.append(await asyncio.to_thread(healthz, port))
            return seen
        finally:
            daemon.stop("test over")
            await asyncio.wait_for(task, 10)
            daemon.store.close()

    running, stopped = asyncio.run(main())
    assert running == (200, "ok\n")
    assert stopped[0] == 503 and stopped[1].startswith("stale: no round finished in the last 3 s"), stopped
