"""Text a relay chose (page titles, error messages, stream data, redirect targets) on its way to the user.

A relay's 401 page may quote the request's Authorization header, a chat error
may repeat the key, a 502 page title may carry terminal escape sequences. The
real CLI and a real daemon run here against such a relay on 127.0.0.1, and
every place their text can reach is read back: the database and its WAL,
stdout and stderr of `pick`, `probe` and `status` (tables and JSON), the
daemon's debug log, its page, /api/status and /metrics.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest
import yaml
from aiohttp import web

from servers import MODELS, ServerThread

KEY = "sk-proj-" + "".join(f"{n:02d}Zq" for n in range(39)) + "x"  # 164 characters, every 8 of them unique
LINEPICKER = [sys.executable, "-m", "linepicker"]
KEY_RUN = 8  # no run of this many characters of the key may be kept (issue 11)
# ESC/OSC (set the window title, ring the bell), CSI colours, a carriage return and a backspace that
# overwrite what came before, DEL, the C1 CSI, and a right-to-left override that reorders the line.
HOSTILE_TITLE = "\x1b]0;pwned\x07\x1b[31mRED\x1b[0m\rsafe\x08\x7f\u009b2J\u202ereversed\u2066x\u2069 502"
RAW_CONTROLS = ["\x1b", "\x07", "\r", "\x08", "\x7f", "\u009b", "\u202e", "\u2066", "\u2069"]


def key_runs(text: str) -> list[str]:
    """Every stretch of the text that is KEY_RUN or more characters of the key."""
    found = set()
    for start in range(len(KEY) - KEY_RUN + 1):
        piece = KEY[start : start + KEY_RUN]
        if piece in text:
            found.add(piece)
    return sorted(found)


class HostileRelay:
    """Lines under /<name>/v1/...: each echoes the key or sends control characters in its own way."""

    async def models(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        auth = request.headers.get("Authorization", "")
        if name == "echo401":  # the title starts with the header: a cut at 80 characters keeps most of the key
            page = f"<html><head><title>401 {auth} rejected</title></head><body>{auth}</body></html>"
            return web.Response(status=401, text=page, content_type="text/html")
        if name == "osc502":
            page = f"<html><head><title>{HOSTILE_TITLE}</title></head></html>"
            return web.Response(status=502, text=page, content_type="text/html")
        return web.json_response(MODELS)

    async def chat(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        if name == "chatecho":  # the key past the middle of a long message: a cut at 200 characters keeps part of it
            message = "Incorrect API key provided, the relay says so at length " + "." * 100 + " " + KEY
            return web.json_response({"error": {"message": message, "type": "invalid_request_error"}}, status=401)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(f"data: upstream said {KEY}\x1b[2J\n\n".encode())  # not JSON: quoted in the error, cut at 80
        return response


@dataclass
class Seen:
    """Everything the CLI and the daemon left where a user or another program can read it."""

    places: dict[str, bytes]  # outputs, log, pages, and the database files byte for byte
    stored_errors: dict[str, str]  # the first error recorded for each line (sample or chat)
    stored_text: list[str]  # every text value in every table of the database


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read()


@pytest.fixture(scope="module")
def seen(server: ServerThread, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Seen]:
    home = tmp_path_factory.mktemp("relaytext")
    relay = HostileRelay()
    app = web.Application()
    app.router.add_get("/{name}/v1/models", relay.models)
    app.router.add_post("/{name}/v1/chat/completions", relay.chat)
    base = f"http://127.0.0.1:{server.start_app(app)}"
    config = home / "lines.yaml"
    names = ["good", "echo401", "osc502", "chatecho", "streamecho"]
    config.write_text(
        yaml.safe_dump(
            {
                "key_env": "OPENAI_API_KEY",
                "probe": {"timeout": 2, "samples": 1, "interval": 0.3, "down_interval": 0.15, "chat": {"model": "m", "timeout": 2}},
                "lines": [{"name": name, "url": f"{base}/{name}"} for name in names],
            }
        )
    )
    db = home / "db" / "linepicker.db"
    env = {k: v for k, v in os.environ.items() if "PROXY" not in k.upper() and k not in ("LINEPICKER_CONFIG", "LINEPICKER_DB")}
    env.update(OPENAI_API_KEY=KEY, HOME=str(home), XDG_CONFIG_HOME=str(home / "xdg"), XDG_DATA_HOME=str(home / "xdg"), COLUMNS="200")
    common = ["--config", str(config), "--db", str(db)]
    places: dict[str, bytes] = {}
    for command in (["pick"], ["pick", "--json"], ["probe"], ["probe", "--json"], ["status"], ["status", "--json"]):
        out = subprocess.run([*LINEPICKER, *command, *common], capture_output=True, env=env, timeout=60)
        places[f"{' '.join(command)} stdout"] = out.stdout
        places[f"{' '.join(command)} stderr"] = out.stderr
    daemon = subprocess.Popen([*LINEPICKER, "daemon", *common, "--listen", "127.0.0.1:0", "--log-level", "debug"], stderr=subprocess.PIPE, env=env)
    log: list[bytes] = []
    reader = threading.Thread(target=lambda: log.extend(iter(daemon.stderr.readline, b"")), daemon=True)  # type: ignore[union-attr]
    reader.start()
    try:
        deadline = time.monotonic() + 20
        url = None
        while url is None and time.monotonic() < deadline:
            url = next((m.group(0).decode() for line in list(log) if (m := re.search(rb"http://127\.0\.0\.1:\d+/", line))), None)
            time.sleep(0.05)
        assert url, b"".join(log).decode(errors="replace")
        while b"down after" not in b"".join(log) and time.monotonic() < deadline:
            time.sleep(0.05)  # a line's fall is logged with its last error
        for path in ("", "api/status", "metrics"):
            places[f"GET /{path}"] = _get(url + path)
        for path in db.parent.iterdir():
            places[f"{path.name} (live)"] = path.read_bytes()
    finally:
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(timeout=15)
        finally:
            daemon.kill()
        reader.join(timeout=5)
    places["daemon log"] = b"".join(log)
    for path in db.parent.iterdir():
        places[path.name] = path.read_bytes()
    import sqlite3
    from contextlib import closing

    with closing(sqlite3.connect(db)) as conn:
        rows = conn.execute(
            "select l.name, s.error from samples s join lines l on l.id = s.line_id where s.error is not null"
            " union all select l.name, c.error from chats c join lines l on l.id = c.line_id where c.error is not null"
        ).fetchall()
        tables = [name for (name,) in conn.execute("select name from sqlite_master where type = 'table'")]
        text = [value for table in tables for row in conn.execute(f"select * from {table}") for value in row if isinstance(value, str)]
    stored: dict[str, str] = {}
    for name, error in rows:
        stored.setdefault(name, error)
    yield Seen(places, stored, text)


def test_no_piece_of_a_long_key_echoed_by_a_relay_is_kept_anywhere(seen: Seen) -> None:
    leaks = {name: runs for name, data in seen.places.items() if (runs := key_runs(data.decode("utf-8", "replace")))}
    assert not leaks, f"pieces of the key leaked: {leaks}"
    assert {"echo401", "chatecho", "streamecho"} <= set(seen.stored_errors), seen.stored_errors
    assert "***" in seen.stored_errors["echo401"], "the page title is still shown, with the key masked"
    assert "malformed event" in seen.stored_errors["streamecho"]
    assert any("-wal" in name for name in seen.places), "the WAL was read too"


def test_control_characters_a_relay_sent_reach_no_terminal_file_or_page(seen: Seen) -> None:
    error = seen.stored_errors["osc502"]
    assert "pwned" in error and "reversed" in error, "the title is still shown, made harmless"
    texts = {name: data.decode("utf-8", "replace") for name, data in seen.places.items() if ".db" not in name}  # the database is binary
    texts.update({f"database value {n}": value for n, value in enumerate(seen.stored_text)})
    raw = {name: [c for c in RAW_CONTROLS if c in text] for name, text in texts.items()}
    assert not {name: found for name, found in raw.items() if found}, "raw control characters got through"
    for name in ("pick --json stdout", "status --json stdout", "GET /api/status"):
        text = json.dumps(json.loads(seen.places[name]), ensure_ascii=False)
        decoded = json.loads(seen.places[name])
        flat = json.dumps(decoded)  # \u001b escapes in JSON become raw ESC in the hands of `jq -r`
        assert "\\u001b" not in flat and "\\u009b" not in flat and "\\u202e" not in flat, (name, text[:300])


@pytest.mark.parametrize(
    "text, shown",
    [
        (f"Bearer {KEY}", "Bearer ***"),
        (f"key={KEY[40:60]}", "key=***"),
        (f"prefix{KEY[3:11].upper()}suffix", "prefix***suffix"),
        ("sk-ant-api03-abcdefghijklmnopqrstuvwxyz", "sk-***"),
        ('{"token": "abcdefghijklmnopqrstuvwxyz012345"}', '{"token": "***"}'),
        ("x-api-key: 0123456789abcdef0123", "x-api-key: ***"),
        ("eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl", "***"),
        ("Invalid token provided for this model", "Invalid token provided for this model"),
    ],
)
def test_the_key_in_any_piece_and_tokens_of_any_shape_are_masked(text: str, shown: str) -> None:
    from linepicker.probe.outcomes import relay_text

    assert relay_text(text, KEY) == shown


def test_masking_comes_before_the_cut() -> None:
    from linepicker.probe.outcomes import relay_text

    text = "x" * 70 + KEY
    cut = relay_text(text, KEY, 80)
    assert len(cut) <= 80 and not key_runs(cut) and not any(KEY[i : i + 5] in cut for i in range(len(KEY) - 5))


def test_a_gateway_line_opening_its_stream_with_an_error_of_escape_sequences_is_recorded_harmless(server: ServerThread) -> None:
    """The gateway's record of a failed attempt (kept in the database, shown on the page and by status) is relay text too."""
    import openai

    from linepicker.config import GatewaySettings, Line, Listen
    from linepicker.daemon.gateway import Gateway
    from servers import head, read_request, start_api_relay, start_raw_server

    async def error_stream(reader, writer) -> None:  # type: ignore[no-untyped-def]
        await read_request(reader)
        body = f"event: error\ndata: {HOSTILE_TITLE} upstream refused\n\n".encode()
        writer.write(head(content_type="text/event-stream", content_length=len(body)) + body)
        await writer.drain()
        writer.close()

    api = start_api_relay(server)
    attempts: list = []
    order = [Line("hostile", start_raw_server(server, error_stream)), Line("b", api.url("b"))]
    gateway = Gateway(GatewaySettings(listen=Listen("127.0.0.1", 0)), lambda: order, attempts.append)
    url = server.run(gateway.start())
    try:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="sk-gw-relay-text-0123456789", max_retries=0, timeout=10)
        stream = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}], stream=True)
        assert "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices), "the next line answered"
        deadline = time.monotonic() + 5
        while len(attempts) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        server.run(gateway.close())
    recorded = attempts[0].error or ""
    assert "pwned" in recorded, recorded  # (the CR in the title ends the event's data line, as SSE says)
    assert not [c for c in RAW_CONTROLS if c in recorded], repr(recorded)
