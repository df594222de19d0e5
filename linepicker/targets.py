"""Hand the chosen line to the files users' tools read: .env files, Claude Code's settings,
Codex's config.toml and files rendered from a template.

The files written here belong to the user. Every write is atomic
(fsutil.atomic_write), keeps every key we do not own and the file's mode, and
a file we cannot parse is left exactly as it was. tomlkit is imported by the
Codex writer alone, so a run without a Codex target never pays for it.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from . import jsonedit
from .dotenvedit import render as render_dotenv
from .errors import TargetError
from .clientenv import CLIENT_VARIABLES, client_env
from .fsutil import atomic_write

if TYPE_CHECKING:
    from .config import CodexTarget, Targets, TemplateTarget

@dataclass(frozen=True)
class TargetResult:
    kind: str
    path: Path
    changed: bool  # False: the file already said this


def update_dotenv(path: Path, url: str, exports: tuple[str, ...] = CLIENT_VARIABLES) -> TargetResult:
    """Set our keys (the relay's exports) in a .env file where its readers see them (see dotenvedit), and keep every other byte."""
    try:
        original = path.read_bytes().decode("utf-8") if path.exists() else None
    except (OSError, UnicodeDecodeError) as exc:
        raise TargetError(f"{path}: cannot read: {exc}") from None
    try:
        updated = render_dotenv(original or "", client_env(url, exports))
    except ValueError as exc:
        raise TargetError(f"{path}: {exc}; left untouched") from None
    return _write_if_changed("dotenv", path, original, updated)


def update_claude_settings(path: Path, url: str) -> TargetResult:
    """Set env.ANTHROPIC_BASE_URL in Claude Code's settings.json by editing that value's text alone (see jsonedit)."""
    try:
        raw = path.read_bytes() if path.exists() else None  # bytes: CRLF stays CRLF
        original = None if raw is None else raw.decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise TargetError(f"{path}: cannot read: {exc}") from None
    text = original or ""
    bom = "\ufeff" if text.startswith("\ufeff") else ""
    body = text[len(bom) :]
    try:
        if body.strip() and jsonedit.get(body, CLAUDE_KEY) == url:
            return TargetResult("claude_settings", path, False)
        updated = bom + jsonedit.set_string(body, CLAUDE_KEY, url)
    except jsonedit.JSONError as exc:
        raise TargetError(f"{path}: not valid JSON ({exc}); left untouched") from None
    except ValueError as exc:
        raise TargetError(f"{path}: {exc}; left untouched") from None
    return _write_if_changed("claude_settings", path, original, updated)


CLAUDE_KEY = ("env", "ANTHROPIC_BASE_URL")


def update_codex(target: "CodexTarget", url: str) -> TargetResult:
    """Set base_url in Codex's [model_providers.<id>] table, keeping comments, layout and every other key.

    Codex reads only the provider named by the top-level `model_provider`, so
    that key is set when the file has none; one naming another provider is the
    user's choice and stays (`linepicker doctor` points it out).
    """
    import tomlkit
    from tomlkit.exceptions import TOMLKitError

    path = target.path
    try:
        original = path.read_bytes().decode("utf-8") if path.exists() else None  # bytes: CRLF files stay CRLF
    except (OSError, UnicodeDecodeError) as exc:
        raise TargetError(f"{path}: cannot read: {exc}") from None
    try:
        document = tomlkit.parse(original or "")
    except TOMLKitError as exc:
        raise TargetError(f"{path}: not valid TOML ({exc}); left untouched") from None
    providers = document.get("model_providers")
    if providers is None:
        providers = tomlkit.table(is_super_table=True)
        document["model_providers"] = providers
    if not isinstance(providers, dict):
        raise TargetError(f"{path}: 'model_providers' is not a table; left untouched")
    table = providers.get(target.provider)
    created = table is None
    if created:
        table = tomlkit.table()
        table["name"] = "relay line chosen by linepicker"
        table["base_url"] = f"{url}/v1"
        table["env_key"] = target.env_key
        table["wire_api"] = "responses"
        table.add(tomlkit.nl())
        providers[target.provider] = table
    elif not isinstance(table, dict):
        raise TargetError(f"{path}: 'model_providers.{target.provider}' is not a table; left untouched")
    elif table.get("base_url") != f"{url}/v1":  # reassigning an equal value could still restyle its quoting
        table["base_url"] = f"{url}/v1"
    if "model_provider" not in document:
        document["model_provider"] = target.provider
    updated = tomlkit.dumps(document)
    if created:  # the blank line that sets a new table apart from the next one is not wanted at the end
        updated = updated.rstrip("\n") + "\n"
    return _write_if_changed("codex", path, original, updated)


def render_template(template: str, name: str, url: str) -> str:
    """The placeholders were checked against TEMPLATE_FIELDS when the config was read."""
    return template.format(url=url, url_v1=f"{url}/v1", name=name)


def update_template(target: "TemplateTarget", name: str, url: str) -> TargetResult:
    """The whole file is the rendered template: it belongs to this target."""
    try:
        original = target.path.read_bytes().decode("utf-8") if target.path.exists() else None
    except (OSError, UnicodeDecodeError) as exc:
        raise TargetError(f"{target.path}: cannot read: {exc}") from None
    return _write_if_changed("template", target.path, original, render_template(target.template, name, url))


def write_targets(targets: "Targets", name: str, url: str, exports: tuple[str, ...] = CLIENT_VARIABLES) -> tuple[list[TargetResult], list[str]]:
    """Update every configured file for line `name` at `url`; one broken file does not stop the others.

    .env files get the relay's `exports`, so two relays can share one file, each setting its own variables.
    Besides the failures each writer names, any OSError or ValueError out of one (a file
    holding text no encoder takes, say) is that target's error too: the later targets and
    on_switch still run.
    """
    results: list[TargetResult] = []
    errors: list[str] = []
    writers: list[tuple[Path, Callable[[], TargetResult]]] = [(path, functools.partial(update_dotenv, path, url, exports)) for path in targets.dotenv]
    writers += [(path, functools.partial(update_claude_settings, path, url)) for path in targets.claude_settings]
    writers += [(target.path, functools.partial(update_codex, target, url)) for target in targets.codex]
    writers += [(target.path, functools.partial(update_template, target, name, url)) for target in targets.template]
    for path, update in writers:
        try:
            results.append(update())
        except TargetError as exc:
            errors.append(str(exc))
        except (OSError, ValueError) as exc:
            errors.append(f"{path}: not updated: {' '.join(str(exc).split())}; left untouched")
    return results, errors


def _write_if_changed(kind: str, path: Path, original: str | None, updated: str) -> TargetResult:
    if original == updated:
        return TargetResult(kind, path, False)
    atomic_write(path, updated.encode("utf-8"))
    return TargetResult(kind, path, True)
