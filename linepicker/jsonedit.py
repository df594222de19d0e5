"""Read JSON strictly, and set one string member of a user's JSON file by editing its text in place.

A user's settings.json holds values that no parse/serialise round trip keeps as
written: `1e400` (a float overflow), `1.0` against `1`, `-0.0`, big integers,
`\\u00e9` escapes, the indentation, duplicate keys. So nothing is re-serialised:
the new value replaces the old value's characters, or a new member is inserted
before the object's closing brace, and every other byte stays as it was.

What is not JSON by RFC 8259 (NaN, Infinity, lone UTF-16 surrogates such as
"\\ud83d", a BOM, trailing commas) is refused with `JSONError`, so such a file
is left alone. Standard library only: `linepicker env` imports the writers.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

_WHITESPACE = re.compile(r"[ \t\n\r]*")  # JSON's own four: not \x0c, not U+2028


class JSONError(ValueError):
    """Text that is not strict JSON; str() is one line naming the place."""


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


# Numbers are not converted at all: a 5,000-digit integer or 1e400 is valid JSON that Python's int and float refuse or distort.
_DECODER = json.JSONDecoder(parse_int=lambda text: 0, parse_float=lambda text: 0, parse_constant=_refuse_constant, object_pairs_hook=list)


def check(text: str) -> None:
    """Raise JSONError unless text is one strict JSON document."""
    try:
        document = _DECODER.decode(text)
    except json.JSONDecodeError as exc:
        raise JSONError(f"line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    except ValueError as exc:  # NaN, Infinity
        raise JSONError(str(exc)) from None
    except RecursionError:
        raise JSONError("nested too deeply") from None
    _refuse_surrogates(document)


def _refuse_surrogates(document: object) -> None:
    """A lone surrogate escape decodes to a str that no UTF-8 encoder (and no strict reader) accepts."""
    pending = [document]
    while pending:
        value = pending.pop()
        if isinstance(value, str):
            if _SURROGATE.search(value):
                # The value itself is not quoted: it may be a token (settings.json holds env values).
                raise JSONError("a string holds a lone UTF-16 surrogate escape (such as \\ud83d), which no UTF-8 text can carry")
        elif isinstance(value, (list, tuple)):
            pending.extend(value)


_SURROGATE = re.compile("[\ud800-\udfff]")


def loads(text: str) -> object:
    """Python values of a strict JSON document, or JSONError; numbers are Decimals, exact at any size."""
    from decimal import Decimal

    check(text)
    return json.loads(text, parse_int=Decimal, parse_float=Decimal)


def get(text: str, path: tuple[str, ...]) -> object:
    """The value at path as JSON.parse sees it (the last of duplicate keys), or None."""
    node = loads(text)
    for key in path:
        if not isinstance(node, dict):
            return None
        node = node.get(key)
    return node


@dataclass(frozen=True)
class _Member:
    key: str
    key_start: int
    value_start: int
    value_end: int


def _members(text: str, start: int) -> tuple[list[_Member], int]:
    """The members of the object opening at text[start] ('{'), and the index of its closing '}'."""
    members = []
    i = _WHITESPACE.match(text, start + 1).end()  # type: ignore[union-attr]
    if text[i] == "}":
        return members, i
    while True:
        key_start = i
        key, i = json.decoder.scanstring(text, i + 1)  # type: ignore[attr-defined]
        i = _WHITESPACE.match(text, i).end() + 1  # type: ignore[union-attr]  # past ':'
        value_start = _WHITESPACE.match(text, i).end()  # type: ignore[union-attr]
        _, value_end = _DECODER.raw_decode(text, value_start)
        members.append(_Member(key, key_start, value_start, value_end))
        i = _WHITESPACE.match(text, value_end).end()  # type: ignore[union-attr]
        if text[i] == "}":
            return members, i
        i = _WHITESPACE.match(text, i + 1).end()  # type: ignore[union-attr]  # past ','


def set_string(text: str, path: tuple[str, ...], value: str) -> str:
    """Text with the string member at path (keys from the top object down) set to value.

    Where a key occurs twice, the last one is edited, as JSON.parse (Claude Code's reader) keeps the last.
    Missing objects on the way are created. Raises JSONError for text that is not strict JSON, and
    ValueError when something on the way is not an object.
    """
    if not text.strip():
        return "{\n  " + _member(path, value, "  ", "\n", "  ") + "\n}\n"
    check(text)
    newline = "\r\n" if "\r\n" in text else "\n"
    start = _WHITESPACE.match(text).end()  # type: ignore[union-attr]
    for depth, key in enumerate(path):
        if text[start] != "{":
            raise ValueError(f"{'.'.join(path[:depth])!r} is not a JSON object" if depth else "expected a JSON object at the top")
        members, close = _members(text, start)
        found = [member for member in members if member.key == key]
        if not found:
            return _insert(text, start, members, close, path[depth:], value, newline)
        start = found[-1].value_start
    end = _DECODER.raw_decode(text, start)[1]
    return text[:start] + json.dumps(value, ensure_ascii=False) + text[end:]


def _insert(text: str, start: int, members: list[_Member], close: int, path: tuple[str, ...], value: str, newline: str) -> str:
    """Add path (a key, and objects below it) as the last member of the object at start, in the file's own layout."""
    if "\n" not in text.strip():  # a one-line file stays one line
        member = _inline(path, value)
        if members:
            at = members[-1].value_end
            return f"{text[:at]}, {member}{text[at:]}"
        return f"{text[: start + 1]}{member}{text[close:]}"
    outer = _line_indent(text, start)
    unit = _indent_unit(text)
    if members:
        last = members[-1]
        indent = _line_indent(text, last.key_start) if _starts_line(text, last.key_start) else outer + unit
        step = indent[len(outer) :] if indent.startswith(outer) and len(indent) > len(outer) else unit
        at = last.value_end
        return f"{text[:at]},{newline}{indent}{_member(path, value, indent, newline, step)}{text[at:]}"
    indent = outer + unit
    return f"{text[: start + 1]}{newline}{indent}{_member(path, value, indent, newline, unit)}{newline}{outer}{text[close:]}"


def _indent_unit(text: str) -> str:
    """The file's own indentation step: that of its first indented member, else two spaces."""
    match = re.search(r'\n([ \t]+)"', text)
    return match.group(1) if match else "  "


def _starts_line(text: str, index: int) -> bool:
    return not text[text.rfind("\n", 0, index) + 1 : index].strip(" \t")


def _line_indent(text: str, index: int) -> str:
    """The spaces and tabs that start the line holding index."""
    line_start = text.rfind("\n", 0, index) + 1
    return re.match(r"[ \t]*", text[line_start:]).group(0)  # type: ignore[union-attr]


def _member(path: tuple[str, ...], value: str, indent: str, newline: str, step: str) -> str:
    """`"a": {"b": "v"}`, one member a line below `indent`."""
    key = json.dumps(path[0], ensure_ascii=False)
    if len(path) == 1:
        return f"{key}: {json.dumps(value, ensure_ascii=False)}"
    inner = indent + step
    return f"{key}: {{{newline}{inner}{_member(path[1:], value, inner, newline, step)}{newline}{indent}}}"


def _inline(path: tuple[str, ...], value: str) -> str:
    text = json.dumps(value, ensure_ascii=False)
    for key in reversed(path[1:]):
        text = f"{{{json.dumps(key, ensure_ascii=False)}: {text}}}"
    return f"{json.dumps(path[0], ensure_ascii=False)}: {text}"
