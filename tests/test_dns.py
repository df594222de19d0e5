"""DNS that never answers costs its own line one timeout, and nothing more: not another line's lookup, not the exit.

The resolver is our own UDP server on 127.0.0.1 (tests/servers.py): it answers
the healthy lines' names and stays silent for the others. It is reached
through probe.nameservers, and, where the test runs as root, also as the
system's resolver: `unshare -m` gives the CLI a mount namespace of its own in
which /etc/resolv.conf names 127.0.0.1, leaving the machine's file alone.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from servers import Relay, ServerThread, start_dns_server

DEAD = 8  # more than the default executor's threads on a 2-core machine (6), which held the lookups before
HEALTHY = 3
TIMEOUT = 2.0


def _lines(relay: Relay, port_of: str) -> list[dict[str, str]]:
    port = relay.base.rsplit(":", 1)[1]
    healthy = [{"name": f"ok{n}", "url": f"http://ok{n}.{port_of}:{port}/line/ok{n}"} for n in range(HEALTHY)]
    for n in range(HEALTHY):
        relay.url(f"ok{n}", delay_ms=20)
    return healthy + [{"name": f"dead{n}", "url": f"http://dead{n}.{port_of}:{port}/line/dead{n}"} for n in range(DEAD)]


def _answers(zone: str) -> dict[str, str | None]:
    return {**{f"ok{n}.{zone}": "127.0.0.1" for n in range(HEALTHY)}, **{f"dead{n}.{zone}": None for n in range(DEAD)}}


def _run(argv: list[str], env: dict[str, str]) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120)
    return done, time.monotonic() - started


def _env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if "PROXY" not in k.upper() and not k.startswith("LINEPICKER_")}
    return env | {"HOME": str(tmp_path), "XDG_DATA_HOME": str(tmp_path / "data"), "XDG_CONFIG_HOME": str(tmp_path / "config")}


def _judge(done: subprocess.CompletedProcess[str], elapsed: float, command: str) -> None:
    assert done.returncode == 0, done.stderr
    lines = {line["name"]: line for line in json.loads(done.stdout)["lines"]}
    for n in range(HEALTHY):
        assert lines[f"ok{n}"]["outcomes"] == ["ok"] * 3, (command, lines[f"ok{n}"])
        assert lines[f"ok{n}"]["phases"]["dns_ms"] is not None, "the lookup is still timed as its own phase"
    for n in range(DEAD):
        assert set(lines[f"dead{n}"]["outcomes"]) <= {"timeout", "dns", "unfinished"}, lines[f"dead{n}"]
    # Spawn to exit: imports, one timeout for the dead lines, and nothing left waiting behind them.
    assert elapsed < TIMEOUT + 2.5, f"{command} took {elapsed:.1f}s with a {TIMEOUT}s timeout"


@pytest.mark.parametrize("command", ["probe", "pick"])
def test_silent_dns_delays_no_healthy_line_nor_the_exit(server: ServerThread, relay: Relay, tmp_path: Path, command: str) -> None:
    dns, port = start_dns_server(server, _answers("test"))
    config = tmp_path / "lines.yaml"
    probe = {"timeout": TIMEOUT, "samples": 3, "nameservers": [f"127.0.0.1:{port}"]}
    config.write_text(yaml.safe_dump({"probe": probe, "lines": _lines(relay, "test")}))
    done, elapsed = _run([sys.executable, "-m", "linepicker", command, "--json", "--config", str(config), "--db", str(tmp_path / "lp.db")], _env(tmp_path))
    _judge(done, elapsed, command)
    assert {f"dead{n}.test" for n in range(DEAD)} <= set(dns.queries), "the dead lines did ask our resolver"


def _port_53_free() -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.bind(("127.0.0.1", 53))
        except OSError:
            return False
    return True


@pytest.mark.skipif(
    not (hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("unshare") and _port_53_free()),
    reason="needs root, unshare and a free port 53 to give the CLI its own /etc/resolv.conf",
)
def test_silent_dns_of_the_system_resolver_delays_nothing_else(server: ServerThread, relay: Relay, tmp_path: Path) -> None:
    """The same without probe.nameservers: the resolver /etc/resolv.conf names (in a mount namespace of the CLI's own)."""
    try:
        dns, _ = start_dns_server(server, _answers("invalid"), port=53)
    except OSError as exc:  # taken between the check above and now, by another program on this machine
        pytest.skip(f"port 53 on 127.0.0.1: {exc.strerror}")
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("nameserver 127.0.0.1\n")
    config = tmp_path / "lines.yaml"
    config.write_text(yaml.safe_dump({"probe": {"timeout": TIMEOUT, "samples": 3}, "lines": _lines(relay, "invalid")}))
    script = f'mount --bind "{resolv}" /etc/resolv.conf && exec "$0" "$@"'
    argv = ["unshare", "-m", "--propagation", "private", "sh", "-c", script, sys.executable, "-m", "linepicker", "probe", "--json"]
    done, elapsed = _run([*argv, "--config", str(config), "--db", str(tmp_path / "lp.db")], _env(tmp_path))
    _judge(done, elapsed, "probe through the system resolver")
    assert "dead0.invalid" in dns.queries
