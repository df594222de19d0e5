"""What `linepicker env` prints, and the console script that prints it without loading the CLI.

`eval "$(linepicker env)"` runs in every new shell, so that path may cost little
more than starting Python: standard library modules that are cheap to import
(os, sys, sqlite3), no click, pathlib or dataclasses. Anything it does not
recognise, `--help` included, goes to the full CLI, which gives the same answers.
"""

from __future__ import annotations

import os
import sqlite3
import sys

from .errors import LinepickerError, StoreError

SHELLS = ("bash", "zsh", "fish", "powershell", "cmd")
BUSY_TIMEOUT_S = 10.0
EXIT_NO_ELIGIBLE = 3
NO_CHOICE = "linepicker: no line chosen yet: run 'linepicker pick'"


def client_env(url: str) -> dict[str, str]:
    """What each client reads: the OpenAI SDKs want /v1, Claude Code the bare host."""
    return {
        "OPENAI_BASE_URL": f"{url}/v1",
        "OPENAI_API_BASE": f"{url}/v1",
        "ANTHROPIC_BASE_URL": url,
    }


def shell_exports(url: str, shell: str) -> str:
    variables = client_env(url)
    return "".join(_export_line(name, value, shell) + "\n" for name, value in variables.items())


def _export_line(name: str, value: str, shell: str) -> str:
    if shell in ("bash", "zsh"):
        return f"export {name}={_posix_quote(value)}"
    if shell == "fish":
        return f"set -gx {name} {_fish_quote(value)};"
    if shell == "powershell":
        return f"$env:{name} = '{value.replace(chr(39), chr(39) * 2)}'"
    if shell == "cmd":
        return f'set "{name}={value}"'
    raise ValueError(f"unknown shell {shell!r}; choose one of {', '.join(SHELLS)}")


def _posix_quote(value: str) -> str:
    return "'" + value.replace("'", "'\\''") + "'"


def _fish_quote(value: str) -> str:
    """fish reads \\ and \\' as escapes even inside single quotes, so POSIX quoting would mangle a backslash."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def detect_shell() -> str:
    """Guess from $SHELL so that `eval "$(linepicker env)"` works without a flag in fish too."""
    name = os.path.basename(os.environ.get("SHELL", "").rstrip("/\\"))
    if name in SHELLS:
        return name
    if os.name == "nt":
        return "powershell"
    return "bash"


def last_choice(path: str) -> tuple[str, str, str | None, str, float] | None:
    """The newest decision row (name, url, previous, reason, decided_at), read-only, creating nothing."""
    if not os.path.exists(path):
        return None
    try:
        conn = sqlite3.connect(f"{_file_uri(path)}?mode=ro", uri=True, timeout=BUSY_TIMEOUT_S)
        try:
            row = conn.execute(
                "select name, url, previous, reason, decided_at from decisions order by id desc limit 1"
            ).fetchone()
        finally:
            conn.close()
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            return None
        raise StoreError(f"{path}: {exc}") from None
    except sqlite3.DatabaseError as exc:
        raise StoreError(f"{path}: not a usable linepicker database ({exc})") from None
    return tuple(row) if row else None  # type: ignore[return-value]


def _file_uri(path: str) -> str:
    """The file as a URI SQLite reads back to the same name, without importing pathlib or urllib.

    Absolute with an empty authority, so '//tmp/x' is not read as host 'tmp';
    '?' and '#' would end the path and '%' starts an escape.
    """
    absolute = os.path.abspath(path).replace(os.sep, "/")
    escaped = absolute.replace("%", "%25").replace("?", "%3f").replace("#", "%23")
    return "file://" + ("" if escaped.startswith("/") else "/") + escaped


def _quick_db_path(explicit: str | None) -> str | None:
    """--db, LINEPICKER_DB, else platformdirs' user data dir on Linux; None: leave it to platformdirs.

    Only the plain cases are answered here (an absolute XDG_DATA_HOME, or none
    and an absolute HOME): for odd values platformdirs' versions disagree, and
    `env` must read the very file that `pick` wrote.
    """
    chosen = explicit or os.environ.get("LINEPICKER_DB")
    if chosen:
        return os.path.expanduser(chosen)
    if not sys.platform.startswith("linux"):
        return None
    xdg, home = os.environ.get("XDG_DATA_HOME", ""), os.environ.get("HOME", "")
    if xdg:
        base = xdg if os.path.isabs(xdg) and xdg == xdg.strip() else None
    else:
        base = os.path.join(home, ".local", "share") if os.path.isabs(home) else None
    return None if base is None else os.path.join(base, "linepicker", "linepicker.db")


def _quick_env_args(argv: list[str]) -> dict[str, str] | None:
    """The options of a plain `env` call (--shell, --db), or None for anything the full CLI should judge."""
    if not argv or argv[0] != "env":
        return None
    found: dict[str, str] = {}
    rest = argv[1:]
    while rest:
        option, _, value = rest.pop(0).partition("=")
        if option not in ("--shell", "--db") or option in found:
            return None
        if not _:
            if not rest:
                return None
            value = rest.pop(0)
        found[option] = value
    if found.get("--shell", "bash") not in SHELLS or os.path.isdir(found.get("--db", "")):
        return None  # click explains these as usage errors
    return found


def _quick_env(options: dict[str, str]) -> int | None:
    """Print the exports; None when the full CLI must answer instead."""
    path = _quick_db_path(options.get("--db"))
    if path is None:
        return None
    try:
        row = last_choice(path)
    except LinepickerError as exc:
        print(f"linepicker: error: {exc}", file=sys.stderr)
        return exc.exit_code
    if row is None:
        print(NO_CHOICE, file=sys.stderr)
        return EXIT_NO_ELIGIBLE
    sys.stdout.write(shell_exports(row[1], options.get("--shell") or detect_shell()))
    return 0


def main() -> None:
    """The console script: `env` straight from here, everything else through the click CLI."""
    options = _quick_env_args(sys.argv[1:])
    code = _quick_env(options) if options is not None else None
    if code is not None:
        sys.stdout.flush()
        sys.exit(code)
    from .cli import main as cli_main

    cli_main()
