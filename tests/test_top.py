"""`linepicker top` against real daemons: what it prints once, what it does when nothing answers, and
how it behaves in a real terminal (tmux) while lines fail, the daemon goes away and Ctrl-C comes."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Callable, Iterator

import pytest

from linepicker.config import Listen
from servers import GATEWAY_PAGE, Relay, ServerThread, head, never_accepting_url, refused_url, replies
from test_daemon import FAST, chosen, get, make_daemon, serving, start_daemon_process, until


def top(*args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    """The real command in a child process, its stdout a pipe (as in a script)."""
    return subprocess.run([sys.executable, "-m", "linepicker", "top", *args], capture_output=True, text=True, timeout=timeout)


def test_top_shows_each_line_the_choice_and_the_last_switch(relay: Relay, write_config, db_path: Path) -> None:
    config = write_config({"a": relay.url("a", delay_ms=5), "b": relay.url("b", delay_ms=30)}, probe=FAST, policy={"fall": 2, "rise": 2})
    get(relay.url("a") + "/v1/models")  # the relay's first request pays its start-up in this process: not a's connect time
    relay.set("a", delay_ms=5)
    daemon = make_daemon(config, db_path, Listen("127.0.0.1", 0))

    async def body() -> tuple[subprocess.CompletedProcess, subprocess.CompletedProcess]:
        await until(lambda: chosen(daemon) == "a" and daemon.url is not None, what="a first choice")
        await until(lambda: daemon.live.rounds["daemon"] >= 3, what="three rounds")
        before = await asyncio.to_thread(top, "--url", daemon.url)
        relay.set("a", mode="block")
        await until(lambda: chosen(daemon) == "b" and daemon.live.health_of("a").label(2, 2) == "down", what="a down, b chosen")
        down_at = daemon.live.rounds["daemon"]  # the switch can come within a trend bucket: wait for one of failures only
        await until(lambda: daemon.live.rounds["daemon"] >= down_at + 3, what="three rounds with a down")
        return before, await asyncio.to_thread(top, "--url", daemon.url, "--once")

    before, after = serving(daemon, body)
    assert before.returncode == 0, before.stderr
    assert row(before.stdout, "a").startswith("▶ a") and " up " in row(before.stdout, "a")
    assert "last switch: none yet" in before.stdout, "the first choice is not a switch"
    assert any(mark in row(before.stdout, "a") for mark in "▁▂▃▄▅▆▇█"), "a trend of a's latency"
    assert "ttfb, last" in before.stdout and "connect" in before.stdout, "a pipe gets every column"

    assert after.returncode == 0, after.stderr
    assert "chosen: b" in after.stdout and row(after.stdout, "b").startswith("▶ b")
    assert "last switch: a → b at" in after.stdout
    assert " down " in row(after.stdout, "a") and "not_api" in row(after.stdout, "a") and "✗" in row(after.stdout, "a")
    assert "a: not eligible (down" in after.stdout and "Access Denied" in after.stdout


def row(screen: str, name: str) -> str:
    """A line's row of the table, stripped, with the ▶ of the chosen line if it is."""
    return next(text.strip() for text in screen.splitlines() if text.strip().removeprefix("▶ ").startswith(f"{name} "))


# Shaped like /api/status, but a score that is text: one sample of a rogue answer must not become a traceback.
ODD = json.dumps(
    {
        "window_s": 900, "choice": None, "decisions": [], "daemon": {"rounds": {}, "last_round_at": None},
        "lines": [{"name": "a", "url": "u", "state": "up", "healthy": True, "score": "fast", "p50_ms": 1, "success_rate": 1, "last_outcome": "ok"}],
    }
).encode()


@pytest.mark.parametrize(
    "where, expected",
    [
        ("refused", "no daemon answers at"),
        ("html", "answered HTTP 502"),
        ("not-json", "did not answer with a linepicker daemon's status"),
        ("wrong-types", "did not answer with a linepicker daemon's status"),
        ("silent", "timed out"),
    ],
)
def test_top_says_in_one_line_when_no_daemon_answers(server: ServerThread, where: str, expected: str) -> None:
    urls = {
        "refused": refused_url,
        "html": lambda: server.start_raw(replies(head("502 Bad Gateway", content_type="text/html", content_length=len(GATEWAY_PAGE)) + GATEWAY_PAGE)),
        "not-json": lambda: server.start_raw(replies(head(content_type="application/json", content_length=14) + b'{"lines": [1]}')),
        "silent": lambda: never_accepting_url(server),
        "wrong-types": lambda: server.start_raw(replies(head(content_type="application/json", content_length=len(ODD)) + ODD)),
    }
    started = time.monotonic()
    result = top("--url", urls[where]())
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1 and expected in result.stderr and "Traceback" not in result.stderr
    assert time.monotonic() - started < 15


def test_top_refuses_a_url_that_is_not_one(run) -> None:
    result = run("top", "--url", "127.0.0.1:9137", db=None)
    assert result.exit_code == 2 and "--url '127.0.0.1:9137'" in result.stderr


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Terminal:
    """One tmux pane on a private tmux server: what a person at a real terminal would see."""

    def __init__(self, command: list[str], cwd: Path, width: int = 120, height: int = 40):
        self.socket = f"linepicker-test-{uuid.uuid4().hex[:8]}"
        shell = " ".join(command) + "; echo EXIT=$?; sleep 60"
        self.tmux("new-session", "-d", "-x", str(width), "-y", str(height), "-c", str(cwd), shell)

    def tmux(self, *args: str) -> str:
        # The pane's size must come from the pane: pytest's COLUMNS and LINES would override it.
        env = {name: value for name, value in os.environ.items() if name not in ("COLUMNS", "LINES")}
        return subprocess.run(["tmux", "-L", self.socket, *args], capture_output=True, text=True, check=True, timeout=10, env=env).stdout

    def screen(self) -> str:
        return self.tmux("capture-pane", "-p")

    def everything(self) -> str:
        """The screen and all of its scrollback: a view that scrolled instead of redrawing shows here."""
        return self.tmux("capture-pane", "-p", "-S", "-")

    def wait_for(self, condition: Callable[[str], bool], what: str, timeout: float = 20) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            screen = self.screen()
            if condition(screen):
                return screen
            time.sleep(0.1)
        raise AssertionError(f"the terminal never showed {what}:\n{self.screen()}")

    def close(self) -> None:
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], capture_output=True, timeout=10)


@pytest.fixture
def terminal(tmp_path: Path) -> Iterator[Callable[..., Terminal]]:
    if shutil.which("tmux") is None:
        pytest.skip("tmux is not installed (CI installs Debian's tmux package)")
    opened: list[Terminal] = []

    def open_terminal(command: list[str], **size: int) -> Terminal:
        opened.append(Terminal(command, tmp_path, **size))
        return opened[-1]

    yield open_terminal
    for pane in opened:
        pane.close()


def test_top_in_a_real_terminal_redraws_in_place_and_quits_on_ctrl_c(relay: Relay, write_config, db_path: Path, terminal) -> None:
    config = write_config({"a": relay.url("a", delay_ms=5), "b": relay.url("b", delay_ms=30)}, probe=FAST, policy={"fall": 2, "rise": 2})
    url = f"http://127.0.0.1:{free_port()}"
    daemon = start_daemon_process(config, db_path, "--listen", url.removeprefix("http://"))
    try:
        deadline = time.monotonic() + 15
        while not _answers(url):
            assert time.monotonic() < deadline, "the daemon never finished a round"
            time.sleep(0.1)
        pane = terminal([sys.executable, "-m", "linepicker", "top", "--url", url, "--interval", "0.3"])
        pane.wait_for(lambda s: "▶ a" in s and "last switch: none yet" in s, "a chosen")
        relay.set("a", mode="block")
        screen = pane.wait_for(lambda s: "▶ b" in s and "last switch: a → b" in s, "the switch to b")
        assert "dns" in screen and "connect" in screen, "a 120-column terminal shows every phase"
        narrow = terminal([sys.executable, "-m", "linepicker", "top", "--url", url, "--once"], width=80)
        small = narrow.wait_for(lambda s: "EXIT=0" in s, "one view in 80 columns")
        assert row(small, "b").startswith("▶ b    up") and row(small, "a").startswith("a    down")
        assert "…" not in row(small, "a") + row(small, "b"), "80 columns cut no cell: the phases make room"
        daemon.terminate()
        daemon.communicate(timeout=10)
        screen = pane.wait_for(lambda s: "no answer since" in s, "that the daemon stopped answering")
        assert "▶ b" in screen, "the last view stays while it keeps trying"
        assert pane.everything().count("linepicker top") == 1, "redrawn in place, not scrolled"
        pane.tmux("send-keys", "C-c")
        final = pane.wait_for(lambda s: "EXIT=" in s, "top to exit")
        assert "EXIT=0" in final and "Traceback" not in pane.everything()
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.communicate(timeout=10)


def _answers(url: str) -> bool:
    try:
        return get(url + "/healthz")[0] == 200
    except OSError:
        return False


def test_top_draws_every_relay_of_the_daemon(relay: Relay, tmp_path: Path, db_path: Path) -> None:
    """With several relays each gets its own choice and table, under its name."""
    import textwrap

    from linepicker.config import load_setup
    from linepicker.daemon.runner import Daemon
    from linepicker.store import Store

    config = tmp_path / "lines.yaml"
    config.write_text(textwrap.dedent(f"""\
        probe: {{timeout: 2, samples: 1, interval: 1, down_interval: 1}}
        relays:
          gpt:
            exports: [OPENAI_BASE_URL]
            lines:
              - {{name: g-fast, url: "{relay.url("g-fast", delay_ms=5)}"}}
              - {{name: g-slow, url: "{relay.url("g-slow", delay_ms=60)}"}}
          claude:
            exports: [ANTHROPIC_BASE_URL]
            lines:
              - {{name: c-only, url: "{relay.url("c-only", delay_ms=5)}"}}
        """))
    daemon = Daemon(load_setup(config), Store(db_path), Listen("127.0.0.1", 0))

    async def body() -> subprocess.CompletedProcess:
        await until(lambda: daemon.url is not None and all(r.store.choice() for r in daemon.relays.values()), what="both relays' choices")
        return await asyncio.to_thread(top, "--url", daemon.url, "--once")

    shown = serving(daemon, body)
    assert shown.returncode == 0, shown.stderr
    screen = shown.stdout
    assert screen.index("relay gpt") < screen.index("chosen: g-fast") < screen.index("relay claude") < screen.index("chosen: c-only")
    assert row(screen, "g-fast").startswith("▶ g-fast") and row(screen, "c-only").startswith("▶ c-only")
    assert not row(screen, "g-slow").startswith("▶")
