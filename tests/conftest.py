from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import trustme
import yaml
from click.testing import CliRunner, Result

from linepicker.cli import cli
from servers import Relay, ServerThread

PROXY_VARS = ["HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "all_proxy", "no_proxy"]


@pytest.fixture(autouse=True)
def isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No test reads the developer's own config, database, proxy or key."""
    for name in PROXY_VARS + ["OPENAI_API_KEY", "LINEPICKER_CONFIG", "LINEPICKER_DB", "SHELL", "CODEX_HOME", "CLAUDE_CONFIG_DIR", "LINEPICKER_DEBUG_SCHEDULER"]:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg-config"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg-data"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="session")
def server() -> Iterator[ServerThread]:
    thread = ServerThread()
    yield thread
    thread.stop()


@pytest.fixture
def relay(server: ServerThread) -> Relay:
    return server.start_relay()


@pytest.fixture(scope="session")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="session")
def tls_relay(server: ServerThread, ca: trustme.CA) -> Relay:
    import ssl

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    return server.start_relay(context)


@pytest.fixture
def trust(ca: trustme.CA, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Hand the test CA to linepicker the way a user would: SSL_CERT_FILE."""
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    monkeypatch.setenv("SSL_CERT_FILE", str(path))
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    return path


@pytest.fixture
def write_config(tmp_path: Path) -> Callable[..., Path]:
    def write(lines: dict[str, str] | list[dict[str, Any]], name: str = "lines.yaml", **sections: Any) -> Path:
        if isinstance(lines, dict):
            lines = [{"name": n, "url": u} for n, u in lines.items()]
        document = {"probe": {"timeout": 2, "samples": 3}, **sections, "lines": lines}
        path = tmp_path / name
        path.write_text(yaml.safe_dump(document, sort_keys=False))
        return path

    return write


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "linepicker.db"


@pytest.fixture
def run(db_path: Path) -> Callable[..., Result]:
    """Run the real CLI in-process against the test database."""

    def invoke(*args: str, db: Path | None = db_path) -> Result:
        argv = list(args)
        if db is not None and "--db" not in argv and argv[0] != "--help":
            argv += ["--db", str(db)]
        return CliRunner().invoke(cli, argv, catch_exceptions=False)

    return invoke


def stdout_json(result: Result) -> Any:
    return json.loads(result.stdout)
