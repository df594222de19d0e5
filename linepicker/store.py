"""The SQLite record of every probe, round and decision.

One file shared by `pick`, `status`, `env` and the daemon: WAL mode and a busy
timeout let them run side by side. Schema changes go through numbered
migrations recorded in the database itself, so a file written by any release
opens in every later one. No secret is ever written here.
"""

from __future__ import annotations

import copy
import functools
import heapq
import itertools
import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Sequence

from . import APP_NAME
from .clientenv import CLIENT_VARIABLES, DEFAULT_RELAY
from .errors import StoreError
from .lastchoice import BUSY_TIMEOUT_S, RELAY_CHOICE_QUERY, last_choice, open_read_only, refuse_newer
from .policy import Observation

if TYPE_CHECKING:
    import sqlite_utils

    from .config import Config, Line
    from .probe.chat import ChatSample
    from .probe.sample import Sample
    from .traffic import Attempt, TrafficSummary

PARTIAL_ROUND_KINDS = ("daemon-recheck", "daemon-watch")  # rounds of some lines only (see Observation.partial)

APPLICATION_ID = 0x4C504B52  # "LPKR" in the SQLite header: this file is linepicker's


@dataclass(frozen=True)
class Decision:
    name: str
    url: str
    previous: str | None
    reason: str
    decided_at: float


@dataclass(frozen=True)
class HourRow:
    """One line's hour, rolled up: the history that outlives the raw samples."""

    hour: float  # unix time of the hour's start
    samples: int
    successes: int
    p50_ms: float | None
    p95_ms: float | None
    min_ms: float | None


@dataclass(frozen=True)
class ChatRow:
    """A line's latest chat probe: whether its model calls work, and how fast they are."""

    model: str
    outcome: str
    success: bool
    error: str | None
    ttft_ms: float | None
    tokens: int | None
    tokens_per_s: float | None
    started_at: float
    rounds_since: int  # rounds that measured the line after this chat's round


@dataclass(frozen=True)
class LastSample:
    """A line's newest sample, for 'last outcome' and 'last error'."""

    outcome: str
    error: str | None
    at: float


@dataclass(frozen=True)
class RoundSample:
    """One sample of the newest round that measured a line, as `doctor` judges the key by it."""

    outcome: str
    status: int | None
    error: str | None
    key_sent: bool
    at: float


@dataclass(frozen=True)
class RollUp:
    samples: int  # raw samples folded into hourly rows and deleted
    hours: int  # hourly rows written or merged
    rounds: int  # rounds deleted because none of their samples is left


def default_db_path() -> Path:
    import platformdirs

    return Path(platformdirs.user_data_dir(APP_NAME)) / "linepicker.db"


def resolve_db_path(explicit: str | os.PathLike[str] | None = None) -> Path:
    """--db, then LINEPICKER_DB, then the user data dir."""
    chosen = explicit or os.environ.get("LINEPICKER_DB")
    return Path(chosen).expanduser() if chosen else default_db_path()


def read_choice(path: Path, relay: str = DEFAULT_RELAY) -> Decision | None:
    """A relay's last decision, read-only and with the standard library alone, as `env` reads it."""
    row = last_choice(str(path), relay)
    return Decision(*row) if row else None


def _migration_1(db: "sqlite_utils.Database") -> None:
    db["lines"].create(
        {"id": int, "name": str, "url": str, "first_seen": float},
        pk="id",
        not_null={"name", "url"},
    )
    db["lines"].create_index(["name", "url"], unique=True)
    db["rounds"].create(
        {"id": int, "kind": str, "started_at": float, "finished_at": float, "chosen": str, "reason": str},
        pk="id",
    )
    db["samples"].create(
        {
            "id": int,
            "round_id": int,
            "line_id": int,
            "seq": int,
            "started_at": float,
            "outcome": str,
            "success": int,
            "status": int,
            "error": str,
            "dns_ms": float,
            "connect_ms": float,
            "tls_ms": float,
            "ttfb_ms": float,
            "transfer_ms": float,
            "total_ms": float,
            "key_sent": int,
        },
        pk="id",
        foreign_keys=[("round_id", "rounds", "id"), ("line_id", "lines", "id")],
    )
    db["samples"].create_index(["line_id", "started_at"])
    db["decisions"].create(
        {"id": int, "decided_at": float, "name": str, "url": str, "previous": str, "reason": str, "round_id": int},
        pk="id",
    )
    db["state"].create({"key": str, "value": str}, pk="key")


def _migration_2(db: "sqlite_utils.Database") -> None:
    """Hourly per-line aggregates that outlive the raw samples they summarise (daemon retention)."""
    db["hourly"].create(
        {
            "line_id": int,
            "hour": float,  # unix time of the hour's start
            "samples": int,  # finished samples
            "successes": int,
            "ttfb_p50_ms": float,  # of the successful samples
            "ttfb_p95_ms": float,
            "ttfb_min_ms": float,
            "ttfb_max_ms": float,
            "outcomes": str,  # JSON object: outcome -> count, unfinished samples included
        },
        pk=("line_id", "hour"),
        foreign_keys=[("line_id", "lines", "id")],
    )
    db["samples"].create_index(["started_at"])


def _migration_3(db: "sqlite_utils.Database") -> None:
    """Retention drops a round once none of its samples is left, which without this index scans
    every sample for each round: a minute per hourly run at 10 M samples (docs/benchmarks.md)."""
    db["samples"].create_index(["round_id"])


def _migration_4(db: "sqlite_utils.Database") -> None:
    """Streaming chat probes (probe.chat): a table of their own, as their timings are not a ttfb to mix with the models probes'."""
    db["chats"].create(
        {
            "id": int,
            "round_id": int,
            "line_id": int,
            "started_at": float,
            "model": str,
            "outcome": str,
            "success": int,
            "status": int,
            "error": str,
            "dns_ms": float,
            "connect_ms": float,
            "tls_ms": float,
            "ttfb_ms": float,  # request sent -> the answer's first bytes
            "ttft_ms": float,  # request sent -> first text
            "total_ms": float,
            "tokens": int,
            "tokens_per_s": float,
            "usage": int,  # 1: tokens counted by the API, 0: text chunks counted
            "key_sent": int,
        },
        pk="id",
        foreign_keys=[("round_id", "rounds", "id"), ("line_id", "lines", "id")],
    )
    db["chats"].create_index(["line_id", "started_at"])
    db["chats"].create_index(["started_at"])


def _migration_5(db: "sqlite_utils.Database") -> None:
    """Releases before this one bucketed hours with SQLite's integer-only `%`, which kept each sample's
    fractional second: every sample became an "hour" row of its own. Fold those rows into their hours.

    The misplaced rows are read in hour order and folded one hour at a time, so memory holds one hour.
    Rows of a single sample (nearly all of them) give exact percentiles together; anything else is
    merged as roll_up merges, counts exactly and percentiles weighted by successes.
    """
    conn = db.conn
    misplaced = conn.execute(
        "select line_id, hour, samples, successes, ttfb_p50_ms, ttfb_p95_ms, ttfb_min_ms, ttfb_max_ms, outcomes from hourly "
        "where hour <> (cast(hour as integer) / 3600) * 3600 order by line_id, hour"
    )
    folded: list[dict] = []
    group: list[tuple] = []
    for row in misplaced:
        if group and (row[0], hour_start(row[1])) != (group[0][0], hour_start(group[0][1])):
            folded.append(_folded_hour(group))
            group = []
        group.append(row)
    if group:
        folded.append(_folded_hour(group))
    conn.execute("delete from hourly where hour <> (cast(hour as integer) / 3600) * 3600")
    for row in folded:
        _merge_hour(conn, row)


def _migration_6(db: "sqlite_utils.Database") -> None:
    """The gateway's real requests, one row per attempt on a line (linepicker.traffic).

    A table of their own rather than samples of another kind: every reader of
    samples (the policy's window, charts, roll-ups, doctor) judges a probe's
    ttfb, and a completion's head waits for the model. No round: traffic comes
    when clients send it. Never a body, a header or a query string.
    """
    db["traffic"].create(
        {
            "id": int,
            "line_id": int,
            "started_at": float,
            "seq": int,  # 1: the first line tried for its request
            "method": str,
            "path": str,
            "outcome": str,
            "success": int,  # 1: the line delivered the API's answer, 0: it failed, NULL: the client left first
            "failover": int,  # 1: the request went on to another line
            "status": int,
            "error": str,
            "stream": int,
            "request_bytes": int,
            "upload_ms": float,
            "ttfb_ms": float,  # request sent -> the answer's head
            "ttft_ms": float,  # request sent -> the first text of a stream
            "total_ms": float,
            "tokens": int,  # output tokens, from the usage a stream carried
            "tokens_per_s": float,
            "reused": int,  # on a kept-alive connection
        },
        pk="id",
        foreign_keys=[("line_id", "lines", "id")],
    )
    db["traffic"].create_index(["line_id", "started_at"])
    db["traffic"].create_index(["started_at"])


def _migration_7(db: "sqlite_utils.Database") -> None:
    """Several relays in one file: a relay in the identity of lines, and in rounds, decisions and pins.

    Everything recorded before belongs to relay `default`, the one relay of a
    config with top-level `lines:`, so its history, choice and pin carry on.
    Samples, chats and hourly rows reach their relay through their line. It
    reads and changes only these tables, so it runs alike before or after any
    other migration numbered near it.
    """
    conn = db.conn
    for table in ("lines", "rounds", "decisions"):
        conn.execute(f"alter table {table} add column relay text not null default {DEFAULT_RELAY!r}")
    for name, unique in [(row[1], row[2]) for row in conn.execute("pragma index_list(lines)")]:
        columns = [row[2] for row in conn.execute(f"pragma index_info({_quote(name)})")]
        if unique and columns == ["name", "url"]:
            conn.execute(f"drop index {_quote(name)}")
    conn.execute("create unique index idx_lines_relay_name_url on lines (relay, name, url)")
    conn.execute("create index idx_decisions_relay_id on decisions (relay, id)")
    conn.execute(
        f"create table state_by_relay (relay text not null default {DEFAULT_RELAY!r}, key text not null, value text, primary key (relay, key))"
    )
    conn.execute(f"insert into state_by_relay (relay, key, value) select {DEFAULT_RELAY!r}, key, value from state")
    conn.execute("drop table state")
    conn.execute("alter table state_by_relay rename to state")
    # What `env` prints, which it cannot learn from lines.yaml (it reads no YAML): each relay's variables, in order.
    conn.execute("create table relays (name text primary key, exports text not null, position integer not null)")
    if conn.execute("select 1 from decisions limit 1").fetchone():
        conn.execute("insert into relays (name, exports, position) values (?, ?, 0)", [DEFAULT_RELAY, " ".join(CLIENT_VARIABLES)])


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


# Applied by name, in this order, each once. A file may have run a higher number before a lower
# one (0007 before 0005 and 0006, which were written side by side with it), so each migration
# touches only its own tables and columns and assumes nothing of the others.
MIGRATIONS: list[tuple[str, Callable[["sqlite_utils.Database"], None]]] = [
    ("0001_initial", _migration_1),
    ("0002_hourly", _migration_2),
    ("0003_samples_by_round", _migration_3),
    ("0004_chats", _migration_4),
    ("0005_fold_hourly", _migration_5),
    ("0006_traffic", _migration_6),
    ("0007_relays", _migration_7),
]


class Store:
    """The database, seen from one relay: `relay` scopes lines, rounds, decisions and the pin.

    `scoped(name)` gives another relay's view over the same connection, so the
    core (picker, doctor, history) works on a relay without knowing of others.
    """

    relay: str = DEFAULT_RELAY

    def __init__(self, path: Path):
        self.path = path
        self.read_only = False  # True: opened where nothing can be written (see _open_read_only)
        try:
            self._open()
        except (sqlite3.DatabaseError, OSError, StoreError) as exc:
            if isinstance(exc, StoreError):
                raise
            if isinstance(exc, OSError):
                raise StoreError(f"{path}: cannot open the database: {exc.strerror or exc}") from None
            raise StoreError(f"{path}: cannot use the database: {_explain(exc)}") from None

    def _open(self) -> None:
        path = self.path
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
        self.conn = conn = sqlite3.connect(str(path), timeout=BUSY_TIMEOUT_S)
        try:
            self._refuse_foreign()
            refuse_newer(conn, path)
            conn.execute("pragma journal_mode=wal")
            conn.execute("pragma synchronous=normal")
            self._migrate()
        except sqlite3.OperationalError as exc:
            conn.close()
            if not ("unable to open" in str(exc) or "readonly" in str(exc)) or not path.is_file():
                raise
            self._open_read_only()
        except BaseException:
            conn.close()
            raise

    def _open_read_only(self) -> None:
        """A read-only disk or directory: WAL readers want a -shm file beside the database, which cannot be
        created there, so read the file as it stands (see lastchoice.open_read_only). Reading commands work;
        the first write is a one-line error."""
        self.conn = conn = open_read_only(str(self.path))
        self.read_only = True
        try:
            self._refuse_foreign()
            refuse_newer(conn, self.path)
            if self._pending():
                raise StoreError(f"{self.path}: read-only, and written by an older linepicker: open it once where it can be written, to upgrade it")
        except BaseException:
            conn.close()
            raise

    @functools.cached_property
    def db(self) -> "sqlite_utils.Database":
        """sqlite_utils on the same connection, for migrations and writes, made on first use: reads are
        plain SQL on `conn`, so `status` and `history` over an up-to-date file never import it
        (≈ 35 ms with dateutil, docs/benchmarks.md §5)."""
        import sqlite_utils

        return sqlite_utils.Database(self.conn)

    def close(self) -> None:
        self.conn.close()

    def scoped(self, relay: str) -> "Store":
        """The same database and connection, seen from another relay; close the Store it came from, not this."""
        view = copy.copy(self)
        view.relay = relay
        return view

    def set_relays(self, configs: Sequence["Config"]) -> None:
        """Record the relays a config declares and what each exports, for `env`, which reads no YAML.

        The whole list is replaced: a relay taken out of lines.yaml stops being
        printed by `env`, while its history stays.
        """
        rows = [(config.relay, " ".join(config.exports), position) for position, config in enumerate(configs)]

        def replace() -> None:
            if self.conn.execute("select name, exports, position from relays order by position").fetchall() == rows:
                return  # an unchanged list is not rewritten: `pick` beside a daemon takes no write lock for it
            self.conn.execute("delete from relays")
            self.conn.executemany("insert into relays (name, exports, position) values (?, ?, ?)", rows)

        self._write(replace)

    def relay_names(self) -> list[str]:
        """Relays this database knows: those a config recorded, and any with a pin or a decision."""
        rows = self.conn.execute(
            "select name from (select name, position from relays union all select relay, 1e9 from state "
            "union all select relay, 1e9 from decisions) group by name order by min(position), name"
        )
        return [row[0] for row in rows]

    def pins(self) -> dict[str, str]:
        """Every relay's pin: relay -> line."""
        return dict(self.conn.execute("select relay, value from state where key = 'pinned' order by relay").fetchall())

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, kind: object, exc: BaseException | None, traceback: object) -> None:
        self.close()
        if isinstance(exc, sqlite3.DatabaseError):
            # Damage deep in the file, or a lock held too long, shows only when a query reaches it.
            raise StoreError(f"{self.path}: cannot use the database: {_explain(exc)}") from None

    def _refuse_foreign(self) -> None:
        """Another program's SQLite file is never changed: not its journal mode, not its tables.

        Files made before the application id was set are recognised by their migrations table.
        """
        conn = self.conn
        app_id = self._app_id()
        if app_id == APPLICATION_ID:
            return
        tables = {row[0] for row in conn.execute("select name from sqlite_master where type = 'table'")}
        ours = "migrations" in tables and conn.execute("select 1 from migrations where name = ?", [MIGRATIONS[0][0]]).fetchone()
        if app_id != 0 or (tables and not ours):
            raise StoreError(f"{self.path}: a SQLite database of another program; linepicker leaves it alone (choose another --db)")

    def _migrate(self) -> None:
        """Migrate in one IMMEDIATE transaction, so processes opening a new file at once do it one after another.

        An up-to-date file is only read, so opening it never waits for a writer and works read-only.
        """
        conn = self.conn
        if not self._pending():
            return
        conn.execute("begin immediate")
        try:
            if self._app_id() != APPLICATION_ID:
                conn.execute(f"pragma application_id = {APPLICATION_ID}")
            pending = self._pending()  # again, now that no other process can be migrating
            conn.execute("create table if not exists migrations (id integer primary key, name text unique, applied_at real)")
            for name, migrate in pending:
                migrate(self.db)
                conn.execute("insert into migrations (name, applied_at) values (?, ?)", [name, time.time()])
        except BaseException:
            conn.rollback()
            raise
        conn.commit()

    def _app_id(self) -> int:
        return self.conn.execute("pragma application_id").fetchone()[0]

    def _pending(self) -> list[tuple[str, Callable[["sqlite_utils.Database"], None]]]:
        if not self.conn.execute("select 1 from sqlite_master where type = 'table' and name = 'migrations'").fetchone():
            return list(MIGRATIONS)
        done = {row[0] for row in self.conn.execute("select name from migrations")}
        return [(name, migrate) for name, migrate in MIGRATIONS if name not in done]

    def _write(self, action: Callable[[], object]) -> object:
        """Run a write in one transaction, turning SQLite failures into a StoreError naming the file."""
        try:
            with self.conn:
                return action()
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{self.path}: write failed: {_explain(exc)}") from None

    def line_ids(self, lines: Sequence["Line"]) -> dict[str, int]:
        """A line is its relay, name and URL: history under a changed URL is another line's, and two relays may both have a `main`."""

        def find(line: "Line") -> int | None:
            row = self.conn.execute("select id from lines where relay = ? and name = ? and url = ?", [self.relay, line.name, line.url]).fetchone()
            return row[0] if row else None

        if self.read_only:
            # Nothing can be inserted: a line the file has never seen gets an id no row has (so no history).
            return {line.name: found if (found := find(line)) is not None else -1 - n for n, line in enumerate(lines)}

        def upsert() -> dict[str, int]:
            ids = {}
            for line in lines:
                found = find(line)
                if found is None:
                    # Or-ignore: another process that started at the same moment may have inserted it since the select.
                    self.db.execute(
                        "insert or ignore into lines (relay, name, url, first_seen) values (?, ?, ?, ?)", [self.relay, line.name, line.url, time.time()]
                    )
                    found = find(line)
                ids[line.name] = found
            return ids

        return self._write(upsert)  # type: ignore[return-value]

    def start_round(self, kind: str) -> int:
        return self._write(lambda: self.db["rounds"].insert({"kind": kind, "started_at": time.time(), "relay": self.relay}).last_pk)  # type: ignore[return-value]

    def add_samples(self, round_id: int, line_ids: dict[str, int], samples: Iterable["Sample"]) -> None:
        rows = [
            {
                **_common_columns(round_id, line_ids, s),
                "seq": s.seq,
                "success": None if s.success is None else int(s.success),
                "ttfb_ms": s.phases.ttfb_ms,
                "transfer_ms": s.phases.transfer_ms,
                "total_ms": s.phases.total_ms,
            }
            for s in samples
        ]
        if rows:
            self._write(lambda: self.db["samples"].insert_all(rows))

    def add_chats(self, round_id: int, line_ids: dict[str, int], chats: Iterable["ChatSample"]) -> None:
        rows = [
            {
                **_common_columns(round_id, line_ids, c),
                "model": c.model,
                "success": int(c.success),
                "ttfb_ms": c.phases.ttfb_ms,
                "ttft_ms": c.ttft_ms,
                "total_ms": c.phases.total_ms,
                "tokens": c.tokens,
                "tokens_per_s": c.tokens_per_s,
                "usage": int(c.usage),
            }
            for c in chats
        ]
        if rows:
            self._write(lambda: self.db["chats"].insert_all(rows))

    def latest_chats(self, line_ids: dict[str, int], since: float = 0.0) -> dict[str, ChatRow]:
        """Each line's newest chat probe since a time, and how many rounds have measured the line after it."""
        result = {}
        for name, line_id in line_ids.items():
            row = self.conn.execute(
                "select round_id, model, outcome, success, error, ttft_ms, tokens, tokens_per_s, started_at from chats "
                "where line_id = ? and started_at >= ? order by started_at desc limit 1",
                [line_id, since],
            ).fetchone()
            if row is None:
                continue
            round_id, *fields = row
            later = self.conn.execute(
                "select count(distinct round_id) from samples where line_id = ? and started_at > ? and round_id > ?",
                [line_id, fields[-1], round_id],
            ).fetchone()[0]
            model, outcome, success, error, ttft, tokens, rate, at = fields
            result[name] = ChatRow(model, outcome, bool(success), error, ttft, tokens, rate, at, later)
        return result

    def add_traffic(self, line_ids: dict[str, int], attempts: Iterable["Attempt"]) -> None:
        """Record the gateway's attempts, in one transaction however many: the daemon writes them in batches."""
        rows = [
            [line_ids[a.line], a.started_at, a.seq, a.method, a.path, a.outcome, None if a.success is None else int(a.success),
             int(a.failover), a.status, _masked(a.error), int(a.stream), a.request_bytes, a.upload_ms, a.ttfb_ms, a.ttft_ms, a.total_ms,
             a.tokens, a.tokens_per_s, int(a.reused)]
            for a in attempts
            if a.line in line_ids
        ]
        if rows:
            marks = ", ".join("?" * len(TRAFFIC_COLUMNS))
            self._write(lambda: self.conn.executemany(f"insert into traffic ({', '.join(TRAFFIC_COLUMNS)}) values ({marks})", rows))

    def traffic_since(self, line_ids: dict[str, int], since: float) -> dict[str, "TrafficSummary"]:
        """Each line's real requests since a time, summed up; lines without any are left out."""
        from .traffic import Attempt, summarize

        names = {line_id: name for name, line_id in line_ids.items()}
        if not names:
            return {}
        marks = ",".join("?" * len(names))
        rows = self.conn.execute(
            f"select line_id, {', '.join(TRAFFIC_COLUMNS[1:])} from traffic where line_id in ({marks}) and started_at >= ? order by started_at",
            [*names, since],
        )
        attempts: dict[str, list[Attempt]] = {}
        for line_id, *values in rows:
            row = dict(zip(TRAFFIC_COLUMNS[1:], values))
            row["success"] = None if row["success"] is None else bool(row["success"])
            for flag in ("failover", "stream", "reused"):
                row[flag] = bool(row[flag])
            attempts.setdefault(names[line_id], []).append(Attempt(line=names[line_id], **row))
        return {name: summarize(found) for name, found in attempts.items()}

    def finish_round(self, round_id: int, chosen: str | None, reason: str) -> None:
        self._write(
            lambda: self.db["rounds"].update(round_id, {"finished_at": time.time(), "chosen": chosen, "reason": reason})
        )

    def window(self, line_ids: dict[str, int], since: float) -> dict[str, list[Observation]]:
        """Samples per line since a time, oldest first, as the policy judges them: answered ones with
        their phases, unfinished ones (the only samples without a success) with how long they had
        waited, the least their wait could be; each marked partial when its round probed only some lines.

        Read in the order of the (line_id, started_at) index, which needs no sort: at 1,000 lines
        this is the policy's largest query (docs/benchmarks.md §5)."""
        names = {line_id: name for name, line_id in line_ids.items()}
        result: dict[str, list[Observation]] = {name: [] for name in line_ids}
        if not names:
            return result
        partial = {
            row[0] for row in self.conn.execute(
                f"select id from rounds where started_at >= ? and kind in ({','.join('?' * len(PARTIAL_ROUND_KINDS))})",
                [since - 86400, *PARTIAL_ROUND_KINDS],  # a round starts before its samples, by at most a round's length
            )
        }
        marks = ",".join("?" * len(names))
        rows = self.conn.execute(
            "select line_id, started_at, success, coalesce(dns_ms, 0) + coalesce(connect_ms, 0) + coalesce(tls_ms, 0), ttfb_ms, "
            f"case when success is null then total_ms end, round_id from samples where line_id in ({marks}) and started_at >= ? "
            "order by line_id, started_at",
            [*names, since],
        )
        for line_id, group in itertools.groupby(rows, key=lambda row: row[0]):
            result[names[line_id]] = [
                Observation(at, None if success is None else success == 1, setup, ttfb, waited, round_id, "probe", round_id in partial)
                for _, at, success, setup, ttfb, waited, round_id in group
            ]
        for name, traffic in self._traffic_observations(names, since).items():
            result[name] = list(heapq.merge(result[name], traffic, key=lambda observation: observation.at))
        return result

    def _traffic_observations(self, names: dict[int, str], since: float) -> dict[str, list[Observation]]:
        """The gateway's real requests as evidence of failure or success, never of latency: a
        completion's head waits for the model, so only the probes time a line. They are marked
        partial, as a line carrying the traffic would otherwise look better proven than the others."""
        marks = ",".join("?" * len(names))
        rows = self.conn.execute(
            f"select line_id, started_at, success from traffic where line_id in ({marks}) and started_at >= ? and success is not null "
            "order by line_id, started_at",
            [*names, since],
        )
        return {
            names[line_id]: [Observation(at, success == 1, kind="traffic", partial=True) for _, at, success in group]
            for line_id, group in itertools.groupby(rows, key=lambda row: row[0])
        }

    def last_samples(self, line_ids: dict[str, int]) -> dict[str, LastSample]:
        """The newest sample of each line, for 'last outcome' and 'last error' in status."""
        result = {}
        for name, line_id in line_ids.items():
            row = self.conn.execute(
                "select outcome, error, started_at from samples where line_id = ? order by started_at desc limit 1",
                [line_id],
            ).fetchone()
            if row:
                result[name] = LastSample(*row)
        return result

    def latest_round_up(self, line_ids: dict[str, int]) -> dict[str, bool]:
        """Whether each line answered at least once in the latest round that measured it."""
        result: dict[str, tuple[int, bool]] = {}  # name -> (latest round, answered in it)
        for name, line_id in line_ids.items():
            # Read newest first and stop at the previous round: a round's samples are the newest few
            # rows, and each row read costs a table lookup (1,000 lines: 11 ms, against 78 ms for 100 rows each).
            rows = self.conn.execute(
                "select round_id, success from samples where line_id = ? and success is not null "
                "order by started_at desc",
                [line_id],
            )
            for round_id, success in rows:
                latest = result.setdefault(name, (round_id, False))
                if round_id != latest[0]:
                    break
                result[name] = (round_id, latest[1] or bool(success))
        return {name: up for name, (_, up) in result.items()}

    def choice(self) -> Decision | None:
        row = self.conn.execute(RELAY_CHOICE_QUERY, [self.relay]).fetchone()
        return Decision(*row) if row else None

    def record_decision(self, name: str, url: str, previous: str | None, reason: str, round_id: int | None) -> None:
        self._write(
            lambda: self.db["decisions"].insert(
                {"decided_at": time.time(), "name": name, "url": url, "previous": previous, "reason": reason, "round_id": round_id, "relay": self.relay}
            )
        )

    def decisions(self, limit: int = 10, since: float = 0.0) -> list[Decision]:
        """Newest first."""
        rows = self.conn.execute(
            "select name, url, previous, reason, decided_at from decisions where relay = ? and decided_at >= ? order by id desc limit ?",
            [self.relay, since, limit],
        ).fetchall()
        return [Decision(*row) for row in rows]

    def pinned(self) -> str | None:
        row = self.conn.execute("select value from state where relay = ? and key = 'pinned'", [self.relay]).fetchone()
        return row[0] if row else None

    def set_pinned(self, name: str | None) -> None:
        if name is None:
            self._write(lambda: self.conn.execute("delete from state where relay = ? and key = 'pinned'", [self.relay]))
        else:
            self._write(lambda: self.conn.execute("insert or replace into state (relay, key, value) values (?, 'pinned', ?)", [self.relay, name]))

    def samples_since(self, line_ids: dict[str, int], since: float) -> dict[str, list[tuple[float, bool, float | None]]]:
        """Finished samples per line since a time: (started_at, success, ttfb_ms), oldest first, for charts over time."""
        names = {line_id: name for name, line_id in line_ids.items()}
        result: dict[str, list[tuple[float, bool, float | None]]] = {name: [] for name in line_ids}
        if not names:
            return result
        marks = ",".join("?" * len(names))
        rows = self.conn.execute(
            f"select line_id, started_at, success, ttfb_ms from samples where line_id in ({marks}) and started_at >= ? "
            "and success is not null order by started_at",
            [*names, since],
        )
        for line_id, started_at, success, ttfb in rows:
            result[names[line_id]].append((started_at, bool(success), ttfb))
        return result

    def finish_abandoned_rounds(self, kinds: Sequence[str], reason: str) -> int:
        """Close rounds of these kinds that never finished (cancelled or crashed), so none looks still running."""
        marks = ",".join("?" * len(kinds))
        cursor = self._write(
            lambda: self.db.execute(
                f"update rounds set finished_at = ?, reason = ? where finished_at is null and kind in ({marks})",
                [time.time(), reason, *kinds],
            )
        )
        return cursor.rowcount  # type: ignore[attr-defined]

    def roll_up(self, before: float) -> RollUp:
        """Fold raw samples from whole hours before `before` into hourly rows, then delete them.

        Only whole hours are folded, so an hour's percentiles come from all of its
        samples at once; an hour that somehow gains samples later is merged into
        its row (counts exactly, percentiles as a sample-weighted mean).
        """
        cutoff = hour_start(before)
        rows = self.conn.execute(
            "select line_id, started_at, success, ttfb_ms, outcome from samples where started_at < ? order by line_id, started_at",
            [cutoff],
        ).fetchall()
        hours: dict[tuple[int, float], list[tuple[int | None, float | None, str]]] = {}
        for line_id, started_at, success, ttfb, outcome in rows:
            hours.setdefault((line_id, hour_start(started_at)), []).append((success, ttfb, outcome))

        def apply() -> RollUp:
            for (line_id, hour), samples in hours.items():
                _merge_hour(self.conn, _hour_row(line_id, hour, samples))
            self.db.execute("delete from samples where started_at < ?", [cutoff])
            self.db.execute("delete from chats where started_at < ?", [cutoff])  # no hourly form: kept as long as raw samples
            self.db.execute("delete from traffic where started_at < ?", [cutoff])  # likewise
            gone = self.db.execute(
                "delete from rounds where started_at < ? and not exists (select 1 from samples where samples.round_id = rounds.id) "
                "and not exists (select 1 from chats where chats.round_id = rounds.id)",
                [cutoff],
            ).rowcount
            return RollUp(len(rows), len(hours), gone)

        return self._write(apply)  # type: ignore[return-value]

    def hours_since(self, line_ids: dict[str, int], since: float) -> dict[str, list[HourRow]]:
        """Hourly roll-ups per line from a time on, oldest first: all that is left of samples past retention.raw."""
        names = {line_id: name for name, line_id in line_ids.items()}
        result: dict[str, list[HourRow]] = {name: [] for name in line_ids}
        marks = ",".join("?" * len(names))
        rows = self.conn.execute(
            f"select line_id, hour, samples, successes, ttfb_p50_ms, ttfb_p95_ms, ttfb_min_ms from hourly "
            f"where line_id in ({marks}) and hour >= ? order by hour",
            [*names, since - 3600],
        )
        for line_id, *row in rows:
            result[names[line_id]].append(HourRow(*row))
        return result

    def prune_hourly(self, before: float) -> int:
        """Delete hourly rows older than `before`: the end of the record, so the file stays bounded."""
        return self._write(lambda: self.db.execute("delete from hourly where hour < ?", [before]).rowcount)  # type: ignore[return-value]

    def latest_round_samples(self, name: str, url: str) -> list[RoundSample]:
        """The samples of the newest round that measured this line, as `doctor` judges the line by how it answers now."""
        rows = self.conn.execute(
            "select s.round_id, s.outcome, s.status, s.error, s.key_sent, s.started_at from samples s "
            "join lines l on l.id = s.line_id where l.relay = ? and l.name = ? and l.url = ? order by s.started_at desc limit 100",
            [self.relay, name, url],
        ).fetchall()
        latest = rows[0][0] if rows else None
        return [RoundSample(outcome, status, error, bool(key_sent), at) for round_id, outcome, status, error, key_sent, at in rows if round_id == latest]


TRAFFIC_COLUMNS = (
    "line_id", "started_at", "seq", "method", "path", "outcome", "success", "failover", "status", "error", "stream",
    "request_bytes", "upload_ms", "ttfb_ms", "ttft_ms", "total_ms", "tokens", "tokens_per_s", "reused",
)


def _common_columns(round_id: int, line_ids: dict[str, int], sample: "Sample | ChatSample") -> dict:
    """The columns a models sample and a chat probe share: where, when, how it ended, the connection's phases."""
    return {
        "round_id": round_id,
        "line_id": line_ids[sample.line],
        "started_at": sample.started_at,
        "outcome": sample.outcome,
        "status": sample.status,
        "error": _masked(sample.error),
        "dns_ms": sample.phases.dns_ms,
        "connect_ms": sample.phases.connect_ms,
        "tls_ms": sample.phases.tls_ms,
        "key_sent": int(sample.key_sent),
    }


def _masked(error: str | None) -> str | None:
    """Error text may quote a proxy URL with its password; it is kept and shown masked (user:***@)."""
    from .urlmask import mask_userinfo

    return None if error is None else mask_userinfo(error)


def _explain(exc: sqlite3.DatabaseError) -> str:
    """SQLite's words, plus what 'locked' means here."""
    if "locked" in str(exc):
        return f"{exc} (another process kept it busy; linepicker waits up to {BUSY_TIMEOUT_S:g} s)"
    return str(exc)


def hour_start(at: float) -> float:
    """The start of the hour holding a unix time (Python's float floor; SQLite's `%` would drop the fraction)."""
    return float(at // 3600 * 3600)


def _merge_hour(conn: sqlite3.Connection, row: dict) -> None:
    """Write an hour's row, merged into the row already there for that line and hour."""
    old = conn.execute(
        "select samples, successes, ttfb_p50_ms, ttfb_p95_ms, ttfb_min_ms, ttfb_max_ms, outcomes from hourly "
        "where line_id = ? and hour = ?",
        [row["line_id"], row["hour"]],
    ).fetchone()
    if old is not None:
        row = _merged_hour(row, old)
    # Plain SQL: sqlite_utils' upsert re-reads the table's schema on every call, 8 queries a row.
    columns = ", ".join(row)
    conn.execute(f"insert or replace into hourly ({columns}) values ({', '.join('?' * len(row))})", list(row.values()))


def _folded_hour(rows: list[tuple]) -> dict:
    """One hour from rows of that line and hour: the single-latency rows exactly, the rest merged by weight."""
    import json

    from .policy import percentile

    line_id, hour = rows[0][0], hour_start(rows[0][1])
    single = [row for row in rows if row[3] <= 1]
    latencies = [row[4] for row in single if row[3] and row[4] is not None]
    outcomes: dict[str, int] = {}
    for row in single:
        for outcome, count in json.loads(row[8]).items():
            outcomes[outcome] = outcomes.get(outcome, 0) + count
    folded = {
        "line_id": line_id,
        "hour": hour,
        "samples": sum(row[2] for row in single),
        "successes": sum(row[3] for row in single),
        "ttfb_p50_ms": percentile(latencies, 0.5),
        "ttfb_p95_ms": percentile(latencies, 0.95),
        "ttfb_min_ms": min(latencies, default=None),
        "ttfb_max_ms": max(latencies, default=None),
        "outcomes": json.dumps(outcomes, sort_keys=True),
    }
    for row in rows:
        if row[3] > 1:
            folded = _merged_hour(folded, row[2:])
    return folded


def _hour_row(line_id: int, hour: float, samples: list[tuple[int | None, float | None, str]]) -> dict:
    import json

    from .policy import percentile

    latencies = [ttfb for success, ttfb, _ in samples if success and ttfb is not None]
    outcomes: dict[str, int] = {}
    for _, _, outcome in samples:
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
    return {
        "line_id": line_id,
        "hour": hour,
        "samples": sum(1 for success, _, _ in samples if success is not None),
        "successes": sum(1 for success, _, _ in samples if success),
        "ttfb_p50_ms": percentile(latencies, 0.5),
        "ttfb_p95_ms": percentile(latencies, 0.95),
        "ttfb_min_ms": min(latencies, default=None),
        "ttfb_max_ms": max(latencies, default=None),
        "outcomes": json.dumps(outcomes, sort_keys=True),
    }


def _merged_hour(new: dict, old: tuple) -> dict:
    import json

    samples, successes, p50, p95, low, high, outcomes = old
    merged = dict(new)
    merged["samples"] = new["samples"] + samples
    merged["successes"] = new["successes"] + successes

    def weighted(key: str, old_value: float | None) -> float | None:
        pairs = [(v, n) for v, n in ((new[key], new["successes"]), (old_value, successes)) if v is not None and n]
        return sum(v * n for v, n in pairs) / sum(n for _, n in pairs) if pairs else None

    merged["ttfb_p50_ms"] = weighted("ttfb_p50_ms", p50)
    merged["ttfb_p95_ms"] = weighted("ttfb_p95_ms", p95)
    merged["ttfb_min_ms"] = min((v for v in (new["ttfb_min_ms"], low) if v is not None), default=None)
    merged["ttfb_max_ms"] = max((v for v in (new["ttfb_max_ms"], high) if v is not None), default=None)
    counts = json.loads(outcomes)
    for outcome, count in json.loads(new["outcomes"]).items():
        counts[outcome] = counts.get(outcome, 0) + count
    merged["outcomes"] = json.dumps(counts, sort_keys=True)
    return merged
