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

from .clientenv import SHELLS, detect_shell, format_exports
from .errors import ExitStatus, LinepickerError
from .gatewaylease import live_gateway
from .lastchoice import choice_env, last_choice, merged_env, relay_choices

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
        config = _config_relays(options["--config"]) if options.get("--config") else None
        if config is None:
            relays = relay_choices(path)
        else:
            relays = [(relay, exports, last_choice(path, relay)) for relay, exports, _ in config]
    except LinepickerError as exc:
        print(f"linepicker: error: {exc}", file=sys.stderr)
        return exc.exit_code
    gateways = {relay: url for relay, _, _ in relays if (url := live_gateway(path, relay))}
    handed, missing = choice_env(relays, {relay: lines for relay, _, lines in config} if config is not None else None, gateways)
    for message in missing:
        print(message, file=sys.stderr)
    sys.stdout.write(format_exports(merged_env(handed), options.get("--shell") or detect_shell()))
    return ExitStatus.NO_ELIGIBLE if missing else ExitStatus.OK


def _config_relays(path: str) -> list[tuple[str, tuple[str, ...], tuple[str, dict[str, str]]]]:
    """Each relay of the config: its name, its exports, and the file with its lines' URLs by name.
    Read only when asked for: YAML is the one import a plain `env` must not pay."""
    from .config import load_setup

    setup = load_setup(path)
    lines = setup.line_urls()
    return [(config.relay, config.exports, lines[config.relay]) for config in setup.relays]


def main() -> None:
    """The console script: `env` straight from here, everything else through the click CLI."""
    options = _quick_env_args(sys.argv[1:])
    code = _quick_env(options) if options is not None else None
    if code is not None:
        sys.stdout.flush()
        sys.exit(code)
    from .cli import main as cli_main

    cli_main()
