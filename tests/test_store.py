"""The database: migrations, sharing, and refusing files that are not ours."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

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

