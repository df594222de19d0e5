"""The last decision, read straight from the database file without changing or creating anything.

`env` runs in every new shell and must not pay for sqlite_utils, pathlib or
the Store's migrations; the Store reads the same row the same way, so both
paths answer alike. Standard library only (os, sqlite3).
"""

from __future__ import annotations

import os
import sqlite3

from .errors import StoreError

BUSY_TIMEOUT_S = 10.0
# The database migrations this release knows, in order (store.MIGRATIONS pairs each with its code).
# Named here, with the standard library, so that `env` too refuses a file a newer release has changed.
MIGRATION_NAMES = ("0001_initial", "0002_hourly", "0003_samples_by_round", "0004_chats", "0005_fold_hourly", "0006_traffic")
NO_CHOICE = "linepicker: no line chosen yet: run 'linepicker pick'"
CHOICE_QUERY = "select name, url, previous, reason, decided_at from decisions order by id desc limit 1"


def last_choice(path: str) -> tuple[str, str, str | None, str, float] | None:
    """The newest decision row (name, url, previous, reason, decided_at), read-only, creating nothing."""
    if not os.path.exists(path):
        return None
    try:
        conn = open_read_only(path)
        try:
            refuse_newer(conn, path)
            row = conn.execute(CHOICE_QUERY).fetchone()
        finally:
            conn.close()
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            return None
        raise StoreError(f"{path}: {exc}") from None
    except sqlite3.DatabaseError as exc:
        raise StoreError(f"{path}: not a usable linepicker database ({exc})") from None
    return tuple(row) if row else None  # type: ignore[return-value]


def open_read_only(path: str) -> sqlite3.Connection:
    """Open the database for reading only, also where nothing can be written (a read-only disk or directory).

    A WAL database's first read creates its -shm file; where that cannot be made, the file is read
    as immutable: without the -shm and without locks, which is safe where no process can write it.
    """
    uri = file_uri(path)
    conn = sqlite3.connect(f"{uri}?mode=ro", uri=True, timeout=BUSY_TIMEOUT_S)
    try:
        conn.execute("select count(*) from sqlite_master").fetchone()
        return conn
    except sqlite3.OperationalError as exc:
        conn.close()
        if "unable to open" not in str(exc):
            raise
    return sqlite3.connect(f"{uri}?mode=ro&immutable=1", uri=True, timeout=BUSY_TIMEOUT_S)


def refuse_newer(conn: sqlite3.Connection, path: object) -> None:
    """A file migrated by a newer release may have columns and meanings this one does not know: read nothing from it."""
    try:
        names = [row[0] for row in conn.execute("select name from migrations order by id")]
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            return
        raise
    unknown = [name for name in names if name not in MIGRATION_NAMES]
    if unknown:
        from . import __version__

        raise StoreError(
            f"{path}: written by a newer linepicker (migration {unknown[0]} is unknown to linepicker {__version__}); "
            "upgrade linepicker, or use another --db"
        )


def file_uri(path: str) -> str:
    """The file as a URI SQLite reads back to the same name, without importing pathlib or urllib.

    Absolute with an empty authority, so '//tmp/x' is not read as host 'tmp';
    '?' and '#' would end the path and '%' starts an escape.
    """
    absolute = os.path.abspath(path).replace(os.sep, "/")
    escaped = absolute.replace("%", "%25").replace("?", "%3f").replace("#", "%23")
    return "file://" + ("" if escaped.startswith("/") else "/") + escaped


def outside_config(source: str, name: str, url: str, url_there: str | None) -> str | None:
    """Why the last choice (`name` at `url`) cannot be handed out for the config at `source`, whose
    line of that name has `url_there` (None: no such line); None when it can.

    One database may hold another relay's choice, or a line since removed or moved:
    `env --config` must not export a URL that config does not name.
    """
    if url_there == url:
        return None
    moved = f" (its url there is now {url_there})" if url_there is not None else ""
    return f"linepicker: the last choice, {name} at {url}, is not a line of {source}{moved}: run 'linepicker pick --config {source}'"
