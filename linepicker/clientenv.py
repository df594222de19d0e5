"""What each client reads to find its BaseURL, and how every shell is told it.

Standard library only and cheap to import: the `env` fast path (entry.py) and
the target writers both use this vocabulary, so it cannot live with either.
"""

from __future__ import annotations

import os

SHELLS = ("bash", "zsh", "fish", "powershell", "cmd")


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
