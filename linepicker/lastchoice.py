"""Each relay's last decision, read straight from the database file without changing or creating anything.

`env` runs in every new shell and must not pay for sqlite_utils, pathlib,
json or the Store's migrations; the Store reads the same rows the same way, so
both paths answer alike. Standard library only (os, sqlite3).
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable  # loaded by os already; `typing` is not, and is not needed here

from .clientenv import CLIENT_VARIABLES, DEFAULT_RELAY, client_env
from .errors import StoreError

BUSY_TIMEOUT_S = 10.0
# The database migrations this release knows, in order (store.MIGRATIONS pairs each with its code).
# Named here, with the standard library, so that `env` too refuses a file a newer release has changed.
MIGRATION_NAMES = ("0001_initial", "0002_hourly", "0003_samples_by_round", "0004_chats", "0005_fold_hourly", "0006_traffic", "0007_relays")
NO_CHOICE = "linepicker: no line chosen yet: run 'linepicker pick'"
_COLUMNS = "select name, url, previous, reason, decided_at from decisions"
CHOICE_QUERY = f"{_COLUMNS} order by id desc limit 1"  # a file from before relays (migration 0007): one relay
RELAY_CHOICE_QUERY = f"{_COLUMNS} where relay = ? order by id desc limit 1"
RELAYS_QUERY = "select name, exports from relays order by position"

Row = tuple[str, str, "str | None", str, float]  # name, url, previous, reason, decided_at


def last_choice(path: str, relay: str = DEFAULT_RELAY) -> Row | None:
    """A relay's newest decision row, read-only, creating nothing."""
    return _read(path, lambda conn: _choice(conn, relay))  # type: ignore[return-value]


def relay_choices(path: str) -> list[tuple[str, tuple[str, ...], Row | None]]:
    """Every relay `env` prints, in the config's order: its name, the variables it sets, its newest decision.

    A file no config has listed relays in yet (one from before relays, or one
    that only ever saw a single relay) has the one relay `default`, setting every variable.
    """
    return _read(path, _relay_choices) or []  # type: ignore[return-value]


def choice_env(
    relays: list[tuple[str, tuple[str, ...], Row | None]],
    configured: dict[str, tuple[str, dict[str, str]]] | None = None,
    gateways: dict[str, str] | None = None,
) -> tuple[list[tuple[str, Row, dict[str, str]]], list[str]]:
    """Each relay whose choice is handed out, with its decision and the variables it sets; and a note
    (exit status 3) for each relay whose choice is not: none yet, or (with `configured`, each relay's
    config file and line URLs by name) a line that config does not name. A relay in `gateways` (relay
    -> URL of the gateway a live daemon serves for it) hands out its gateway rather than the line."""
    if not relays:
        return [], [NO_CHOICE]
    handed = []
    missing = []
    for name, exports, row in relays:
        if row is None:
            missing.append(NO_CHOICE if len(relays) == 1 else f"{NO_CHOICE} (relay {name} has none)")
        elif configured is not None and (outside := outside_config(configured[name][0], row[0], row[1], configured[name][1].get(row[0]))):
            missing.append(outside if len(relays) == 1 else f"{outside} (relay {name})")
        else:
            handed.append((name, row, client_env((gateways or {}).get(name) or row[1], exports)))
    return handed, missing


def merged_env(handed: list[tuple[str, Row, dict[str, str]]]) -> dict[str, str]:
    """Every handed-out relay's variables together: no two relays export the same one (the config refuses it)."""
    variables: dict[str, str] = {}
    for _, _, env in handed:
        variables.update(env)
    return variables


def _relay_choices(conn: sqlite3.Connection) -> list[tuple[str, tuple[str, ...], Row | None]]:
    try:
        relays = conn.execute(RELAYS_QUERY).fetchall()
    except sqlite3.OperationalError as exc:
        if "no such table" not in str(exc):
            raise
        relays = []
    if not relays:
        relays = [(DEFAULT_RELAY, " ".join(CLIENT_VARIABLES))]
    # Only names linepicker sets are printed, whatever the file holds.
    return [(name, tuple(v for v in CLIENT_VARIABLES if v in exports.split()), _choice(conn, name)) for name, exports in relays]


def _choice(conn: sqlite3.Connection, relay: str) -> Row | None:
    try:
        row = conn.execute(RELAY_CHOICE_QUERY, [relay]).fetchone()
    except sqlite3.OperationalError as exc:
        if "no such column" not in str(exc):
            raise
        row = conn.execute(CHOICE_QUERY).fetchone() if relay == DEFAULT_RELAY else None
    return tuple(row) if row else None  # type: ignore[return-value]


def _read(path: str, query: Callable[[sqlite3.Connection], object]) -> object:
    """Run a read on a read-only connection; a missing file or table is no answer, anything else one clear error."""
    if not os.path.exists(path):
        return None
    try:
        conn = open_read_only(path)
        try:
            refuse_newer(conn, path)
            return query(conn)
        finally:
            conn.close()
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            return None
        raise StoreError(f"{path}: {exc}") from None
    except sqlite3.DatabaseError as exc:
        raise StoreError(f"{path}: not a usable linepicker database ({exc})") from None


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
