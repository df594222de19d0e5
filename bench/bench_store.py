"""Store: 10 million samples, then the policy query and `linepicker status` against them.

The file is shaped like the heaviest case of the issue: 1,000 lines probed once
a minute, 3 samples each (3,000 samples a minute, so 10 M samples are ~2.3 days),
3% failures. It is written by one recursive-CTE insert straight into a file in
/tmp (created through Store, so the schema and migrations are the real ones) and
deleted afterwards. Timed, as picker/status use them, each the median of several runs:

  * store.window over the policy window (15 min) for a 20-line and the 1,000-line config;
  * picker.status in-process (window + latest round + last sample + decisions);
  * `linepicker status` as a subprocess, interleaved with the same command over an
    empty database (so the database's share shows) and with the bare import of the
    libraries status needs (click, rich, yaml, sqlite3), bytecode cached as after pip install;
  * the daemon's hourly retention job over the file: roll up one hour, prune.

Targets (issue 5, #5): the policy query and status each <= 100 ms. Also reported:
bytes per sample, and the retention-bounded size for 1,000 lines once a minute,
3 samples (raw 7 days, then hourly rows for 90 days).

    python bench/run.py store
"""

from __future__ import annotations

import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

from common import Result, fmt, linepicker_exe, median, timed_run
from configs import isolated_env, write_config

from linepicker import picker
from linepicker.config import Config, load_config
from linepicker.store import Store

LINES = 1000
SAMPLES_PER_ROUND = 3
RAW_DAYS = 7
HOURLY_DAYS = 90
REPEATS = 7


def run(quick: bool = False) -> Result:
    result = Result("store", "python bench/run.py store")
    total = 30_000 if quick else 10_000_000
    repeats = 2 if quick else REPEATS
    with tempfile.TemporaryDirectory(prefix="lp-bench-store-", dir="/tmp") as tmp:
        db = Path(tmp) / "samples.db"
        now = time.time()
        started = time.perf_counter()
        generate(db, total, now)
        result.data["generate_s"] = round(time.perf_counter() - started, 1)
        size = db.stat().st_size
        per_sample = size / total
        print(f"  generated {total:,} samples in {result.data['generate_s']} s: {size / 1e6:.0f} MB, {per_sample:.1f} bytes/sample", flush=True)
        hourly_bytes = hourly_row_bytes(Path(tmp) / "hourly.db", 2_000 if quick else 200_000)
        configs = {n: write_config(Path(tmp) / f"lines{n}.yaml", {f"l{i:04d}": _url(i) for i in range(n)}) for n in ((20, 50) if quick else (20, LINES))}
        empty = Path(tmp) / "empty.db"
        Store(empty).close()
        timings = {n: time_queries(load_config(configs[n]), db, repeats) for n in configs}
        cli = {n: time_cli(configs[n], db, empty, Path(tmp) / "home", 1 if quick else REPEATS) for n in configs}
        retention = time_retention(db)
    raw_rows = LINES * SAMPLES_PER_ROUND * 1440 * RAW_DAYS
    hourly_rows = LINES * 24 * HOURLY_DAYS
    bounded = raw_rows * per_sample + hourly_rows * hourly_bytes
    result.data.update(
        samples=total, file_bytes=size, bytes_per_sample=round(per_sample, 1), hourly_row_bytes=round(hourly_bytes, 1),
        retention_bounded_bytes=int(bounded), raw_rows=raw_rows, hourly_rows=hourly_rows, queries_ms=timings, cli_s=cli,
        retention=retention,
    )
    for n in configs:
        result.check(
            f"policy query (store.window, 15 min) for {n} lines over {total:,} samples <= 100 ms",
            f"{fmt(timings[n]['window'], ' ms')} median of {repeats}",
            "the policy window holds 15 rounds of the lines' samples",
            timings[n]["window"] <= 100,
        )
        result.check(
            f"status's database work (picker.status in-process) for {n} lines over {total:,} samples <= 100 ms",
            f"{fmt(timings[n]['status'], ' ms')} median of {repeats}",
            "window + latest round + last sample per line + choice + decisions, as `linepicker status` runs them",
            timings[n]["status"] <= 100,
        )
        c = cli[n]
        result.check(
            f"`linepicker status` with {n} lines as a process <= 100 ms",
            f"{c['status'] * 1000:.0f} ms over {total:,} samples; the database's share "
            f"{(c['status'] - c['status_empty']) * 1000:+.0f} ms (same command, empty database: {c['status_empty'] * 1000:.0f} ms)",
            f"interpreter + the libraries status needs (click, rich, yaml, sqlite3), nothing run: {c['floor'] * 1000:.0f} ms",
            c["status"] * 1000 <= 100,
        )
    result.check(
        "retention: the daemon's hourly roll-up (store.roll_up, then prune_hourly) over this file",
        f"one hour of {LINES:,} lines ({retention['samples']:,} samples into {retention['hours']:,} rows, "
        f"{retention['rounds']} rounds dropped): {retention['roll_up_s']:.2f} s; prune_hourly {retention['prune_ms']:.1f} ms",
        "runs once an hour in the daemon, on its event loop",
        None,
    )
    result.check(
        "size",
        f"{per_sample:.1f} bytes/sample (indexes included), {hourly_bytes:.1f} bytes/hourly row",
        f"1,000 lines, 1/min, 3 samples: {raw_rows / 1e6:.1f} M raw + {hourly_rows / 1e6:.2f} M hourly rows = {bounded / 1e9:.2f} GB",
        None,
    )
    return result


def _url(i: int) -> str:
    return f"http://127.0.0.1:9/l{i:04d}"


def generate(db: Path, total: int, now: float) -> None:
    """Samples ending now, a round a minute, every line 3 samples a round, in one insert."""
    Store(db).close()
    per_round = LINES * SAMPLES_PER_ROUND
    rounds = -(-total // per_round)
    t0 = now - rounds * 60
    conn = sqlite3.connect(db)
    conn.execute("pragma synchronous=off")
    conn.execute("pragma cache_size=-400000")
    with conn:
        conn.executemany("insert into lines (id, name, url, first_seen) values (?, ?, ?, ?)",
                         [(i + 1, f"l{i:04d}", _url(i), t0) for i in range(LINES)])
        conn.execute(
            "with recursive r(n) as (select 0 union all select n + 1 from r where n + 1 < ?) "
            "insert into rounds (id, kind, started_at, finished_at, chosen, reason) "
            "select n + 1, 'full', ? + n * 60, ? + n * 60 + 1.5, 'l0000', 'l0000 has the best score' from r",
            [rounds, t0, t0],
        )
        conn.execute(
            "with recursive s(n) as (select 0 union all select n + 1 from s where n + 1 < ?) "
            "insert into samples (round_id, line_id, seq, started_at, outcome, success, status, error, "
            "dns_ms, connect_ms, tls_ms, ttfb_ms, transfer_ms, total_ms, key_sent) "
            "select n / :per + 1, (n / 3) % :lines + 1, n % 3, :t0 + (n / :per) * 60 + ((n / 3) % :lines) * 0.001 + (n % 3) * 0.2, "
            "case when n % 33 = 0 then 'timeout' else 'ok' end, n % 33 != 0, case when n % 33 = 0 then null else 200 end, "
            "case when n % 33 = 0 then 'no complete answer within 5s' else null end, "
            "null, 0.4 + (n % 7) * 0.01, null, case when n % 33 = 0 then null else 40 + (n * 7919 % 200) * 0.5 end, "
            "0.2, 45 + (n * 7919 % 200) * 0.5, 0 from s".replace(":per", str(per_round)).replace(":lines", str(LINES)).replace(":t0", repr(t0)),
            [total],
        )
        conn.execute("insert into decisions (decided_at, name, url, previous, reason, round_id) values (?, 'l0000', ?, null, 'l0000 has the best score', ?)",
                     [now - 30, _url(0), rounds])
    conn.close()
    Store(db).close()  # migrations a later release appends run here, not inside a timed query


def hourly_row_bytes(db: Path, rows: int) -> float:
    """Bytes per hourly roll-up row, measured the same way: a file of that many rows, divided."""
    Store(db).close()
    conn = sqlite3.connect(db)
    empty = db.stat().st_size
    with conn:
        conn.execute(
            "with recursive h(n) as (select 0 union all select n + 1 from h where n + 1 < ?) "
            "insert into hourly (line_id, hour, samples, successes, ttfb_p50_ms, ttfb_p95_ms, ttfb_min_ms, ttfb_max_ms, outcomes) "
            "select n % 1000 + 1, (n / 1000) * 3600.0, 180, 174, 88.5, 131.25, 41.0, 139.5, '{\"ok\": 174, \"timeout\": 6}' from h",
            [rows],
        )
    conn.execute("pragma wal_checkpoint(truncate)")
    conn.close()
    return (db.stat().st_size - empty) / rows


def time_queries(config: Config, db: Path, repeats: int) -> dict[str, float]:
    with Store(db) as store:
        ids = store.line_ids(config.active_lines)
        window = _median_ms(lambda: store.window(ids, time.time() - config.policy.window), repeats)
        status = _median_ms(lambda: picker.status(config, store), repeats)
    return {"window": window, "status": status}


def _median_ms(action: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        action()
        times.append((time.perf_counter() - start) * 1000)
    return round(median(times), 2)


FLOOR = "import sqlite3, click, rich.console, rich.table, yaml"


def time_cli(config: Path, db: Path, empty: Path, home: Path, repeats: int) -> dict[str, float]:
    """Interleaved: status over the big file, status over an empty one, and the import floor.

    The children cache bytecode in `home`, as an installed linepicker has it: under
    PYTHONDONTWRITEBYTECODE, a module edited since its .pyc was written would be
    compiled on every run (≈ 30 ms for the modules status imports).
    """
    exe = linepicker_exe()
    env = isolated_env(home) | {"COLUMNS": "120", "PYTHONPYCACHEPREFIX": str(home / "pycache")}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    commands = (("status", [exe, "status", "--config", str(config), "--db", str(db)]),
                ("status_empty", [exe, "status", "--config", str(config), "--db", str(empty)]),
                ("floor", [sys.executable, "-c", FLOOR]))
    for _, argv in commands:
        timed_run(argv, env=env)  # writes the bytecode cache
    walls: dict[str, list[float]] = {key: [] for key, _ in commands}
    for _ in range(repeats):
        for key, argv in commands:
            wall, proc = timed_run(argv, env=env)
            if proc.returncode not in (0, 3):
                raise RuntimeError(f"{argv[1]} exited {proc.returncode}: {proc.stderr[:300]}")
            walls[key].append(wall)
    return {key: round(median(values), 4) for key, values in walls.items()}


def time_retention(db: Path) -> dict[str, float]:
    """The daemon's hourly job at this size: fold the oldest hour of raw samples, then prune hourly rows."""
    with Store(db) as store:
        oldest = store.db.execute("select min(started_at) from samples").fetchone()[0]
        before = oldest - oldest % 3600 + 7200  # the end of the first whole hour
        started = time.perf_counter()
        rolled = store.roll_up(before)
        roll_up_s = time.perf_counter() - started
        started = time.perf_counter()
        store.prune_hourly(oldest - 86400)
        prune_ms = (time.perf_counter() - started) * 1000
    return {"samples": rolled.samples, "hours": rolled.hours, "rounds": rolled.rounds, "roll_up_s": roll_up_s, "prune_ms": prune_ms}
