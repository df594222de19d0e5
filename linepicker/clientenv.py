"""What each client reads to find its BaseURL, and how every shell is told it.

Standard library only and cheap to import: the `env` fast path (entry.py) and
the target writers both use this vocabulary, so it cannot live with either.
"""

from __future__ import annotations

import os

SHELLS = ("bash", "zsh", "fish", "powershell", "cmd")

# The start-up line for each shell, and where it goes. Each names its shell: $SHELL is the login
# shell, not the one reading the file, so a bash started from fish would get fish syntax otherwise.
RC_LINES = {
    "bash": ("~/.bashrc", 'eval "$(linepicker env --shell bash)"'),
    "zsh": ("~/.zshrc", 'eval "$(linepicker env --shell zsh)"'),
    "fish": ("~/.config/fish/config.fish", "linepicker env --shell fish | source"),
    "powershell": ("$PROFILE", "linepicker env --shell powershell | Out-String | Invoke-Expression"),
    "cmd": ("an AutoRun .cmd file", "for /f \"delims=\" %%i in ('linepicker env --shell cmd') do %%i"),
}

# Shells that read the same export syntax: bash's exports are zsh's too (and sh's).
SYNTAX = {"bash": "posix", "zsh": "posix", "fish": "fish", "powershell": "powershell", "cmd": "cmd"}


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
    """The fallback when --shell is not given: $SHELL names the login shell, which is often, not always, the one asking."""
    name = os.path.basename(os.environ.get("SHELL", "").rstrip("/\\"))
    if name in SHELLS:
        return name
    if os.name == "nt":
        return "powershell"
    return "bash"
