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


def _file_option(flag: str, dest: str, help: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    return click.option(flag, dest, type=click.Path(dir_okay=False), help=help)


_config_option = _file_option(
    "--config", "config_path", "lines.yaml to use (default: $LINEPICKER_CONFIG, ./lines.yaml, the user config dir, the bundled one)."
)
_db_option = _file_option("--db", "db_path", "SQLite database (default: $LINEPICKER_DB, else linepicker.db in the user data dir).")


def _json_option(command: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")(command)


def _relay_command_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """What every command that reads relays' records takes: --config, --db, --relay, --json; and fails cleanly."""
    for decorate in (_fails_cleanly, _json_option, _relay_option, _db_option, _config_option):
        command = decorate(command)
    return command


def _load(config_path: str | None, with_notes: bool = False) -> Any:
    """Load the config (every relay in it) and say on stderr which file it was, as the lookup order can surprise."""
    from .config import load_setup
    from .report import terminal

    setup = load_setup(config_path)
    terminal.config_note(setup, with_notes)
    return setup


def _relay_option(command: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--relay",
        "relay_names",
        multiple=True,
        shell_complete=_relay_names,
        help="Only this relay of lines.yaml (repeatable; default: every relay).",
    )(command)


def _relay_names(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[str]:
    from .config import load_setup

    try:
        setup = load_setup(ctx.params.get("config_path"))
    except LinepickerError:
        return []
    return [name for name in setup.names if name.startswith(incomplete)]


def _load_quietly(config_path: str) -> Any:
    """For `env`, which runs in every new shell: the config is checked, nothing is said about it."""
    from .config import load_setup

    return load_setup(config_path)


def _open_store(db_path: str | None) -> Any:
    from .store import Store, resolve_db_path

    return Store(resolve_db_path(db_path))


def _line_names(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[str]:
    """Shell completion of line names (and RELAY/LINE) from the config a run would read; silent when there is none."""
    from .config import load_setup

    try:
        setup = load_setup(ctx.params.get("config_path"))
    except LinepickerError:
        return []
    names = [line.name for config in setup.relays for line in config.lines]
    if setup.named:
        names += [f"{config.relay}/{line.name}" for config in setup.relays for line in config.lines]
    return [name for name in dict.fromkeys(names) if name.startswith(incomplete)]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="linepicker")
def cli() -> None:
    """Find the fastest working line of an OpenAI-compatible relay and keep it chosen.

    \b
    Example:
        linepicker pick                           # probe, choose, record
        eval "$(linepicker env --shell bash)"     # export the choice into this bash
    """


def _run_round(config_path: str | None, db_path: str | None, as_json: bool, choose: bool, relay_names: tuple[str, ...] = ()) -> list[Any]:
    """One round per relay, all at once: each relay's lines, key and policy are its own."""
    import asyncio

    from . import picker
    from .report import documents, terminal

    setup = _load(config_path)
    configs = setup.select(relay_names)
    for config in configs:
        if missing := config.missing_key():
            terminal.warn(terminal.for_relay(setup, config, missing))

    async def rounds(store: Any, on_sample: Any) -> list[Any]:
        kind = "pick" if choose else "probe"
        return list(await asyncio.gather(*(picker.run_round(config, store, kind, choose_line=choose, on_sample=on_sample) for config in configs)))

    with _open_store(db_path) as store:
        show_progress = not as_json and sys.stdout.isatty() and sys.stderr.isatty()
        total = sum(len(config.active_lines) * config.probe.samples for config in configs)
        with terminal.progress(total, show_progress) as on_sample:
            results = asyncio.run(rounds(store, on_sample))
        store.set_relays(setup.relays)  # after the round: a file that cannot be read is left exactly as it was
    checks = [_client_checks(c, r.chosen, r.target_results, db_path) for c, r in zip(configs, results)]  # none written when nothing was chosen
    if as_json:
        documents_ = [(c.relay, documents.round_json(r, c, with_samples=not choose, client_checks=k)) for c, r, k in zip(configs, results, checks)]
        terminal.print_json(documents.with_relays(documents_))
    else:
        for config, result, found in zip(configs, results, checks):
            terminal.relay_heading(setup, config)
            terminal.render_round(result, config)
            terminal.client_warnings(found)
    return results


def _client_checks(config: Any, chosen: Any, written: list[Any], db_path: str | None) -> list[Any]:
    """What keeps a client off the target files just written: said at once, not left for `doctor`."""
    if chosen is None or not written:
        return []
    from .doctor import client_checks
    from .gatewaylease import live_gateway
    from .store import resolve_db_path

    return client_checks(config, chosen, [target.path for target in written], live_gateway(str(resolve_db_path(db_path)), config.relay))


@cli.command()
@_relay_command_options
def pick(config_path: str | None, db_path: str | None, relay_names: tuple[str, ...], as_json: bool) -> None:
    """Probe every line, choose the best, record it and update the configured targets.

    With several relays, each relay gets its own round and choice.
    Exit status: 0 a line is chosen, 2 usage or config error, 3 no line is eligible
    (the previous choice stays in force).

    \b
    Example:
        linepicker pick --config ~/relay/lines.yaml --json | jq .chosen
        linepicker pick --relay claude
    """
    results = _run_round(config_path, db_path, as_json, True, relay_names)
    if any(result.target_errors for result in results):
        sys.exit(ExitStatus.FAILURE)
    if any(result.no_eligible for result in results):
        sys.exit(ExitStatus.NO_ELIGIBLE)


@cli.command()
@_relay_command_options
def probe(config_path: str | None, db_path: str | None, relay_names: tuple[str, ...], as_json: bool) -> None:
    """Run one round of probes and record it, without choosing.

    \b
    Example:
        linepicker probe --json | jq '.lines[] | {name, outcomes}'
    """
    _run_round(config_path, db_path, as_json, False, relay_names)


@cli.command()
@_relay_command_options
def status(config_path: str | None, db_path: str | None, relay_names: tuple[str, ...], as_json: bool) -> None:
    """Show each line's recent record and the current choice, without probing.

    Exit status: 0 a line is chosen, 3 none is yet.

    \b
    Example:
        linepicker status --json | jq '.lines[] | {name, success_rate, p50_ms}'
        linepicker status --json | jq '.relays[] | {name, chosen}'
    """
    from . import picker
    from .report import documents, terminal

    setup = _load(config_path)
    configs = setup.select(relay_names)
    with _open_store(db_path) as store:
        reports = [picker.status(config, store) for config in configs]
    if as_json:
        terminal.print_json(documents.with_relays([(c.relay, documents.status_json(r, c)) for c, r in zip(configs, reports)]))
    else:
        for config, report in zip(configs, reports):
            terminal.relay_heading(setup, config)
            terminal.render_status(report)
    if any(report.choice is None for report in reports):
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
    With several relays, every relay's variables from its own choice; exit
    status 3 when a relay has none (the others are printed).

    While a daemon serves a relay's gateway, that relay's variables name the
    gateway instead, which follows every later switch.
    """
    import json

    from .clientenv import detect_shell, format_exports
    from .gatewaylease import live_gateway
    from .lastchoice import choice_env, last_choice, merged_env, relay_choices
    from .store import resolve_db_path

    setup = _load_quietly(config_path) if config_path else None
    path = str(resolve_db_path(db_path))
    if setup is None:
        relays = relay_choices(path)
    else:
        relays = [(config.relay, config.exports, last_choice(path, config.relay)) for config in setup.relays]
    gateways = {relay: url for relay, _, _ in relays if (url := live_gateway(path, relay))}
    handed, missing = choice_env(relays, setup.line_urls() if setup else None, gateways)
    for message in missing:
        click.echo(message, err=True)
    if as_json and handed:
        first_relay, first, _ = handed[0]
        entries = [
            {"name": relay, "chosen": {"name": row[0], "url": row[1]}, "gateway": gateways.get(relay), "env": variables}
            for relay, row, variables in handed
        ]
        document = {"name": first[0], "url": first[1], "gateway": gateways.get(first_relay), "env": merged_env(handed), "relays": entries}
        click.echo(json.dumps(document, indent=2))
    elif handed:
        click.echo(format_exports(merged_env(handed), shell or detect_shell()), nl=False)
    if missing:
        sys.exit(ExitStatus.NO_ELIGIBLE)


@cli.command()
@click.argument("name", shell_complete=_line_names)
@_relay_command_options
def pin(name: str, config_path: str | None, db_path: str | None, relay_names: tuple[str, ...], as_json: bool) -> None:
    """Choose NAME by hand and keep it until `unpin`, whatever the probes say.

    NAME is a line, or RELAY/LINE when several relays have a line of that name.

    \b
    Example:
        linepicker pin backup
        linepicker pin claude/hk
    """
    from . import picker
    from .report import terminal

    setup = _load(config_path)
    config, line = setup.resolve_line(name, relay_names)
    with _open_store(db_path) as store:
        choice, results, errors = picker.pin(config, store, line)
        store.set_relays(setup.relays)
    checks = _client_checks(config, choice, results, db_path)
    if as_json:
        terminal.print_json(
            {
                "pinned": line,
                "relay": config.relay,
                "chosen": {"name": choice.name, "url": choice.url},
                "target_errors": errors,
                "client_checks": [vars(c) for c in checks],
            }
        )
    else:
        if setup.named:
            terminal.stdout.print(f"pinned relay {config.relay} to {line} ({choice.url}); run 'linepicker unpin --relay {config.relay}' to let the policy choose again")
        else:
            terminal.stdout.print(f"pinned to {line} ({choice.url}); run 'linepicker unpin' to let the policy choose again")
        terminal.client_warnings(checks)
    for message in errors:
        terminal.error(message)
    if errors:
        sys.exit(ExitStatus.FAILURE)


@cli.command()
@_db_option
@click.option("--relay", "relay_names", multiple=True, help="Only this relay's pin (repeatable; default: every relay's).")
@_fails_cleanly
def unpin(db_path: str | None, relay_names: tuple[str, ...]) -> None:
    """Let the policy choose again from the next round on.

    \b
    Example:
        linepicker unpin && linepicker pick
        linepicker unpin --relay claude
    """
    from .clientenv import DEFAULT_RELAY
    from .errors import UnknownRelay

    with _open_store(db_path) as store:
        known = store.relay_names()
        for relay in relay_names:
            if relay not in known:
                raise UnknownRelay(f"no relay named {relay!r} in {store.path} (relays: {', '.join(known) or 'none yet'})")
        pins = {relay: line for relay, line in store.pins().items() if not relay_names or relay in relay_names}
        for relay in pins:
            store.scoped(relay).set_pinned(None)
    for relay, line in pins.items():
        click.echo(f"unpinned {line}" if relay == DEFAULT_RELAY else f"unpinned {relay}/{line}")
    if not pins:
        click.echo("nothing was pinned")


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
    setup = _load(config_path)
    if setup.origin == BUNDLED:  # inside the installed package: a reinstall would take it, and the key file beside it, away
        raise ConfigError("no lines.yaml of your own yet: run 'linepicker init' first (or pass --config FILE), then install the service")
    unit = install(setup.source, _db_path(db_path), listen)
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
@_relay_command_options
def doctor(config_path: str | None, db_path: str | None, relay_names: tuple[str, ...], as_json: bool) -> None:
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

    setup = _load(config_path, with_notes=True)
    configs = setup.select(relay_names)
    with _open_store(db_path) as store:
        diagnoses = [(config.relay, diagnose(config, store)) for config in configs]
    terminal.doctor_reports(diagnoses, as_json, setup.named)
    if any(diagnosis.findings for _, diagnosis in diagnoses):
        sys.exit(ExitStatus.FAILURE)


def _edit_relay_option(command: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--relay", "relay", shell_complete=_relay_names, help="The relay of lines.yaml whose lines to edit.")(command)


@cli.command()
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="Where to write it (default: lines.yaml in the user config dir).")
@click.option("--relay", "relay", help="Write the starter as relay NAME under relays:, ready for more relays.")
@_json_option
@_fails_cleanly
def init(config_path: str | None, relay: str | None, as_json: bool) -> None:
    """Write a starter lines.yaml to the user config dir; an existing file is never overwritten.

    \b
    Example:
        linepicker init && linepicker add hk https://hk.example-relay.com
        linepicker init --relay whatai && linepicker add --relay claude main https://claude-relay.example
    """
    from .config import find_config
    from .configedit import init as write_starter
    from .report import terminal

    path, in_force = write_starter(config_path, relay)
    terminal.config_written(path, in_force, find_config(None)[0], as_json)


@cli.command()
@click.argument("name")
@click.argument("url")
@click.option("--proxy", help="Probe this line through this http:// proxy, or 'none' to never use one.")
@_edit_relay_option
@_config_option
@_json_option
@_fails_cleanly
def add(name: str, url: str, proxy: str | None, relay: str | None, config_path: str | None, as_json: bool) -> None:
    """Add line NAME at URL to lines.yaml, keeping its comments and layout.

    With --relay, to that relay's lines; a relay the file does not have yet is
    added under relays: with this line.

    \b
    Example:
        linepicker add hk https://hk.example-relay.com --proxy http://127.0.0.1:7890
        linepicker add --relay claude main https://claude-relay.example
    """
    from .report import terminal
    from .configedit import add_line, editable_path

    terminal.config_edited(add_line(editable_path(config_path), name, url, proxy, relay), "added", as_json)


@cli.command()
@click.argument("name", shell_complete=_line_names)
@_edit_relay_option
@_config_option
@_json_option
@_fails_cleanly
def remove(name: str, relay: str | None, config_path: str | None, as_json: bool) -> None:
    """Remove line NAME from lines.yaml (and from exclude:), keeping everything else.

    NAME may be RELAY/LINE; --relay says the relay too.

    \b
    Example:
        linepicker remove hk
        linepicker remove claude/hk
    """
    from .report import terminal
    from .configedit import editable_path, remove_line

    terminal.config_edited(remove_line(editable_path(config_path), name, relay), "removed", as_json)


def _histories(picked: list[tuple[Any, tuple[str, ...]]], store: Any, span_s: float | None, buckets: int | None = None, most: int | None = None) -> list[tuple[Any, Any]]:
    """Each relay's history (only the lines named, if any) over one span: without --since, the
    longest of the spans each relay's data would fit, so the relays' charts compare."""
    from .report.history import history as load_history

    extra = {"most": most} if most else {}
    results = [(config, load_history(config, store, span_s, lines, buckets, **extra)) for config, lines in picked]
    if span_s is None and len({history.span_s for _, history in results}) > 1:
        longest = max(history.span_s for _, history in results)
        results = [(config, load_history(config, store, longest, lines, buckets, **extra)) for config, lines in picked]
    return results


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
@click.option("--line", "names", multiple=True, shell_complete=_line_names, help="Only this line, or RELAY/LINE (repeatable).")
@click.option("--buckets", type=click.IntRange(4, 500), help="Marks per line (default: fits the terminal, each at least two probe intervals wide).")
@_relay_command_options
def history(
    span_s: float | None, names: tuple[str, ...], buckets: int | None, config_path: str | None, db_path: str | None, relay_names: tuple[str, ...], as_json: bool
) -> None:
    """Show how each line behaved: sparklines of median latency and failures, and the switches.

    \b
    Example:
        linepicker history --since 7d --line main
        linepicker history --relay claude
    """
    from .report import documents, terminal

    setup = _load(config_path)
    most = max(12, min(120, terminal.stdout.width - 4))
    with _open_store(db_path) as store:
        results = _histories(setup.line_filter(names, relay_names), store, span_s, buckets, most)
    if as_json:
        terminal.print_json(documents.with_relays([(config.relay, documents.history_json(result)) for config, result in results]))
    else:
        for config, result in results:
            terminal.relay_heading(setup, config)
            terminal.render_history(result)


@cli.command()
@click.option("--html", "html_path", required=True, type=click.Path(dir_okay=False), help="The HTML file to write.")
@_span_option
@_relay_command_options
def report(html_path: str, span_s: float | None, config_path: str | None, db_path: str | None, relay_names: tuple[str, ...], as_json: bool) -> None:
    """Write one self-contained HTML file with each line's latency chart and the switches.

    \b
    Example:
        linepicker report --html relay.html --since 7d && xdg-open relay.html
    """
    import time
    from pathlib import Path

    from .fsutil import atomic_write
    from .report import terminal
    from .report.page import render_relay_reports

    setup = _load(config_path)
    with _open_store(db_path) as store:
        histories = _histories([(config, ()) for config in setup.select(relay_names)], store, span_s)
    results = [(config.relay if setup.named else None, history) for config, history in histories]
    path = Path(html_path)
    atomic_write(path, render_relay_reports(results, str(setup.source), time.time()).encode("utf-8"))
    terminal.report_written(path, results, as_json)


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
