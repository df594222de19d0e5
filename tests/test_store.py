"""The database: migrations, sharing, and refusing files that are not ours."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from linepicker import __version__
from linepicker.config import Line
from linepicker.errors import StoreError
from linepicker.store import MIGRATIONS, Store, read_choice


def test_migrations_run_once_and_are_recorded(tmp_path: Path) -> None:
    path = tmp_path / "lp.db"
    with Store(path):
        pass
    with Store(path) as store:
        names = [row[0] for row in store.db.execute("select name from migrations order by id")]
    assert names == [name for name, _ in MIGRATIONS]
    with sqlite3.connect(path) as conn:
        assert conn.execute("pragma journal_mode").fetchone()[0] == "wal"
        tables = {row[0] for row in conn.execute("select name from sqlite_master where type = 'table'")}
    assert {"lines", "rounds", "samples", "decisions", "state", "migrations"} <= tables


def test_a_line_is_its_name_and_url(tmp_path: Path) -> None:
    with Store(tmp_path / "lp.db") as store:
        first = store.line_ids([Line("a", "https://one.example")])
        again = store.line_ids([Line("a", "https://one.example")])
        moved = store.line_ids([Line("a", "https://two.example")])
    assert first == again
    assert moved["a"] != first["a"], "history under an old URL must not speak for the new one"


def test_read_choice_creates_nothing_when_there_is_no_database(tmp_path: Path) -> None:
    path = tmp_path / "missing" / "lp.db"
    assert read_choice(path) is None
    assert not path.parent.exists()


def test_read_choice_from_a_fresh_database(tmp_path: Path) -> None:
    path = tmp_path / "lp.db"
    with Store(path) as store:
        assert read_choice(path) is None
        store.record_decision("a", "https://a.example", None, "first", None)
    choice = read_choice(path)
    assert (choice.name, choice.url, choice.reason) == ("a", "https://a.example", "first")


def test_a_file_that_is_not_sqlite_is_refused_and_kept(tmp_path: Path) -> None:
    path = tmp_path / "notes.db"
    path.write_text("my notes\n" * 500)
    before = path.read_bytes()
    with pytest.raises(StoreError, match=str(path)):
        Store(path)
    with pytest.raises(StoreError, match=str(path)):
        read_choice(path)
    assert path.read_bytes() == before


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_a_directory_that_cannot_be_written_is_a_clear_error(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(StoreError, match="locked"):
            Store(locked / "lp.db")
    finally:
        locked.chmod(0o700)



def _samples(store: Store, line: str, times_ttfbs: list[tuple[float, float | None]]) -> None:
    from linepicker.probe.phases import Phases
    from linepicker.probe.sample import Sample

    ids = store.line_ids([Line(line, f"https://{line}.example")])
    rows = [Sample(line, 0, at, "ok" if ttfb else "timeout", ttfb is not None, Phases(ttfb_ms=ttfb)) for at, ttfb in times_ttfbs]
    store.add_samples(store.start_round("daemon"), ids, rows)


def test_roll_up_folds_an_hour_of_samples_at_fractional_times_into_one_row(tmp_path: Path) -> None:
    hour = 1_700_000_000 // 3600 * 3600 - 10 * 86400
    with Store(tmp_path / "lp.db") as store:
        _samples(store, "a", [(hour + 7 + i * 61.37, 100.0 + i) for i in range(50)] + [(hour + 3599.9, None)])
        rolled = store.roll_up(hour + 7200)
        rows = store.conn.execute("select hour, samples, successes, ttfb_p50_ms, ttfb_min_ms, ttfb_max_ms from hourly").fetchall()
    assert rolled.hours == 1
    assert rows == [(float(hour), 51, 50, 124.5, 100.0, 149.0)]


def test_migration_0005_folds_the_hour_rows_written_one_per_sample(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file of the previous release: its roll-up wrote one "hour" row per sample (SQLite's `%` dropped the fraction)."""
    import json

    from linepicker import store as store_module

    path = tmp_path / "lp.db"
    hour = 1_700_000_000 // 3600 * 3600 - 10 * 86400
    ttfbs = [80.0 + (i * 37) % 41 for i in range(30)]
    with monkeypatch.context() as old_release:
        # Every migration but 0005, so the Store of this release can write the old rows (0007_relays adds the relay they need).
        old_release.setattr(store_module, "MIGRATIONS", [migration for migration in MIGRATIONS if migration[0] != "0005_fold_hourly"])
        with Store(path) as store:
            _samples(store, "a", [(hour + 5 + i * 100 + (i + 1) / 64, ttfb) for i, ttfb in enumerate(ttfbs)] + [(hour + 3600.5, 60.0), (hour + 3601.75, None)])
            line_id = store.line_ids([Line("a", "https://a.example")])["a"]
            store.conn.execute(  # what the old roll-up wrote, with its own expression
                "insert into hourly select line_id, started_at - started_at % 3600, 1, success, ttfb_ms, ttfb_ms, ttfb_ms, ttfb_ms, "
                "json_object(outcome, 1) from samples"
            )
            # An aggregated row that was right by chance (a sample at a whole second): merged, weighted by its successes.
            store.conn.execute("insert into hourly values (?, ?, 10, 10, 200.0, 300.0, 150.0, 350.0, '{\"ok\": 10}')", [line_id, float(hour)])
            store.conn.execute("delete from samples")
            store.conn.commit()
            assert store.conn.execute("select count(*) from hourly").fetchone()[0] == 33
    with Store(path) as store:
        rows = store.conn.execute("select hour, samples, successes, ttfb_p50_ms, ttfb_min_ms, ttfb_max_ms, outcomes from hourly order by hour").fetchall()
        applied = [row[0] for row in store.conn.execute("select name from migrations order by id")]
    assert "0005_fold_hourly" in applied
    assert [row[0] for row in rows] == [float(hour), float(hour + 3600)]
    first, second = rows
    exact_median = sorted(ttfbs)[14] / 2 + sorted(ttfbs)[15] / 2
    assert first[1:3] == (40, 40)
    assert first[3] == pytest.approx((exact_median * 30 + 200.0 * 10) / 40)
    assert first[4:6] == (min(ttfbs), 350.0)
    assert json.loads(first[6]) == {"ok": 40}
    assert second[1:6] == (2, 1, 60.0, 60.0, 60.0)
    assert json.loads(second[6]) == {"ok": 1, "timeout": 1}


def test_every_migration_is_named_where_env_reads_them() -> None:
    from linepicker.lastchoice import MIGRATION_NAMES

    assert tuple(name for name, _ in MIGRATIONS) == MIGRATION_NAMES


def newer(path: Path) -> bytes:
    """A file a later release has migrated further than this one knows."""
    with Store(path) as store:
        store.record_decision("a", "https://a.example", None, "test", None)
        store.conn.execute("alter table decisions add column weight real")
        store.conn.execute("insert into migrations (name, applied_at) values ('0099_weights', 0)")
        store.conn.commit()
    return path.read_bytes()


@pytest.mark.parametrize(
    "argv",
    [["status"], ["pick"], ["probe"], ["history"], ["doctor"], ["unpin"], ["pin", "a"], ["report", "--html", "r.html"], ["daemon", "--listen", "off"], ["env"]],
    ids=lambda argv: argv[0],
)
def test_a_database_from_a_newer_release_is_refused_by_every_command(tmp_path: Path, argv: list[str]) -> None:
    import subprocess
    import sys

    import yaml

    db = tmp_path / "lp.db"
    before = newer(db)
    config = tmp_path / "lines.yaml"
    config.write_text(yaml.safe_dump({"probe": {"timeout": 1, "samples": 1}, "lines": [{"name": "a", "url": "http://127.0.0.1:9"}]}))
    options = ["--db", str(db)] + ([] if argv[0] in ("env", "unpin") else ["--config", str(config)])
    program = [str(Path(sys.executable).parent / "linepicker")] if argv[0] == "env" else [sys.executable, "-m", "linepicker"]
    done = subprocess.run([*program, *argv, *options], capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert done.returncode == 1, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("linepicker: error:")]
    assert errors == [f"linepicker: error: {db}: written by a newer linepicker (migration 0099_weights is unknown to linepicker {__version__}); upgrade linepicker, or use another --db"]
    assert "Traceback" not in done.stderr
    assert db.read_bytes() == before


def test_error_text_quoting_a_proxy_password_is_stored_masked(tmp_path: Path) -> None:
    from linepicker.probe.phases import Phases
    from linepicker.probe.sample import Sample

    path = tmp_path / "lp.db"
    with Store(path) as store:
        ids = store.line_ids([Line("a", "https://a.example")])
        error = "cannot connect through proxy http://alice:s3cr3t-pw@127.0.0.1:3128"
        store.add_samples(store.start_round("pick"), ids, [Sample("a", 0, 1.0, "proxy", False, Phases(), error=error)])
        [(stored,)] = store.conn.execute("select error from samples").fetchall()
    assert stored == "cannot connect through proxy http://alice:***@127.0.0.1:3128"
    assert b"s3cr3t-pw" not in path.read_bytes()
