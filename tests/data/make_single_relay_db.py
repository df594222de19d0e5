"""Writes tests/data/single_relay.db: a database as linepicker wrote it before relays (migrations 0001-0004).

Run it with an older linepicker first on the path, so the file is that release's own work:

    git -C . archive 4648f51 | tar -x -C /tmp/lp-old
    PYTHONPATH=/tmp/lp-old:tests python tests/data/make_single_relay_db.py tests/data/single_relay.db

It picks against two loopback lines (a fast, b slow), rolls the first picks into hourly rows as
retention would two days later, picks again, and pins b: lines, rounds, samples, hourly rows,
decisions and a pin, for the migration test to find again in relay `default`.
"""

from __future__ import annotations

import sqlite3
import sys
import tempfile
import time
from pathlib import Path

import yaml
from click.testing import CliRunner

import linepicker.store
from linepicker.cli import cli
from linepicker.store import Store
from servers import ServerThread

out = Path(sys.argv[1])
assert [name for name, _ in linepicker.store.MIGRATIONS] == ["0001_initial", "0002_hourly", "0003_samples_by_round", "0004_chats"], "run with the old release"
server = ServerThread()
relay = server.start_relay()
with tempfile.TemporaryDirectory() as tmp:
    config = Path(tmp) / "lines.yaml"
    lines = [{"name": "a", "url": relay.url("a", delay_ms=5)}, {"name": "b", "url": relay.url("b", delay_ms=40)}]
    config.write_text(yaml.safe_dump({"probe": {"samples": 2, "timeout": 2}, "lines": lines}))
    db = Path(tmp) / "linepicker.db"

    def run(*args: str) -> None:
        result = CliRunner().invoke(cli, [*args, "--config", str(config), "--db", str(db)], catch_exceptions=False)
        assert result.exit_code == 0, result.output

    for _ in range(3):
        run("pick")
    with Store(db) as store:
        store.db.execute("update samples set started_at = started_at - 2 * 86400")
        store.db.execute("update rounds set started_at = started_at - 2 * 86400, finished_at = finished_at - 2 * 86400")
        store.conn.commit()
        store.roll_up(time.time() - 86400)
    for _ in range(2):
        run("pick")
    run("pin", "b")
    with sqlite3.connect(db) as conn:
        conn.execute("pragma wal_checkpoint(truncate)")
        conn.execute("pragma journal_mode=delete")
    out.write_bytes(db.read_bytes())
server.stop()
print(f"wrote {out}")
