"""Install the daemon as a user service: a systemd user unit on Linux, a launchd agent on macOS.

The service runs this very interpreter (`python -m linepicker`), so it keeps
working in a virtualenv or pipx install without a PATH. The key is never
written into the unit: services do not see the login shell's variables, so
the unit reads an environment file that the user fills and keeps 0600.
"""

from __future__ import annotations

import os
import plistlib
import sys
from dataclasses import dataclass
from pathlib import Path

from .errors import LinepickerError
from .fsutil import atomic_write

UNIT_NAME = "linepicker.service"
AGENT_LABEL = "io.github.linepicker.daemon"


@dataclass(frozen=True)
class Unit:
    kind: str  # systemd or launchd
    path: Path
    env_file: Path | None  # where the key goes; systemd only
    changed: bool
    next_steps: tuple[str, ...]


def _kind() -> str:
    if sys.platform == "darwin":
        return "launchd"
    if sys.platform.startswith("linux"):
        return "systemd"
    raise LinepickerError(f"linepicker service supports Linux (systemd) and macOS (launchd), not {sys.platform}")


def _home() -> Path:
    return Path(os.path.expanduser("~"))


def unit_path(kind: str) -> Path:
    if kind == "launchd":
        return _home() / "Library" / "LaunchAgents" / f"{AGENT_LABEL}.plist"
    config_home = Path(os.environ.get("XDG_CONFIG_HOME") or _home() / ".config")
    return config_home / "systemd" / "user" / UNIT_NAME


def daemon_argv(config: Path, db: Path, listen: str) -> list[str]:
    return [sys.executable, "-m", "linepicker", "daemon", "--config", str(config), "--db", str(db), "--listen", listen]


def install(config: Path, db: Path, listen: str) -> Unit:
    kind = _kind()
    path = unit_path(kind)
    argv = daemon_argv(config.resolve(), db, listen)
    if kind == "launchd":
        data = launchd_plist(argv, db.parent)
        steps = (f"launchctl load -w {path}", f"tail -f {db.parent / 'daemon.log'}")
        env_file = None
    else:
        env_file = config.resolve().parent / "linepicker.env"
        data = systemd_text(argv, env_file).encode()
        steps = (
            f"put your key in {env_file} (e.g. OPENAI_API_KEY=sk-...; chmod 600)",
            "systemctl --user daemon-reload",
            "systemctl --user enable --now linepicker",
            "journalctl --user -u linepicker -f",
        )
    try:
        changed = path.read_bytes() != data
    except OSError:
        changed = True
    if changed:
        atomic_write(path, data)
    return Unit(kind, path, env_file, changed, steps)


def uninstall() -> Path | None:
    """Remove our unit file; None when there was none. Stopping the service is the user's (systemctl/launchctl)."""
    path = unit_path(_kind())
    try:
        path.unlink()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise LinepickerError(f"{path}: cannot remove: {exc.strerror or exc}") from None
    return path


def systemd_text(argv: list[str], env_file: Path) -> str:
    """The user unit. No After=network-online.target: a user manager has no such target to wait for."""
    return f"""[Unit]
Description=linepicker: keep the fastest working relay line chosen

[Service]
Type=simple
# The key lives here, never in this unit (a leading '-': the file may be absent).
EnvironmentFile=-{_systemd_path(env_file)}
ExecStart={" ".join(_systemd_word(arg) for arg in argv)}
ExecReload=/bin/kill -HUP $MAINPID
Restart=on-failure
RestartSec=10

[Install]
WantedBy=default.target
"""


def _systemd_word(arg: str) -> str:
    """One ExecStart argument as systemd reads it back: double-quoted with C escapes, and systemd's own
    expansions undone even inside quotes: %% for a literal % (specifiers), $$ for a literal $ (variables)."""
    escaped = "".join(_C_ESCAPES.get(char, char) if char >= " " else f"\\x{ord(char):02x}" for char in arg)
    return '"' + escaped.replace("%", "%%").replace("$", "$$") + '"'


_C_ESCAPES = {"\\": "\\\\", '"': '\\"'}


def _systemd_path(path: Path) -> str:
    """A path setting (EnvironmentFile=) takes no quotes or escapes, but expands specifiers."""
    text = str(path)
    if any(char < " " for char in text):
        raise LinepickerError(f"{text!r}: a control character in a path cannot be written into a systemd unit")
    return text.replace("%", "%%")


def launchd_plist(argv: list[str], log_dir: Path) -> bytes:
    return plistlib.dumps(
        {
            "Label": AGENT_LABEL,
            "ProgramArguments": argv,
            "RunAtLoad": True,
            "KeepAlive": {"SuccessfulExit": False},
            "StandardErrorPath": str(log_dir / "daemon.log"),
        }
    )
