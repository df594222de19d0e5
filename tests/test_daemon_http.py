"""The daemon's HTTP side under requests no browser of the user's would send: foreign Host and Origin values.

Requests are written byte by byte on raw sockets to a running daemon on
127.0.0.1, so every header is exactly what a DNS-rebinding page or a
misbehaving client would send.
"""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path
from typing import Any, Awaitable, Callable

import pytest

from linepicker.config import Listen, load_config
from linepicker.daemon.guard import refusal
from linepicker.daemon.runner import Daemon
from linepicker.store import Store
from servers import Relay

FAST = {"timeout": 1, "samples": 1, "interval": 0.3, "down_interval": 0.15}


def serving(daemon: Daemon, body: Callable[[], Awaitable[Any]]) -> Any:
    async def main() -> Any:
        task = asyncio.ensure_future(daemon.serve())
        try:
            deadline = time.monotonic() + 10
            while daemon.url is None and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            return await body()
        finally:
            daemon.stop("test over")
            await asyncio.wait_for(task, 10)
            daemon.store.close()

    return asyncio.run(main())


def raw_get(port: int, path: str, headers: dict[str, str], version: str = "HTTP/1.1") -> tuple[int, str]:
    """Send exactly these headers; the status code and body of the answer."""
    head = f"GET {path} {version}\r\n" + "".join(f"{name}: {value}\r\n" for name, value in headers.items()) + "Connection: close\r\n\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(head.encode("latin-1"))
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    status_line, _, rest = data.partition(b"\r\n")
    return int(status_line.split()[1]), rest.partition(b"\r\n\r\n")[2].decode(errors="replace")


@pytest.fixture
def daemon(relay: Relay, write_config, db_path: Path) -> Daemon:
    config = write_config({"a": relay.url("a")}, probe=FAST)
    return Daemon(load_config(config), Store(db_path), Listen("127.0.0.1", 0))


PATHS = ["/", "/api/status", "/metrics", "/healthz"]


def test_only_requests_naming_the_daemon_are_answered(daemon: Daemon) -> None:
    """Issue 11 item 10: a DNS-rebinding page (Host: its own name, resolved to 127.0.0.1) read /api/status."""

    async def body() -> dict[tuple[str, str], tuple[int, str]]:
        port = int(daemon.url.rsplit(":", 1)[1].strip("/"))  # type: ignore[union-attr]
        await asyncio.sleep(0.5)  # a round, so that /healthz is not stale
        cases = {
            "rebinding name": {"Host": f"rebind.attacker.example:{port}"},
            "rebinding name, no port": {"Host": "rebind.attacker.example"},
            "loopback, wrong port": {"Host": "127.0.0.1:1"},
            "loopback, no port (80)": {"Host": "127.0.0.1"},
            "another address": {"Host": f"10.1.2.3:{port}"},
            "malformed": {"Host": f"a b:{port}"},
            "foreign page": {"Host": f"127.0.0.1:{port}", "Origin": "https://attacker.example"},
            "sandboxed page": {"Host": f"127.0.0.1:{port}", "Origin": "null"},
            "listen address": {"Host": f"127.0.0.1:{port}"},
            "localhost": {"Host": f"localhost:{port}"},
            "localhost with the root dot": {"Host": f"localhost.:{port}"},
            "IPv6 loopback": {"Host": f"[::1]:{port}"},
            "HTTP/1.0 without Host": {},
            "own page": {"Host": f"127.0.0.1:{port}", "Origin": f"http://127.0.0.1:{port}"},
            "local page": {"Host": f"localhost:{port}", "Origin": "http://localhost:3000"},
        }
        answers = {}
        for name, headers in cases.items():
            for path in PATHS:
                version = "HTTP/1.0" if not headers else "HTTP/1.1"
                answers[name, path] = await asyncio.to_thread(raw_get, port, path, headers, version)
        return answers

    answers = serving(daemon, body)
    refused = {"rebinding name", "rebinding name, no port", "loopback, wrong port", "loopback, no port (80)", "another address", "malformed", "foreign page", "sandboxed page"}
    for (case, path), (status, text) in answers.items():
        if case in refused:
            assert status == 403, (case, path, status, text[:200])
            assert text.startswith("forbidden: ") and text.count("\n") == 1, (case, text)
            assert '"lines"' not in text and "linepicker_" not in text
        else:
            assert status == 200, (case, path, status, text[:200])


@pytest.mark.parametrize(
    "listen, host, origin, answered",
    [
        (Listen("0.0.0.0", 9137), "192.168.1.5:9137", None, True),  # every address is the listen address
        (Listen("0.0.0.0", 9137), "evil.example:9137", None, False),
        (Listen("192.168.1.5", 9137), "192.168.1.5:9137", "http://192.168.1.5:9137", True),
        (Listen("192.168.1.5", 9137), "192.168.1.6:9137", None, False),
        (Listen("box.lan", 9137), "BOX.LAN:9137", None, True),
        (Listen("127.0.0.1", 9137), "127.0.0.1:9137", "http://127.0.0.1.attacker.example", False),
        (Listen("127.0.0.1", 9137), "127.0.0.1:9137", "http://user@localhost", False),  # an Origin never has userinfo
    ],
)
def test_the_listen_address_and_loopback_names_are_what_is_answered(listen: Listen, host: str, origin: str | None, answered: bool) -> None:
    assert (refusal(listen, host, origin, 9137) is None) is answered
