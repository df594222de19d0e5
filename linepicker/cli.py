"""The command line: parse, call the core, hand the result to report.terminal.

Commands import the core inside their bodies: `linepicker env` runs in every
new shell and must not pay for aiohttp, rich or YAML that it never uses.
"""

from __future__ import annotations

import functools
import sys
from typing import Any, Callable

import click

from . import __version__
from .clientenv import RC_LINES, SHELLS
from .config import DEFAULT_LISTEN
from .daemon import LOG_LEVELS
from .errors import ExitStatus, LinepickerError
from .lastchoice import NO_CHOICE


def _fails_cleanly(command: Callable[..., Any]) -> Callable[..., Any]:
    """Every error the user can act on becomes one line on stderr and an exit code, never a traceback."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except LinepickerError as exc:
            from .urlmask import mask_userinfo

            click.echo(f"linepicker: error: {mask_userinfo(str(exc))}", err=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("linepicker: interrupted", err=True)
            sys.exit(ExitStatus.INTERRUPTED)

    return wrapper


def _config_option(command: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--config",
        "config_path",
        type=click.Path(dir_okay=False),
        help="lines.yaml to use (default: $LINEPICKER_CONFIG, ./lines.yaml, the user config dir, the bundled one).",
    )(command)


def _db_option(command: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--db",
        "db_path",
        type=click.Path(dir_okay=False),
        help="SQLite database (default: $LINEPICKER_DB, else linepicker.db in the user data dir).",
    )(command)


def _json_option(command: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")(command)


def _load(config_path: str | None, with_notes: bool = False) -> Any:
    """Load the config and say on stderr which file it was, as the lookup order can surprise."""
    from .config import load_config
    from .report import terminal

    config = load_config(config_path)
    terminal.config_note(config, with_notes)
    return config


def _load_quietly(config_path: str) -> Any:
    """For `env`, which runs in every new shell: the config is checked, nothing is said about it."""
    from .config import load_config

    return load_config(config_path)


def _open_store(db_path: str | None) -> Any:
    from .store import Store, resolve_db_path

    return Store(resolve_db_path(db_path))


def _line_names(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[str]:
    """Shell completion of line names from the config a run would read; silent when there is none."""
    from .config import load_config

    try:
        config = load_config(ctx.params.get("config_path"))
    except LinepickerError:
        return []
    return [line.name for line in config.lines if line.name.startswith(incomplete)]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="linepicker")
def cli() -> None:
    """Find the fastest working line of an OpenAI-compatible relay and keep it chosen.

    \b
    Example:
        linepicker pick                           # probe, choose, record
        eval "$(linepicker env --shell bash)"     # export the choice into this bash
    """


def _run_round(config_path: str | None, db_path: str | None, as_json: bool, choose: bool) -> Any:
    import asyncio

    from . import picker
    from .report import documents, terminal

    config = _load(config_path)
    if missing := config.missing_key():
        terminal.warn(missing)
    with _open_store(db_path) as store:
        show_progress = not as_json and sys.stdout.isatty() and sys.stderr.isatty()
        total = len(config.active_lines) * config.probe.samples
        with terminal.progress(total, show_progress) as on_sample:
            result = asyncio.run(picker.run_round(config, store, "pick" if choose else "probe", choose_line=choose, on_sample=on_sample))
    checks = _client_checks(config, result.chosen, result.target_results, db_path)  # none written when nothing was chosen
    if as_json:
        terminal.print_json(documents.round_json(result, config, with_samples=not choose, client_checks=checks))
    else:
        terminal.render_round(result, config)
        terminal.client_warnings(checks)
    return result


def _client_checks(config: Any, chosen: Any, written: list[Any], db_path: str | None) -> list[Any]:
    """What keeps a client off the target files just written: said at once, not left for `doctor`."""
    if chosen is None or not written:
        return []
    from .doctor import client_checks
    from .gatewaylease import live_gateway
    from .store import resolve_db_path

    return client_checks(config, chosen, [target.path for target in written], live_gateway(str(resolve_db_path(db_path))))


@cli.command()
@_config_option
@_db_option
@_json_option
@_fails_cleanly
def pick(config_path: str | None, db_path: str | None, as_json: bool) -> None:
    """Probe every line, choose the best, record it and update the configured targets.

    Exit status: 0 a line is chosen, 2 usage or config error, 3 no line is eligible
    (the previous choice stays in force).

    \b
    Example:
        linepicker pick --config ~/relay/lines.yaml --json | jq .chosen
    """
    result = _run_round(config_path, db_path, as_json, choose=True)
    if result.target_errors:
        sys.exit(ExitStatus.FAILURE)
    if result.no_eligible:
        sys.exit(ExitStatus.NO_ELIGIBLE)


@cli.command()
@_config_option
@_db_option
@_json_option
@_fails_cleanly
def probe(config_path: str | None, db_path: str | None, as_json: bool) -> None:
    """Run one round of probes and record it, without choosing.

    \b
    Example:
        linepicker probe --json | jq '.lines[] | {name, outcomes}'
    """
    _run_round(config_path, db_path, as_json, choose=False)


@cli.command()
@_config_option
@_db_option
@_json_option
@_fails_cleanly
def status(config_path: str | None, db_path: str | None, as_json: bool) -> None:
    """Show each line's recent record and the current choice, without probing.

    Exit status: 0 a line is chosen, 3 none is yet.

    \b
    Example:
        linepicker status --json | jq '.lines[] | {name, success_rate, p50_ms}'
    """
    from . import picker
    from .report import documents, terminal

    config = _load(config_path)
    with _open_store(db_path) as store:
        report = picker.status(config, store)
    if as_json:
        terminal.print_json(documents.status_json(report, config))
    else:
        terminal.render_status(report)
    if report.choice is None:
        sys.exit(ExitStatus.NO_ELIGIBLE)


def _rc_examples() -> str:
    return "\n".join(f"    {where:<28}{line}" for where, line in RC_LINES.values())


@cli.command(
    epilog="\b\nExamples: this line at the end of the shell's start-up file, naming the shell:\n" + _rc_examples()
)
@click.option("--shell", type=click.Choice(SHELLS), help="Syntax to print; name it in start-up files (default: from $SHELL, the login shell).")
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    help="Print the choice only if it is one of this file's lines (else exit 3); without it no config is read.",
)
@_db_option
@_json_option
@_fails_cleanly
def env(shell: str | None, config_path: str | None, db_path: str | None, as_json: bool) -> None:
    """Print exports of the current choice for the shell, without probing.

    The shell is named rather than guessed: $SHELL is the login shell, and a
    bash started from fish would otherwise get fish syntax and export nothing.

    While a daemon serves the gateway, they name the gateway instead, which
    follows every later switch.
    """
    import json

    from .clientenv import client_env, detect_shell, shell_exports
    from .gatewaylease import live_gateway
    from .lastchoice import outside_config
    from .store import read_choice, resolve_db_path

    config = _load_quietly(config_path) if config_path else None
    path = resolve_db_path(db_path)
    choice = read_choice(path)
    if choice is None:
        click.echo(NO_CHOICE, err=True)
        sys.exit(ExitStatus.NO_ELIGIBLE)
    if config is not None:
        line = config.line(choice.name)
        if outside := outside_config(str(config.source), choice.name, choice.url, line.url if line else None):
            click.echo(outside, err=True)
            sys.exit(ExitStatus.NO_ELIGIBLE)
    gateway = live_gateway(str(path))
    if as_json:
        click.echo(json.dumps({"name": choice.name, "url": choice.url, "gateway": gateway, "env": client_env(gateway or choice.url)}, indent=2))
    else:
        click.echo(shell_exports(gateway or choice.url, shell or detect_shell()), nl=False)


@cli.command()
@click.argument("name", shell_complete=_line_names)
@_config_option
@_db_option
@_json_option
@_fails_cleanly
def pin(name: str, config_path: str | None, db_path: str | None, as_json: bool) -> None:
    """Choose NAME by hand and keep it until `unpin`, whatever the probes say.

    \b
    Example:
        linepicker pin backup
    """
    from . import picker
    from .report import terminal

    config = _load(config_path)
    with _open_store(db_path) as store:
        choice, results, errors = picker.pin(config, store, name)
    checks = _client_checks(config, choice, results, db_path)
    if as_json:
        terminal.print_json(
            {"pinned": name, "chosen": {"name": choice.name, "url": choice.url}, "target_errors": errors, "client_checks": [vars(c) for c in checks]}
        )
    else:
        terminal.stdout.print(f"pinned to {name} ({choice.url}); run 'linepicker unpin' to let the policy choose again")
        terminal.client_warnings(checks)
    for message in errors:
        terminal.error(message)
    if errors:
        sys.exit(ExitStatus.FAILURE)


@cli.command()
@_db_option
@_fails_cleanly
def unpin(db_path: str | None) -> None:
    """Let the policy choose again from the next round on.

    \b
    Example:
        linepicker unpin && linepicker pick
    """
    with _open_store(db_path) as store:
        was = store.pinned()
        store.set_pinned(None)
    click.echo(f"unpinned {was}" if was else "nothing was pinned")


@cli.command()
@_config_option
@_db_option
@click.option(
    "--listen",
    default=DEFAULT_LISTEN,
    show_default=True,
    help="Where to serve the status page, /api/status, /metrics and /healthz; 'off' serves nothing.",
)
@click.option("--log-level", type=click.Choice(LOG_LEVELS), default="info", show_default=True)
@_fails_cleanly
def daemon(config_path: str | None, db_path: str | None, listen: str, log_level: str) -> None:
    """Keep probing in the background and keep the choice and the targets fresh.

    One daemon per database; `pick`, `status` and `env` keep working beside it.
    SIGTERM or SIGINT stops it, SIGHUP reloads the config.

    \b
    Example:
        linepicker daemon --listen 127.0.0.1:9137 &
        curl -s 127.0.0.1:9137/api/status | jq .chosen
    """
    from .config import parse_listen
    from .daemon.runner import Options, run

    run(Options(config_path, db_path, None if listen == "off" else parse_listen(listen), log_level))


@cli.group()
def service() -> None:
    """Run the daemon as a user service (systemd on Linux, launchd on macOS).

    \b
    Example:
        linepicker service install && systemctl --user enable --now linepicker
    """


@service.command("install")
@_config_option
@_db_option
@click.option("--listen", default=DEFAULT_LISTEN, show_default=True, help="Passed to the daemon.")
@_json_option
@_fails_cleanly
def service_install(config_path: str | None, db_path: str | None, listen: str, as_json: bool) -> None:
    """Write the user service that runs `linepicker daemon` with this config and database.

    \b
    Example:
        linepicker service install --config ~/relay/lines.yaml
    """
    from .config import BUNDLED, parse_listen
    from .errors import ConfigError
    from .report import terminal
    from .service import install

    parse_listen(listen)
    config = _load(config_path)
    if config.origin == BUNDLED:  # inside the installed package: a reinstall would take it, and the key file beside it, away
        raise ConfigError("no lines.yaml of your own yet: run 'linepicker init' first (or pass --config FILE), then install the service")
    unit = install(config.source, _db_path(db_path), listen)
    terminal.service_installed(unit, as_json)


@service.command("uninstall")
@_json_option
@_fails_cleanly
def service_uninstall(as_json: bool) -> None:
    """Remove the user service file that `service install` wrote.

    \b
    Example:
        systemctl --user disable --now linepicker && linepicker service uninstall
    """
    from .report import terminal
    from .service import uninstall

    terminal.service_removed(uninstall(), as_json)


def _db_path(db_path: str | None) -> Any:
    from .store import resolve_db_path

    return resolve_db_path(db_path).resolve()


@cli.command()
@_config_option
@_db_option
@_json_option
@_fails_cleanly
def doctor(config_path: str | None, db_path: str | None, as_json: bool) -> None:
    """Find what would keep a client off the chosen line, and say how to fix it.

    Looks at this shell's environment, shell start-up files, Claude Code's
    settings files, Codex's config.toml, proxies, and whether the chosen line
    accepts the key. Exit status: 0 nothing found, 1 problems found.

    \b
    Example:
        linepicker doctor
        linepicker doctor --json | jq '.findings[] | select(.severity == "error")'
    """
    from .report import terminal
    from .doctor import diagnose

    config = _load(config_path, with_notes=True)
    with _open_store(db_path) as store:
        diagnosis = diagnose(config, store)
    terminal.doctor_report(diagnosis, as_json)
    if diagnosis.findings:
        sys.exit(ExitStatus.FAILURE)


@cli.command()
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="Where to write it (default: lines.yaml in the user config dir).")
@_json_option
@_fails_cleanly
def init(config_path: str | None, as_json: bool) -> None:
    """Write a starter lines.yaml to the user config dir; an existing file is never overwritten.

    \b
    Example:
        linepicker init && linepicker add hk https://hk.example-relay.com
    """
    from .config import find_config
    from .configedit import init as write_starter
    from .report import terminal

    path, in_force = write_starter(config_path)
    terminal.config_written(path, in_force, find_config(None)[0], as_json)


@cli.command()
@click.argument("name")
@click.argument("url")
@click.option("--proxy", help="Probe this line through this http:// proxy, or 'none' to never use one.")
@_config_option
@_json_option
@_fails_cleanly
def add(name: str, url: str, proxy: str | None, config_path: str | None, as_json: bool) -> None:
    """Add line NAME at URL to lines.yaml, keeping its comments and layout.

    \b
    Example:
        linepicker add hk https://hk.example-relay.com --proxy http://127.0.0.1:7890
    """
    from .report import terminal
    from .configedit import add_line, editable_path

    terminal.config_edited(add_line(editable_path(config_path), name, url, proxy), "added", as_json)


@cli.command()
@click.argument("name", shell_complete=_line_names)
@_config_option
@_json_option
@_fails_cleanly
def remove(name: str, config_path: str | None, as_json: bool) -> None:
    """Remove line NAME from lines.yaml (and from exclude:), keeping everything else.

    \b
    Example:
        linepicker remove hk
    """
    from .report import terminal
    from .configedit import editable_path, remove_line

    terminal.config_edited(remove_line(editable_path(config_path), name), "removed", as_json)


def _span_option(command: Callable[..., Any]) -> Callable[..., Any]:
    def seconds(ctx: click.Context, param: click.Parameter, value: str | None) -> float | None:
        from .config import MAX_SPAN_S, parse_duration

        if value is None:
            return None
        try:
            span = parse_duration(value)
        except ValueError as exc:
            raise click.BadParameter(str(exc)) from None
        if span > MAX_SPAN_S:  # past any retention there is nothing to show, and the buckets would still be drawn
            raise click.BadParameter(f"at most {MAX_SPAN_S / 86400:g}d (the longest retention), got {value!r}")
        return span

    return click.option(
        "--since",
        "span_s",
        callback=seconds,
        help="How far back: 90m, 24h, 30d (default: 1h, 6h, 24h or 7d, the shortest that holds the recorded samples).",
    )(command)


@cli.command()
@_span_option
@click.option("--line", "names", multiple=True, shell_complete=_line_names, help="Only this line (repeatable).")
@click.option("--buckets", type=click.IntRange(4, 500), help="Marks per line (default: fits the terminal, each at least two probe intervals wide).")
@_config_option
@_db_option
@_json_option
@_fails_cleanly
def history(span_s: float | None, names: tuple[str, ...], buckets: int | None, config_path: str | None, db_path: str | None, as_json: bool) -> None:
    """Show how each line behaved: sparklines of median latency and failures, and the switches.

    \b
    Example:
        linepicker history --since 7d --line main
    """
    from .report import documents, terminal
    from .report.history import history as load_history

    config = _load(config_path)
    with _open_store(db_path) as store:
        result = load_history(config, store, span_s, names, buckets, most=max(12, min(120, terminal.stdout.width - 4)))
    if as_json:
        terminal.print_json(documents.history_json(result))
    else:
        terminal.render_history(result)


@cli.command()
@click.option("--html", "html_path", required=True, type=click.Path(dir_okay=False), help="The HTML file to write.")
@_span_option
@_config_option
@_db_option
@_json_option
@_fails_cleanly
def report(html_path: str, span_s: float | None, config_path: str | None, db_path: str | None, as_json: bool) -> None:
    """Write one self-contained HTML file with each line's latency chart and the switches.

    \b
    Example:
        linepicker report --html relay.html --since 7d && xdg-open relay.html
    """
    import time
    from pathlib import Path

    from .fsutil import atomic_write
    from .report import terminal
    from .report.history import history as load_history
    from .report.page import render_report

    config = _load(config_path)
    with _open_store(db_path) as store:
        result = load_history(config, store, span_s)
    path = Path(html_path)
    atomic_write(path, render_report(result, str(config.source), time.time()).encode("utf-8"))
    terminal.report_written(path, result, as_json)


@cli.command()
@click.option("--url", default=f"http://{DEFAULT_LISTEN}", show_default=True, help="The daemon's address (what its --listen serves).")
@click.option("--interval", type=click.FloatRange(0.2, 3600), default=2.0, show_default=True, help="Seconds between refreshes.")
@click.option("--once", is_flag=True, help="Print the view once and exit (what it does anyway when stdout is not a terminal).")
@_fails_cleanly
def top(url: str, interval: float, once: bool) -> None:
    """Watch a running daemon: each line's state, score, last phases and trend, the choice and the last switch.

    Reads the daemon's /api/status over HTTP and redraws in place until Ctrl-C.

    \b
    Example:
        linepicker daemon &
        linepicker top
    """
    from .report import terminal
    from .report.top import run

    run(url, interval, terminal.stdout, once)


def main() -> None:
    cli()
