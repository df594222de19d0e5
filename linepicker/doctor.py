"""Find what would silently keep a client off the chosen line.

linepicker can choose the best line and write it everywhere it was told to,
and a client still talks to the old one: a variable exported by hand in a
shell rc file, a Claude Code settings file with higher precedence, a Codex
config that selects another provider, a proxy the probes used that the client
does not, a key the chosen line rejects. Each finding says where it is and how
to fix it. Nothing here writes anything.
"""

from __future__ import annotations

import os
import re
import tomllib
import urllib.request
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Mapping
from urllib.parse import urlsplit

from . import jsonedit
from .config import CODEX_BUILTIN_PROVIDERS, Config, Line
from .clientenv import CLIENT_VARIABLES, RC_LINES, SHELLS, SYNTAX, client_env, detect_shell
from .gatewaylease import live_gateway
from .probe.outcomes import AUTH
from .probe.timing import proxy_for
from .store import Decision, Store
from .targets import CLAUDE_KEY
from .urlmask import mask_userinfo

ERROR = "error"  # a client does not use the chosen line now
WARNING = "warning"  # it will not follow the next switch, or may not reach the line the way it was measured


@dataclass(frozen=True)
class Finding:
    severity: str
    what: str
    where: str  # file:line, or the environment variable
    fix: str


@dataclass(frozen=True)
class Diagnosis:
    choice: Decision | None
    findings: list[Finding]
    checked: list[str] = field(default_factory=list)  # files read, so "nothing found" says where nobody looked


def diagnose(config: Config, store: Store) -> Diagnosis:
    """Judge this shell (its environment, HOME and current directory) against the relay's choice in the store.

    Only the variables the relay exports are its business: another relay's are judged against that relay's choice.
    """
    environ, home, cwd = os.environ, Path.home(), Path.cwd()
    store = store.scoped(config.relay)
    choice = store.choice()
    findings: list[Finding] = []
    checked: list[str] = []
    if choice is None:
        findings.append(Finding(ERROR, "no line has been chosen yet, so there is nothing for clients to use", str(store.path), "run: linepicker pick"))
    handed = (live_gateway(str(store.path), store.relay) or choice.url) if choice else None  # what `env` and the targets give out now
    expected = client_env(handed, config.exports) if handed else None
    if expected:
        findings += _environment(environ, expected)
    findings += _rc_files(home, environ, expected, checked, config.exports)
    if "ANTHROPIC_BASE_URL" in config.exports or config.targets.claude_settings:
        findings += _claude_settings(config, home, cwd, environ, handed, checked)
    findings += _codex(config, environ, checked)
    if choice:
        findings += _key(config, store, choice)
        line = config.line(choice.name)
        if line is not None and line.url == choice.url:
            findings += _proxies(config, line)
    return Diagnosis(choice, [_masked(finding) for finding in findings], checked)


def _masked(finding: Finding) -> Finding:
    """Findings quote proxies, variables and files, any of which may hold a URL's password: shown as user:***@."""
    return Finding(finding.severity, mask_userinfo(finding.what), mask_userinfo(finding.where), mask_userinfo(finding.fix))


def client_checks(config: Config, choice: Decision, written: list[Path], handed: str | None = None) -> list[Finding]:
    """After `written` target files were brought up to date: what still keeps Claude Code or Codex off them.

    Only the clients linepicker just wrote for are judged, in this process's environment,
    HOME and directory. A target that could not be written is already an error of its own.
    `handed`: the URL written, when it is a live gateway's rather than the chosen line's.
    """
    environ, home, cwd = os.environ, Path.home(), Path.cwd()
    done = {path.resolve() for path in written}
    codex = tuple(target for target in config.targets.codex if target.path.resolve() in done)
    findings = _codex(replace(config, targets=replace(config.targets, codex=codex)), environ, [])
    if any(path.resolve() in done for path in config.targets.claude_settings):
        findings += _claude_settings(config, home, cwd, environ, handed or choice.url, [])
    return [_masked(finding) for finding in findings]


def _same_url(a: str, b: str) -> bool:
    return a.strip().rstrip("/") == b.rstrip("/")


def _environment(environ: Mapping[str, str], expected: dict[str, str]) -> list[Finding]:
    findings = []
    for name, value in expected.items():
        actual = environ.get(name)
        if actual is not None and not _same_url(actual, value):
            findings.append(
                Finding(
                    ERROR,
                    f"{name}={actual} is exported in this shell, not the chosen {value}",
                    f"environment: {name}",
                    f"run: {RC_LINES[detect_shell()][1]}  (or open a new shell); if it comes back, a shell start-up file or a parent process sets it",
                )
            )
    return findings


def _rc_families(home: Path, environ: Mapping[str, str]) -> list[tuple[str, list[Path]]]:
    """Each shell's start-up files in the order it reads them, as a later `linepicker env` overrides an earlier fixed value.

    ~/.profile is read by sh too, which takes bash's export syntax.
    """
    config_home = Path(environ.get("XDG_CONFIG_HOME") or home / ".config")
    zdot = Path(environ.get("ZDOTDIR") or home)
    return [
        ("bash", [home / ".profile", home / ".bash_profile", home / ".bash_login", home / ".bashrc"]),
        ("zsh", [zdot / ".zshenv", zdot / ".zprofile", zdot / ".zshrc"]),
        ("fish", [config_home / "fish" / "config.fish"]),
    ]


_NAMES = "OPENAI_BASE_URL|OPENAI_API_BASE|ANTHROPIC_BASE_URL"
_POSIX_SET = re.compile(rf"^\s*(?:export\s+|declare\s+-x\s+|typeset\s+-x\s+)?({_NAMES})=(.*)$")
_FISH_SET = re.compile(rf"^\s*set\s+((?:-\S+\s+)*)({_NAMES})\s+(.*)$")
_ENV_CALL = re.compile(r"\blinepicker\b.*\benv\b")
_SHELL_FLAG = re.compile(r"--shell(?:=|\s+)['\"]?(\w+)")


@dataclass(frozen=True)
class _Assignment:
    path: Path
    line: int
    name: str
    value: str


def _rc_files(
    home: Path, environ: Mapping[str, str], expected: dict[str, str] | None, checked: list[str], names: tuple[str, ...] = CLIENT_VARIABLES
) -> list[Finding]:
    findings = []
    for shell, paths in _rc_families(home, environ):
        syntax = SYNTAX[shell]
        fixed: list[tuple[_Assignment, int]] = []  # each with its position in the family's reading order
        last_eval = -1
        for order, path in enumerate(paths):
            try:
                text = path.read_bytes().decode("utf-8", errors="replace")  # bytes: a lone \r is no line end to a shell
            except OSError:
                continue
            checked.append(str(path))
            for number, raw in enumerate(text.split("\n"), 1):  # a shell ends lines at \n only, not at \x0c or U+2028
                stripped = raw.strip()
                if not stripped or stripped.startswith("#"):
                    continue
                position = order * 1_000_000 + number
                if _ENV_CALL.search(stripped):
                    if wrong := _wrong_shell(stripped, shell, f"{path}:{number}"):
                        findings.append(wrong)  # it exports nothing, so it overrides nothing
                    else:
                        last_eval = position
                    continue
                assignment = _fixed_assignment(path, number, raw, syntax)
                if assignment and assignment.name in names:
                    fixed.append((assignment, position))
        for assignment, position in fixed:
            if position < last_eval:
                continue  # a later `linepicker env` in this shell's start-up overrides it
            findings.append(_rc_finding(assignment, shell, expected))
    return findings


def _wrong_shell(call: str, shell: str, where: str) -> Finding | None:
    """A `linepicker env` line whose output this shell cannot run: another shell's syntax exports nothing.

    Without --shell the syntax follows $SHELL, the login shell, which need not be the shell reading the file.
    """
    named = _SHELL_FLAG.search(call)
    printed = named.group(1) if named else detect_shell()
    if printed not in SHELLS or SYNTAX[printed] == SYNTAX[shell]:
        return None
    login = os.environ.get("SHELL")
    how = f"--shell {printed}" if named else (f"$SHELL={login}" if login else "$SHELL unset") + ", and no --shell"
    return Finding(
        ERROR,
        f"this `linepicker env` prints {printed} syntax here ({how}), which {shell} cannot run: nothing is exported",
        where,
        f"replace it with: {RC_LINES[shell][1]}",
    )


def _fixed_assignment(path: Path, number: int, raw: str, syntax: str) -> _Assignment | None:
    """A literal value only: one computed at start-up ($VAR, $(...), `...`) may well follow the choice."""
    if syntax == "fish":
        match = _FISH_SET.match(raw)
        if not match or re.search(r"(^|\s)(-\w*e\w*|--erase|--query|-\w*q\w*)\b", match.group(1)):
            return None
        name, value = match.group(2), match.group(3).strip().rstrip(";").strip()
        if value.startswith("'") and value.endswith("'") and len(value) > 1:
            return _Assignment(path, number, name, value[1:-1])
        if "$" in value or "(" in value:
            return None
    else:
        match = _POSIX_SET.match(raw)
        if not match:
            return None
        name, value = match.group(1), match.group(2).strip()
        if value.startswith("'"):
            end = value.find("'", 1)
            return _Assignment(path, number, name, value[1:end]) if end > 0 else None
        if "$" in value or "`" in value:
            return None
    if value.startswith('"'):
        end = value.find('"', 1)
        return _Assignment(path, number, name, value[1:end]) if end > 0 else None
    value = value.split()[0] if value.split() else ""
    return _Assignment(path, number, name, value) if value else None


def _rc_finding(assignment: _Assignment, shell: str, expected: dict[str, str] | None) -> Finding:
    line = RC_LINES[shell][1]
    where = f"{assignment.path}:{assignment.line}"
    fix = f"delete that line and end the file with: {line}"
    if expected and _same_url(assignment.value, expected[assignment.name]):
        return Finding(WARNING, f"{assignment.name} is set to a fixed value, the current choice today, but it will not follow the next switch", where, fix)
    shown = f", not the chosen {expected[assignment.name]}" if expected else ""
    return Finding(ERROR, f"{assignment.name} is set to a fixed {assignment.value}{shown}", where, fix)


def _claude_settings(config: Config, home: Path, cwd: Path, environ: Mapping[str, str], handed: str | None, checked: list[str]) -> list[Finding]:
    """Claude Code's settings files, lowest precedence first: the last one that sets the variable wins."""
    user_dir = Path(environ.get("CLAUDE_CONFIG_DIR") or home / ".claude")
    candidates = [user_dir / "settings.json", cwd / ".claude" / "settings.json", cwd / ".claude" / "settings.local.json"]
    findings = []
    default = (home / ".claude" / "settings.json").resolve()
    for target in config.targets.claude_settings:
        if target.resolve() == default and default != candidates[0].resolve():
            findings.append(
                Finding(
                    WARNING,
                    f"CLAUDE_CONFIG_DIR is set, so Claude Code reads {candidates[0]}, not {target}",
                    "environment: CLAUDE_CONFIG_DIR",
                    f"point targets.claude_settings in {config.source} at $CLAUDE_CONFIG_DIR/settings.json",
                )
            )
    seen: set[Path] = set()
    winner: tuple[Path, str, int] | None = None
    for path in candidates:
        real = path.resolve()
        if real in seen:
            continue
        seen.add(real)
        try:
            raw = path.read_bytes()
        except OSError:
            continue
        checked.append(str(path))
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            line = raw.count(b"\n", 0, exc.start) + 1
            findings.append(Finding(WARNING, f"not UTF-8 text (byte {exc.start}): Claude Code cannot use it, and linepicker leaves it untouched", f"{path}:{line}", "save it as UTF-8"))
            continue
        try:
            value = jsonedit.get(text.removeprefix("\ufeff"), CLAUDE_KEY) if text.strip() else None
        except jsonedit.JSONError as exc:
            line = int(match.group(1)) if (match := re.match(r"line (\d+)", str(exc))) else 1
            findings.append(Finding(WARNING, f"not valid JSON ({exc}): Claude Code cannot use it, and linepicker leaves it untouched", f"{path}:{line}", "fix the JSON syntax"))
            continue
        if isinstance(value, str):
            winner = (path, value, _line_of(text, _CLAUDE_KEY))
    if winner is None or handed is None:
        return findings
    path, value, line = winner
    ours = any(path.resolve() == target.resolve() for target in config.targets.claude_settings)
    where = f"{path}:{line}"
    if not _same_url(value, handed):
        fix = "run: linepicker pick  (it rewrites its targets)" if ours else f"add it to targets.claude_settings in {config.source}, or delete env.ANTHROPIC_BASE_URL there"
        findings.append(Finding(ERROR, f"Claude Code uses ANTHROPIC_BASE_URL={value} from this file (it overrides the shell and lower settings), not the chosen {handed}", where, fix))
    elif not ours:
        findings.append(
            Finding(WARNING, "ANTHROPIC_BASE_URL is set here to the current choice, but linepicker does not keep this file: it will not follow the next switch", where, f"add it to targets.claude_settings in {config.source}")
        )
    return findings


_CLAUDE_KEY = re.compile(r'"ANTHROPIC_BASE_URL"\s*:')
_MODEL_PROVIDER = re.compile(r"^\s*model_provider\s*=", re.MULTILINE)


def _line_of(text: str, pattern: re.Pattern[str]) -> int:
    """The line of the pattern's last occurrence: of duplicate keys, JSON and TOML readers keep the last."""
    match = None
    for match in pattern.finditer(text):
        pass
    return text.count("\n", 0, match.start()) + 1 if match else 1


def _codex(config: Config, environ: Mapping[str, str], checked: list[str]) -> list[Finding]:
    findings = []
    codex_home = environ.get("CODEX_HOME")
    for target in config.targets.codex:
        if codex_home and target.path.resolve() != (Path(codex_home).expanduser() / "config.toml").resolve():
            findings.append(
                Finding(WARNING, f"CODEX_HOME is set, so Codex reads {Path(codex_home) / 'config.toml'}, not {target.path}", "environment: CODEX_HOME", f"point targets.codex in {config.source} at $CODEX_HOME/config.toml")
            )
        try:
            text = target.path.read_text(encoding="utf-8")
            data = tomllib.loads(text)
        except OSError:
            continue
        except (ValueError, UnicodeDecodeError) as exc:
            findings.append(Finding(ERROR, f"not valid TOML ({exc}): Codex cannot start, and linepicker leaves it untouched", str(target.path), "fix the TOML syntax"))
            continue
        checked.append(str(target.path))
        selected = data.get("model_provider")
        if selected is not None and selected != target.provider:
            other = (
                f"Codex's built-in {selected!r} cannot be pointed at a relay"
                if selected in CODEX_BUILTIN_PROVIDERS
                else f"or name {selected!r} as the provider of targets.codex"
            )
            findings.append(
                Finding(
                    ERROR,
                    f"Codex uses model_provider = {selected!r}, so the base_url linepicker keeps in [model_providers.{target.provider}] is never read",
                    f"{target.path}:{_line_of(text, _MODEL_PROVIDER)}",
                    f'set model_provider = "{target.provider}" there ({other})',
                )
            )
    return findings


def _key(config: Config, store: Store, choice: Decision) -> list[Finding]:
    samples = store.latest_round_samples(choice.name, choice.url)
    rejected = [s for s in samples if s.outcome == AUTH and s.key_sent]
    if not rejected:
        return []
    status = rejected[-1].status
    return [
        Finding(
            ERROR,
            f"the chosen line {choice.name} rejected the key in ${config.key_env} in its latest round (HTTP {status}): clients with that key will be refused",
            f"environment: {config.key_env}",
            "check the key on the relay's dashboard; every line of a relay takes the same key, so one that all lines reject is wrong or expired",
        )
    ]


def _proxies(config: Config, line: Line) -> list[Finding]:
    """Probes and clients must reach the line the same way, or the measurement is of another path."""
    findings = []
    probed = proxy_for(line, line.url)
    client = proxy_for(Line(line.name, line.url), line.url)  # the environment alone, as the SDKs read it
    where = config.where(line.name, "proxy")
    if line.proxy and line.proxy != "none" and client != line.proxy:
        how = f"through {client}" if client else "direct"
        findings.append(
            Finding(
                WARNING,
                f"{line.name} is probed through its own proxy {line.proxy}, but clients follow the environment and go {how}",
                where,
                f"export HTTPS_PROXY={line.proxy} for your clients too, or remove proxy: from the line so it is measured the way clients reach it",
            )
        )
    elif line.proxy == "none" and client:
        findings.append(
            Finding(
                WARNING,
                f"{line.name} is probed direct (proxy: none), but clients go through {client} from the environment",
                where,
                f"add {urlsplit(line.url).hostname} to NO_PROXY for your clients too, or remove proxy: none from the line",
            )
        )
    elif probed and not urllib.request.getproxies_environment().get(urlsplit(line.url).scheme):
        findings.append(
            Finding(
                WARNING,
                f"{line.name} is probed through ALL_PROXY={probed}; Claude Code reads only HTTPS_PROXY/HTTP_PROXY and goes direct",
                "environment: ALL_PROXY",
                f"export HTTPS_PROXY={probed} as well",
            )
        )
    for upper in ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "NO_PROXY"):
        lower = upper.lower()
        if os.environ.get(upper) and os.environ.get(lower) and os.environ[upper] != os.environ[lower]:
            findings.append(
                Finding(
                    WARNING,
                    f"{upper}={os.environ[upper]} and {lower}={os.environ[lower]} differ; tools disagree on which wins (linepicker and the Python SDKs take {lower})",
                    f"environment: {upper}",
                    "set both to the same value, or unset one of them",
                )
            )
    if line.insecure:
        findings.append(
            Finding(
                WARNING,
                f"{line.name} is probed with insecure: true, but clients check its certificate and may refuse it",
                config.where(line.name, "insecure"),
                "give the line a valid certificate (or trust its CA: SSL_CERT_FILE, NODE_EXTRA_CA_CERTS) and remove insecure: true",
            )
        )
    return findings
