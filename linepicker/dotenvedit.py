"""Set keys in a .env file the way its readers see it, with values that every reader reads back exactly.

Two kinds of program read a .env: dotenv loaders (python-dotenv's grammar is
the reference: its parser is used here to find where each binding starts and
ends) and POSIX shells (`set -a; . ./.env`). Only what python-dotenv calls a
binding of one of our keys is rewritten, so a line that merely looks like one
inside another key's multi-line quoted value stays, and so do \\x0c or U+2028
in the middle of a line (dotenv and sh end lines at \\n and \\r only). Every
other byte, comments, `export ` prefixes, CRLF, stays as it was.

A value is written bare, single- or double-quoted, keeping the user's choice
where that reads back the same in both kinds of reader; one that no quoting
can carry exactly through both is refused rather than written to mean
something else (or to run code when sourced).
"""

from __future__ import annotations

import io
import re

from .urlmask import mask_userinfo

# The head of a binding, by python-dotenv's grammar: blank space (newlines included) before it, `export `,
# the key (bare or single-quoted), spaces, '=', spaces.
_HEAD = re.compile(r"(\s*)(export[^\S\r\n]+)?('[^']+'|[^=#\s]+)([^\S\r\n]*)(=[^\S\r\n]*)?")
_SINGLE = re.compile(r"'(?:\\.|[^'\\])*'", re.DOTALL)
_DOUBLE = re.compile(r'"(?:\\.|[^"\\])*"', re.DOTALL)
_BARE = re.compile(r"[^\r\n]*")
_BARE_COMMENT = re.compile(r"\s+#.*|\s+$")

# Bare in both readers: no shell metacharacter, no glob, no quote, no dotenv comment or escape.
_SAFE_BARE = re.compile(r"[A-Za-z0-9_@%+=:,./-]+")
# Text no reader keeps as it is: line ends and other controls, and python-dotenv's ${VAR} interpolation.
_UNWRITABLE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]|\$\{")


def render(text: str, values: dict[str, str]) -> str:
    """The .env text with each key of values set, in place where a binding of it is, else appended.

    Raises ValueError for a value no quoting reads back exactly in both sh and dotenv loaders.
    """
    from dotenv.parser import parse_stream

    bom = "\ufeff" if text.startswith("\ufeff") else ""
    body = text[len(bom) :]
    bindings = list(parse_stream(io.StringIO(body)))
    if "".join(binding.original.string for binding in bindings) != body:
        raise ValueError("cannot be split into dotenv bindings")  # python-dotenv's parser covers every character; a guard
    seen = set()
    out = []
    for binding in bindings:
        piece = binding.original.string
        if not binding.error and binding.key in values:
            piece = _rewrite(piece, values[binding.key])
            seen.add(binding.key)
        out.append(piece)
    missing = [name for name in values if name not in seen]
    if missing:
        newline = "\r\n" if "\r\n" in body else "\n"
        if body and not body.endswith(("\n", "\r")):
            out.append(newline)
        out.extend(f"{name}={quote(values[name], '')}{newline}" for name in missing)
    return bom + "".join(out)


def _rewrite(piece: str, value: str) -> str:
    """One binding's text with its value replaced, keeping what surrounds the value (comment, line end)."""
    head = _HEAD.match(piece)
    assert head is not None, piece  # parse_stream found a key here
    lead, export, key, space, equals = head.groups()
    at = head.end()
    if equals is None:  # `KEY` alone: dotenv reads it as unset; give it a value
        return f"{lead}{export or ''}{key}{space}={quote(value, '')}{piece[at:]}"
    if len(equals) > 1 and piece.startswith("#", at):  # `KEY= # note`: an empty value, then a comment
        return f"{piece[:at]}{quote(value, '')} {piece[at:]}"
    old = _SINGLE.match(piece, at) or _DOUBLE.match(piece, at)
    if old is not None:
        end = old.end()
    else:
        bare = _BARE.match(piece, at).group(0)  # type: ignore[union-attr]
        comment = _BARE_COMMENT.search(bare)
        end = at + (comment.start() if comment else len(bare))
    return piece[:at] + quote(value, piece[at:end]) + piece[end:]


def quote(value: str, old: str) -> str:
    """The value in the user's quoting (that of `old`) when both readers read it back from that, else in one that does."""
    if _UNWRITABLE.search(value):
        raise ValueError(f"{mask_userinfo(repr(value))} cannot be written so that both sh and dotenv loaders read it back")
    single = "'" not in value and "\\" not in value  # sh: no escapes inside '...'; dotenv: \\ and \' are
    # Inside "...", sh and dotenv both read \\ and \" as \ and "; $ and ` only sh expands, and \$ only sh undoes.
    double = not re.search(r"[$`]", value)
    doubled = '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    style = old[:1]
    if style not in ("'", '"') and _SAFE_BARE.fullmatch(value):
        return value
    if style == '"' and double:
        return doubled
    if single:
        return f"'{value}'"
    if double:
        return doubled
    raise ValueError(f"{mask_userinfo(repr(value))} cannot be quoted so that both sh and dotenv loaders read it back")
