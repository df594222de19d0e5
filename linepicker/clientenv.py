"""What each client reads to find its BaseURL, and how every shell is told it.

Standard library only and cheap to import: the `env` fast path (entry.py) and
the target writers both use this vocabulary, so it cannot live with either.
"""

from __future__ import annotations

import os

SHELLS = ("bash", "zsh", "fish", "powershell", "cmd")
DEFAULT_RELAY = "default"  # the one relay of a config with top-level `lines:`, and of every database before relays
# Every variable a relay's choice can set, in the order they are printed; a relay's `exports:` picks among them.
CLIENT_VARIABLES = ("OPENAI_BASE_URL", "OPENAI_API_BASE", "ANTHROPIC_BASE_URL")

# The start-up line for each shell, and where it goes. Each names its shell: $SHELL is the login
# shell, not the one reading the file, so a bash started from fish would get fish syntax otherwise.
RC_LINES = {
    "bash": ("~/.bashrc", 'eval "$(linepicker env --shell bash)"'),
    "zsh": ("~/.zshrc", 'eval "$(linepicker env --shell zsh)"'),
    "fish": ("~/.config/fish/config.fish", "linepicker env --shell fish | source"),
    "powershell": ("$PROFILE", "linepicker env --shell powershell | Out-String | Invoke-Expression"),
    # A batch file, as the exports are escaped for one (a `for /f ... do %%i` loop would not undo %%).
    "cmd": ("an AutoRun .cmd file", 'linepicker env --shell cmd > "%TEMP%\\linepicker-env.cmd" && call "%TEMP%\\linepicker-env.cmd"'),
}

# Shells that read the same export syntax: bash's exports are zsh's too (and sh's).
SYNTAX = {"bash": "posix", "zsh": "posix", "fish": "fish", "powershell": "powershell", "cmd": "cmd"}


def client_env(url: str, exports: tuple[str, ...] | list[str] = CLIENT_VARIABLES) -> dict[str, str]:
    """What each client reads: the OpenAI SDKs want /v1, Claude Code the bare host.

    Only the variables in `exports` are set, so two relays can each own some of them.
    """
    forms = {
        "OPENAI_BASE_URL": f"{url}/v1",
        "OPENAI_API_BASE": f"{url}/v1",
        "ANTHROPIC_BASE_URL": url,
    }
    return {name: value for name, value in forms.items() if name in exports}


def shell_exports(url: str, shell: str, exports: tuple[str, ...] | list[str] = CLIENT_VARIABLES) -> str:
    return format_exports(client_env(url, exports), shell)


def format_exports(variables: dict[str, str], shell: str) -> str:
    """Variables as lines the shell evaluates; no comment lines, which interactive zsh would run as commands."""
    return "".join(_export_line(name, value, shell) + "\n" for name, value in variables.items())


def _export_line(name: str, value: str, shell: str) -> str:
    if shell in ("bash", "zsh"):
        return f"export {name}={_posix_quote(value)}"
    if shell == "fish":
        return f"set -gx {name} {_fish_quote(value)};"
    if shell == "powershell":
        return f"$env:{name} = '{_powershell_quote(value)}'"
    if shell == "cmd":
        return f'set "{name}={_cmd_quote(value)}"'
    raise ValueError(f"unknown shell {shell!r}; choose one of {', '.join(SHELLS)}")


def _powershell_quote(value: str) -> str:
    """Inside '...' PowerShell ends the string at any of ' ‘ ’ ‚ ‛, and reads each one doubled as itself."""
    return "".join(char * 2 if char in "'\u2018\u2019\u201a\u201b" else char for char in value)


def _cmd_quote(value: str) -> str:
    """The value inside `set "NAME=..."` as a batch file reads it (delayed expansion off, cmd's default).

    `%` expands even between quotes, so it is doubled. Between quotes & | < > ^ ( ) ! are plain
    text, but each `"` in the value turns the quoting off or on again, and where it is off they
    are escaped with ^. `set` itself keeps every quote but the first and the last.
    """
    out = []
    quoted = True
    for char in value:
        if char == '"':
            quoted = not quoted
            out.append(char)
        elif char == "%":
            out.append("%%")
        elif not quoted and char in "^&|<>()!":
            out.append("^" + char)
        else:
            out.append(char)
    return "".join(out)


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
