"""The console script: a plain `linepicker env` answered here, everything else handed to the CLI.

`eval "$(linepicker env)"` runs in every new shell, so that path may cost little
more than starting Python: standard library modules that are cheap to import
(os, sys, sqlite3 through lastchoice), no click, pathlib or dataclasses. Anything it does not
recognise, `--help` included, goes to the full CLI, which gives the same answers.
`--config FILE` costs the YAML parser (the choice must be one of that file's lines), still no click.
"""

from __future__ import annotations

import os
import sys

from .clientenv import SHELLS, detect_shell, shell_exports
from .errors import ExitStatus, LinepickerError
from .gatewaylease import live_gateway
from .lastchoice import NO_CHOICE, last_choice, outside_config

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
    """The options of a plain `env` call (--shell, --db, --config), or None for anything the full CLI should judge."""
    if not argv or argv[0] != "env":
        return None
    found: dict[str, str] = {}
    rest = argv[1:]
    while rest:
        option, has_value, value = rest.pop(0).partition("=")
        if option not in ("--shell", "--db", "--config") or option in found:
            return None
        if not has_value:
            if not rest:
                return None
            value = rest.pop(0)
        found[option] = value
    if found.get("--shell", "bash") not in SHELLS or any(os.path.isdir(found.get(option, "")) for option in ("--db", "--config")):
        return None  # click explains these as usage errors
    return found


def _quick_env(options: dict[str, str]) -> int | None:
    """Print the exports; None when the full CLI must answer instead."""
    path = _quick_db_path(options.get("--db"))
    if path is None:
        return None
    try:
        config = _config_lines(options["--config"]) if options.get("--config") else None
        row = last_choice(path)
    except LinepickerError as exc:
        print(f"linepicker: error: {exc}", file=sys.stderr)
        return exc.exit_code
    if row is None:
        print(NO_CHOICE, file=sys.stderr)
        return ExitStatus.NO_ELIGIBLE
    if config is not None and (outside := outside_config(config[0], row[0], row[1], config[1].get(row[0]))):
        print(outside, file=sys.stderr)
        return ExitStatus.NO_ELIGIBLE
    sys.stdout.write(shell_exports(live_gateway(path) or row[1], options.get("--shell") or detect_shell()))
    return ExitStatus.OK


def _config_lines(path: str) -> tuple[str, dict[str, str]]:
    """The config's file name and its lines' URLs by name. Read only when asked for:
    YAML is the one import a plain `env` must not pay."""
    from .config import load_config

    config = load_config(path)
    return str(config.source), {line.name: line.url for line in config.lines}


def main() -> None:
    """The console script: `env` straight from here, everything else through the click CLI."""
    options = _quick_env_args(sys.argv[1:])
    code = _quick_env(options) if options is not None else None
    if code is not None:
        sys.stdout.flush()
        sys.exit(code)
    from .cli import main as cli_main

    cli_main()
