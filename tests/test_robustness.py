"""Bad input and hard stops: a damaged database, hostile target files, SIGKILL mid-write, many processes on one
database beside a running daemon, and a key that must never leak. Every process here is the real CLI or daemon."""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import shutil
import signal
import sqlite3
import stat
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import yaml

import linepicker.store
from linepicker.config import Line
from linepicker.probe.phases import Phases
from linepicker.probe.sample import Sample
from linepicker.clientenv import client_env
from linepicker.store import Store
from linepicker.targets import render_dotenv, update_claude_settings, update_dotenv
from children import KILLED_WRITER
from servers import MODELS_BODY, Relay, ServerThread, head, read_request, redirects, start_raw_server

SECRET = f"sk-test-SECRET-{uuid.uuid4().hex}"
LINEPICKER = [sys.executable, "-m", "linepicker"]


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def one_line_error(stderr: str, path: Path) -> str:
    """The error a user sees: exactly one 'linepicker: error:' line naming the file, and no traceback."""
    assert "Traceback" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("linepicker: error:")]
    assert len(errors) == 1, stderr
    assert str(path) in errors[0], errors[0]
    return errors[0]


# ---------------------------------------------------------------- the database


def _filled_database(path: Path, url: str = "http://127.0.0.1:9", samples: int = 3000) -> None:
    """A database whose samples fill many pages of their own."""
    with Store(path) as store:
        ids = store.line_ids([Line("a", url)])
        round_id = store.start_round("pick")
        now = time.time()
        store.add_samples(
            round_id, ids, [Sample("a", n, now - n / 10, "ok", True, Phases(ttfb_ms=10.0 + n % 7, total_ms=12.0)) for n in range(samples)]
        )
        store.finish_round(round_id, "a", "test")
        store.record_decision("a", url, None, "test", round_id)
        store.db.execute("pragma wal_checkpoint(truncate)")


def _smash(data: bytes, what: str, sample_pages: list[int]) -> bytes:
    page = 4096
    if what == "header":
        return data[:16] + bytes(range(84)) + data[100:]
    if what == "sample pages":  # the file opens and migrates; only the first query that reads samples fails
        smashed = bytearray(data)
        for number in sample_pages:
            smashed[(number - 1) * page : number * page] = bytes([0x5A]) * page
        return bytes(smashed)
    if what == "cut in half":
        return data[: len(data) // 2 // page * page]
    raise ValueError(what)


def _pages_of(path: Path, table: str) -> list[int]:
    with closing(sqlite3.connect(path)) as conn:
        try:
            return [row[0] for row in conn.execute("select pageno from dbstat where name = ? and pagetype = 'leaf'", [table])]
        except sqlite3.OperationalError:
            pytest.skip("this SQLite has no dbstat table to find a table's pages")


@pytest.mark.parametrize("damage", ["header", "sample pages", "cut in half"])
@pytest.mark.parametrize("command", ["pick", "probe", "status"])
def test_a_damaged_database_is_one_line_naming_it_and_is_left_as_it_was(
    relay: Relay, write_config, run, tmp_path: Path, damage: str, command: str
) -> None:
    good = tmp_path / "good.db"
    url = relay.url("a")
    _filled_database(good, url)
    path = tmp_path / "damaged.db"
    path.write_bytes(_smash(good.read_bytes(), damage, _pages_of(good, "samples")))
    before = path.read_bytes()
    result = run(command, "--config", str(write_config({"a": url})), db=path)
    assert result.exit_code == 1
    message = one_line_error(result.stderr, path)
    assert "malformed" in message or "not a database" in message
    assert path.read_bytes() == before, "a damaged database is evidence: never rewritten"


def test_another_programs_sqlite_database_is_not_touched(relay: Relay, write_config, run, tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    with sqlite3.connect(path) as conn:
        conn.execute("create table notes (body text)")
        conn.execute("insert into notes values ('mine')")
    conn.close()
    before = path.read_bytes()
    result = run("pick", "--config", str(write_config({"a": relay.url("a")})), db=path)
    assert result.exit_code == 1
    assert "another program" in one_line_error(result.stderr, path)
    assert path.read_bytes() == before, "not even its journal mode may change"


def test_a_database_from_before_the_application_id_still_opens(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    _filled_database(path)
    with closing(sqlite3.connect(path)) as conn:
        assert conn.execute("pragma application_id").fetchone()[0] == linepicker.store.APPLICATION_ID, "new files are stamped"
        conn.execute("pragma application_id = 0")
        conn.commit()
    with Store(path) as store:
        assert store.choice().name == "a", "recognised by its migrations table"


def test_a_database_locked_beyond_the_busy_timeout_is_one_line(
    relay: Relay, write_config, run, db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = write_config({"a": relay.url("a")})
    assert run("pick", "--config", str(config)).exit_code == 0
    monkeypatch.setattr(linepicker.store, "BUSY_TIMEOUT_S", 0.5)
    holder = sqlite3.connect(db_path, isolation_level=None)
    holder.execute("begin exclusive")
    try:
        started = time.monotonic()
        result = run("pick", "--config", str(config))
        waited = time.monotonic() - started
    finally:
        holder.execute("rollback")
        holder.close()
    assert result.exit_code == 1
    assert "database is locked" in one_line_error(result.stderr, db_path)
    assert 0.4 < waited < 10, "waits for the busy timeout, then gives up"
    assert run("pick", "--config", str(config)).exit_code == 0, "and works again once the lock is gone"


@contextmanager
def read_only(path: Path) -> Iterator[None]:
    """Make a file or directory unwritable, even for root (which ignores permission bits): chattr +i."""
    if os.geteuid() != 0:
        original = mode(path)
        path.chmod(original & 0o555)
        try:
            yield
        finally:
            path.chmod(original)
        return
    if subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode != 0:
        pytest.skip("running as root on a filesystem without chattr +i: cannot make a file unwritable")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)


@pytest.mark.parametrize("what", ["the file", "its directory"])
def test_a_database_that_cannot_be_written_is_one_line_and_kept(relay: Relay, write_config, run, tmp_path: Path, what: str) -> None:
    config = write_config({"a": relay.url("a")})
    path = tmp_path / "ro" / "lp.db"
    assert run("pick", "--config", str(config), db=path).exit_code == 0
    with Store(path) as store:
        store.db.execute("pragma wal_checkpoint(truncate)")
    before = path.read_bytes()
    with read_only(path if what == "the file" else path.parent):
        result = run("pick", "--config", str(config), db=path)
        env = run("env", db=path)
    assert result.exit_code == 1
    assert re.search(r"readonly|unable to open|read-only|permission", one_line_error(result.stderr, path), re.I)
    assert path.read_bytes() == before
    if what == "the file":
        assert env.exit_code == 0 and "OPENAI_BASE_URL" in env.stdout, "the last choice is still readable"


READERS = {
    "env": ["env", "--shell", "bash"],
    "status": ["status", "--json"],
    "history": ["history", "--json"],
    "doctor": ["doctor", "--json"],
    "report": ["report", "--html", "{out}/report.html", "--json"],
    "pick": ["pick", "--json"],
}


def _on_a_read_only_mount(state: Path, mount: Path, out: Path, config: Path) -> dict[str, tuple[int, str, str]]:
    """Each command of READERS run on a read-only bind mount of `state` (as root, in a mount namespace of its own)."""
    script = [f"mount --bind {state} {mount}", f"mount -o remount,bind,ro {mount}", f"touch {mount}/probe 2>/dev/null && exit 97"]
    console = Path(sys.executable).parent / "linepicker"
    for name, argv in READERS.items():
        args = " ".join(f"'{a.format(out=out)}'" for a in argv)
        extra = "" if name == "env" else f" --config '{config}'"
        script.append(f"'{console}' {args} --db '{mount}/lp.db'{extra} >'{out}/{name}.out' 2>'{out}/{name}.err'; echo $? >'{out}/{name}.rc'")
    done = subprocess.run(["unshare", "-m", "sh", "-c", " && ".join(script[:3]) + "; " + "; ".join(script[3:])], capture_output=True, text=True)
    if done.returncode == 97:
        pytest.fail("the bind mount is writable")
    if done.returncode != 0 and not (out / "env.rc").exists():
        pytest.skip(f"cannot make a read-only mount here: {done.stderr.strip()}")
    return {name: (int((out / f"{name}.rc").read_text()), (out / f"{name}.out").read_text(), (out / f"{name}.err").read_text()) for name in READERS}


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"), reason="a read-only mount needs root (permission bits do not stop root)")
def test_readers_work_on_a_read_only_filesystem(relay: Relay, write_config, run, tmp_path: Path) -> None:
    """WAL readers want a -shm file beside the database; on a read-only disk it cannot be created."""
    config = write_config({"a": relay.url("a")})
    state, mount, out = tmp_path / "state", tmp_path / "mnt", tmp_path / "out"
    for directory in (state, mount, out):
        directory.mkdir()
    assert run("pick", "--config", str(config), db=state / "lp.db").exit_code == 0
    assert sorted(p.name for p in state.iterdir()) == ["lp.db"], "a clean close leaves no -wal or -shm"
    before = (state / "lp.db").read_bytes()

    results = _on_a_read_only_mount(state, mount, out, config)

    for name in ("env", "status", "history", "doctor", "report"):
        code, stdout, stderr = results[name]
        assert code in (0, 1) and "Traceback" not in stderr and "error:" not in stderr, (name, stderr)
    assert f"export OPENAI_BASE_URL='{relay.url('a')}/v1'" in results["env"][1]
    assert json.loads(results["status"][1])["chosen"]["name"] == "a"
    assert [line["name"] for line in json.loads(results["history"][1])["lines"]] == ["a"]
    assert (out / "report.html").stat().st_size > 1000
    code, _, stderr = results["pick"]
    assert code == 1 and "readonly" in one_line_error(stderr, mount / "lp.db")
    assert (state / "lp.db").read_bytes() == before and sorted(p.name for p in state.iterdir()) == ["lp.db"]


# ---------------------------------------------------------------- target files


ODD_DOTENV = (
    "# OPENAI_BASE_URL=in a comment, not ours to change\r\n"
    "\r\n"
    "export OPENAI_BASE_URL = 'https://old.example/v1'  # the relay\r\n"
    "\tOPENAI_API_BASE=\"https://old.example/v1\"\r\n"
    "NOEQUALS\r\n"
    "PASSWORD='p#ss w=rd'\r\n"
    "MULTI=\"first\r\nsecond\"\r\n"
    "ANTHROPIC_BASE_URL=\r\n"
    "export OTHER_KEY=kept # trailing comment"
)


def test_an_odd_dotenv_keeps_every_line_that_is_not_ours(tmp_path: Path) -> None:
    path = tmp_path / ".env"
    path.write_bytes(ODD_DOTENV.encode())
    update_dotenv(path, "https://new.example")
    lines = path.read_bytes().decode().split("\r\n")
    assert lines == [
        "# OPENAI_BASE_URL=in a comment, not ours to change",
        "",
        "export OPENAI_BASE_URL = 'https://new.example/v1'  # the relay",
        '\tOPENAI_API_BASE="https://new.example/v1"',
        "NOEQUALS",
        "PASSWORD='p#ss w=rd'",
        'MULTI="first',
        'second"',
        "ANTHROPIC_BASE_URL=https://new.example",
        "export OTHER_KEY=kept # trailing comment",
    ], "no final newline was there, and none was needed"


@pytest.mark.parametrize("quote", ["'", '"'])
def test_a_quoted_dotenv_value_stays_one_value_whatever_the_url_holds(tmp_path: Path, quote: str) -> None:
    """A quote inside the URL must not end the value early: bash reads it back whole."""
    url = "https://relay.example/it's/\"q\""
    path = tmp_path / ".env"
    path.write_text(f"OPENAI_BASE_URL={quote}old{quote}\n")
    update_dotenv(path, url)
    shell = subprocess.run(["bash", "-c", f"set -a; . {path}; printf %s \"$OPENAI_BASE_URL\""], capture_output=True, text=True)
    assert shell.returncode == 0, shell.stderr
    assert shell.stdout == f"{url}/v1"


def test_new_target_files_from_pick_are_private(relay: Relay, write_config, run, tmp_path: Path) -> None:
    os.umask(0o022)
    config = write_config({"a": relay.url("a")}, targets={"dotenv": "new/dir/.env", "claude_settings": "new/claude/settings.json"})
    assert run("pick", "--config", str(config)).exit_code == 0
    assert mode(tmp_path / "new/dir/.env") == 0o600
    assert mode(tmp_path / "new/claude/settings.json") == 0o600


URLS = ("https://a.example", "https://b.example")
SETTINGS = {"model": "opus", "permissions": {"allow": [f"Bash(tool-{n}:*)" for n in range(20_000)]}, "env": {"KEEP": "1"}}
DOTENV = "# mine\nexport TOKEN='abc'\nOPENAI_BASE_URL=\"x\"\nDEBUG=1 # on\n"


def _settings_for(url: str) -> dict:
    return {**SETTINGS, "env": {"KEEP": "1", "ANTHROPIC_BASE_URL": url}}


def _kill_writers(directory: Path, kills: int, seed: int) -> set[str]:
    """SIGKILL a writer of both files at random moments; each time both must parse, old or new, modes kept."""
    rng = random.Random(seed)
    directory.mkdir()
    dotenv, settings = directory / ".env", directory / "settings.json"
    dotenvs = {render_dotenv(DOTENV, client_env(url)): url for url in URLS}
    dotenv.write_text(render_dotenv(DOTENV, client_env(URLS[0])))
    settings.write_text(json.dumps(_settings_for(URLS[0]), indent=2))
    dotenv.chmod(0o640)
    settings.chmod(0o604)
    seen: set[str] = set()
    for _ in range(kills):
        child = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(dotenv), str(settings), *URLS], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            assert child.stdout is not None and child.stdout.readline() == b"ready\n", child.stderr.read() if child.stderr else ""
            time.sleep(rng.uniform(0, 0.12))  # a few rewrites of a 600 KB settings.json (about 35 ms each), so kills land before and after switches
            assert child.poll() is None, child.stderr.read() if child.stderr else ""
        finally:
            child.send_signal(signal.SIGKILL)
            child.communicate()
        text = dotenv.read_text()
        assert text in dotenvs, f"torn .env after a kill: {text!r}"
        data = json.loads(settings.read_text())
        url = data["env"]["ANTHROPIC_BASE_URL"]
        assert data == _settings_for(url), "settings.json lost or changed a key that is not ours"
        assert (mode(dotenv), mode(settings)) == (0o640, 0o604)
        seen.add(url)
    return seen


def test_sigkill_at_random_moments_never_tears_a_target_file(tmp_path: Path) -> None:
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=2) as pool:
        seen = set().union(*pool.map(lambda n: _kill_writers(tmp_path / f"w{n}", 100, seed=n), range(2)))
    assert seen == set(URLS), "the writer must have been caught both before and after a switch"
    assert time.monotonic() - started < 40


def test_temp_files_of_killed_writers_are_cleared_by_the_next_write(tmp_path: Path) -> None:
    settings = tmp_path / "settings.json"
    settings.write_text('{"model": "opus"}')
    stale = tmp_path / ".settings.json.k1ll3d.tmp"
    stale.write_text('{"half": ')
    an_hour_ago = time.time() - 3600
    os.utime(stale, (an_hour_ago, an_hour_ago))
    in_flight = tmp_path / ".settings.json.wr1t1ng.tmp"  # another process, writing right now
    in_flight.write_text("{")
    update_claude_settings(settings, URLS[0])
    assert not stale.exists(), "a killed writer's leftover does not pile up"
    assert in_flight.exists(), "a live writer's temp file is not pulled from under it"
    assert json.loads(settings.read_text())["model"] == "opus"


# ---------------------------------------------------------------- many processes, one database, one key

HOOK = r"""
import json, os, sys
def cmdline(pid):
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return f.read().decode(errors="replace")
json.dump({"argv": sys.argv, "self": cmdline("self"), "parent": cmdline(os.getppid())}, open(sys.argv[1], "w"))
"""
PICKS = 20


def _echoes_the_key_back(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> Any:
    """A gateway page that repeats the request's Authorization header in its title, as some misconfigured proxies do."""

    async def handler() -> None:
        request = (await read_request(reader)).decode(errors="replace")
        auth = next((line.split(":", 1)[1].strip() for line in request.split("\r\n") if line.lower().startswith("authorization:")), "none")
        body = f"<html><head><title>{auth}</title></head><body>{request}</body></html>".encode()
        writer.write(head("502 Bad Gateway", content_type="text/html", content_length=len(body)) + body)
        await writer.drain()
        writer.close()

    return handler()


def _redirects_with_the_key(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> Any:
    """A redirect whose Location carries the key, to a scheme the probe refuses: the error quotes the Location."""

    async def handler() -> None:
        request = (await read_request(reader)).decode(errors="replace")
        auth = next((line.split(" ")[-1] for line in request.split("\r\n") if line.lower().startswith("authorization:")), "none")
        writer.write(head("302 Found", location=f"ftp://127.0.0.1/?key={auth}", content_length=0))
        await writer.drain()
        writer.close()

    return handler()


@dataclass
class SharedDatabase:
    """What 20 concurrent picks beside a running daemon left behind, for the tests below to judge."""

    db: Path
    relay: Relay
    picks: list[tuple[int, str, str]]  # returncode, stdout, stderr
    daemon_log: str
    daemon_code: int | None
    pages: dict[str, str]
    cli_outputs: list[str]
    hook: dict
    targets: list[Path]
    elapsed_s: float
    files_live: dict[str, bytes]  # the database, -wal and -shm while the daemon still had them open


def _http_get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read().decode()


def _collect(stream: Any, into: list[str]) -> threading.Thread:
    thread = threading.Thread(target=lambda: into.extend(iter(stream.readline, "")), daemon=True)
    thread.start()
    return thread


def _wait(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@pytest.fixture(scope="module")
def shared(server: ServerThread, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SharedDatabase]:
    home = tmp_path_factory.mktemp("shared")
    relay = server.start_relay()
    hook_out = home / "hook.json"
    lines = {
        "good": relay.url("good", mode="auth", key=SECRET),
        "backup": relay.url("backup", mode="auth", key=SECRET, delay_ms=30),
        "wrongkey": relay.url("wrongkey", mode="auth", key="sk-some-other-key"),
        "echo": start_raw_server(server, _echoes_the_key_back),
        "leaky-redirect": start_raw_server(server, _redirects_with_the_key),
    }
    config = home / "lines.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "key_env": "OPENAI_API_KEY",
                "probe": {"timeout": 2, "samples": 1, "interval": 0.3, "down_interval": 0.15},
                "policy": {"fall": 1, "rise": 1},
                "targets": {"dotenv": "out/.env", "claude_settings": "out/settings.json"},
                "on_switch": [sys.executable, "-c", HOOK, str(hook_out)],
                "lines": [{"name": name, "url": url} for name, url in lines.items()],
            }
        )
    )
    db = home / "db" / "linepicker.db"
    env = {k: v for k, v in os.environ.items() if "PROXY" not in k.upper() and k not in ("LINEPICKER_CONFIG", "LINEPICKER_DB")}
    env.update(OPENAI_API_KEY=SECRET, HOME=str(home), XDG_CONFIG_HOME=str(home / "xdg"), XDG_DATA_HOME=str(home / "xdg"))
    common = ["--config", str(config), "--db", str(db)]
    started = time.monotonic()
    daemon = subprocess.Popen(
        [*LINEPICKER, "daemon", *common, "--listen", "127.0.0.1:0", "--log-level", "debug"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env,
    )
    log: list[str] = []
    reader = _collect(daemon.stderr, log)
    try:
        # All at once on a database that does not exist yet: the daemon and every pick race to create it.
        picks = [subprocess.Popen([*LINEPICKER, "pick", "--json", *common], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for _ in range(PICKS)]
        results = [(p.wait(timeout=120), p.stdout.read(), p.stderr.read()) for p in picks]  # type: ignore[union-attr]
        elapsed = time.monotonic() - started
        page = _wait(lambda: next((m.group(0) for m in map(re.compile(r"http://127\.0\.0\.1:\d+/").search, log) if m), None), 20, "the status page URL")
        relay.set("good", mode="html502")  # the daemon must now switch to backup, and run on_switch
        hook = json.loads(_wait(lambda: hook_out.exists() and hook_out.read_text(), 20, "on_switch after a switch"))
        pages = {path: _http_get(page.rstrip("/") + path) for path in ("/", "/api/status", "/metrics")}
        outputs = [subprocess.run([*LINEPICKER, command, *args, *common], capture_output=True, text=True, env=env, timeout=60) for command, args in (("status", []), ("status", ["--json"]), ("probe", ["--json"]), ("pick", []))]
        files_live = {path.name: path.read_bytes() for path in db.parent.iterdir()}
    finally:
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(timeout=15)
        finally:
            daemon.kill()
        reader.join(timeout=5)
    yield SharedDatabase(
        db=db,
        relay=relay,
        picks=results,
        daemon_log="".join(log),
        daemon_code=daemon.returncode,
        pages=pages,
        cli_outputs=[text for out in outputs for text in (out.stdout, out.stderr)],
        hook=hook,
        targets=[home / "out" / ".env", home / "out" / "settings.json"],
        elapsed_s=elapsed,
        files_live=files_live,
    )


def test_twenty_picks_beside_a_daemon_on_a_new_database_all_succeed_and_are_all_recorded(shared: SharedDatabase) -> None:
    for code, _, stderr in shared.picks:
        assert "locked" not in stderr and "Traceback" not in stderr, stderr
        assert code == 0, stderr
    assert {json.loads(stdout)["chosen"]["name"] for _, stdout, _ in shared.picks} <= {"good", "backup"}
    with closing(sqlite3.connect(shared.db)) as conn:
        picks = conn.execute("select id from rounds where kind = 'pick' and finished_at is not null").fetchall()
        assert len(picks) >= PICKS + 1, "every pick's round, and the one after the daemon switched"
        for (round_id,) in picks:
            lines = conn.execute("select count(distinct line_id) from samples where round_id = ?", [round_id]).fetchone()[0]
            assert lines == 5, f"round {round_id} recorded {lines} of 5 lines"
        daemon_rounds = conn.execute("select count(*) from rounds where kind != 'pick' and kind != 'probe'").fetchone()[0]
        assert daemon_rounds >= 2, "the daemon kept its own rounds going beside the picks"
        assert conn.execute("select name from decisions order by id desc limit 1").fetchone()[0] == "backup"
    assert shared.daemon_code == 0, shared.daemon_log
    assert "locked" not in shared.daemon_log and "Traceback" not in shared.daemon_log, shared.daemon_log


def test_the_key_is_sent_but_never_written_shown_or_passed_on(shared: SharedDatabase) -> None:
    sent = [h.get("Authorization") for h in shared.relay.requests["good"]]
    assert f"Bearer {SECRET}" in sent, "the key really was in play"
    with closing(sqlite3.connect(shared.db)) as conn:
        errors = dict(conn.execute("select l.name, s.error from samples s join lines l on l.id = s.line_id where s.error is not null"))
    assert "***" in errors["echo"], "the gateway page quoted the key, and the error kept its title with the key masked"
    assert "***" in errors["leaky-redirect"]
    places = {f"{name} (live)": data for name, data in shared.files_live.items()}
    places.update({path.name: path.read_bytes() for path in shared.db.parent.iterdir()})
    places.update({f"pick {n} {stream}": text.encode() for n, (_, out, err) in enumerate(shared.picks) for stream, text in (("stdout", out), ("stderr", err))})
    places.update({f"cli output {n}": text.encode() for n, text in enumerate(shared.cli_outputs)})
    places["daemon log (debug)"] = shared.daemon_log.encode()
    places.update({f"GET {path}": body.encode() for path, body in shared.pages.items()})
    places["on_switch argv"] = json.dumps(shared.hook["argv"]).encode()
    places["on_switch command line"] = shared.hook["self"].encode()
    places["daemon command line"] = shared.hook["parent"].encode()
    places.update({str(path): path.read_bytes() for path in shared.targets})
    assert any(name.endswith("-wal (live)") for name in places), "the WAL is checked too"
    leaks = [name for name, data in places.items() if SECRET.encode() in data]
    assert not leaks, f"the key leaked into: {leaks}"


def test_target_files_created_beside_a_daemon_are_private(shared: SharedDatabase) -> None:
    assert [mode(path) for path in shared.targets] == [0o600, 0o600]


# ---------------------------------------------------------------- config files that are not config files


@pytest.mark.parametrize("source", ["/dev/zero", "a 17 MiB file"])
def test_an_endless_or_huge_config_is_refused_without_reading_it_all(run, tmp_path: Path, source: str) -> None:
    path = Path(source)
    if source == "a 17 MiB file":
        path = tmp_path / "huge.yaml"
        path.write_bytes(b"# " + b"x" * (17 * 2**20) + b"\n")
    if not path.exists():
        pytest.skip(f"{source} does not exist here")
    started = time.monotonic()
    result = run("pick", "--config", str(path))
    assert result.exit_code == 2
    assert "larger than 16 MiB" in one_line_error(result.stderr, path)
    assert time.monotonic() - started < 5
