"""Create lines.yaml and add or remove its lines in place.

The config is the user's file, often commented by hand, so an edit touches
only the text it must: a new line is inserted right after the last one in the
file's own indentation, a removed line's text is cut out, and every comment,
blank line and quoting choice elsewhere stays byte for byte. (A YAML
round-trip library re-indents and moves trailing comments.) Before anything
is written, the edited text is parsed by `config.parse_setup` and compared
with the intended change, so a wrong edit is never saved; the write is atomic
and keeps the file's mode.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import yaml

from .clientenv import CLIENT_VARIABLES
from .config import BUNDLED, Config, Line, Setup, find_config, parse_setup, user_config_path
from .errors import ConfigError, LinepickerError, UnknownRelay
from .fsutil import atomic_write

STARTER = """\
# linepicker: the lines (BaseURLs) of your relay. Written by `linepicker init`.
# Add lines with `linepicker add NAME URL`, remove them with `linepicker remove NAME`,
# or edit this file by hand: `linepicker pick` says which file it read.

# Name of the environment variable that holds your key. Never put the key here.
# Without the variable set, an OpenAI-shaped 401 still proves a line reachable.
key_env: OPENAI_API_KEY

probe:
  path: /v1/models   # what each probe requests
  timeout: 5         # seconds, a total deadline per request
  samples: 3         # requests per line per round, one after another

lines:
  # From the relay's own doc page: replace https://api.openai.com with this.
  - name: main
    url: https://api.whatai.cc

# Files that `linepicker pick` and the daemon keep up to date (paths relative to this file):
# targets:
#   dotenv: ~/project/.env
#   claude_settings: ~/.claude/settings.json
#   codex: ~/.codex/config.toml
#   template:
#     - path: ~/.config/mytool/env
#       template: |
#         API_BASE={url_v1}   # also {url} (no /v1) and {name}
"""


# The same starter as one relay of several: its settings indented under `relays: NAME:`.
STARTER_RELAYS = """\
# linepicker: your relays and their lines (BaseURLs). Written by `linepicker init --relay {relay}`.
# Add lines with `linepicker add --relay RELAY NAME URL` (a new RELAY is added with its first line),
# remove them with `linepicker remove RELAY/NAME`, or edit this file by hand.

probe:               # for every relay; a relay's own probe: overrides it key by key
  path: /v1/models   # what each probe requests
  timeout: 5         # seconds, a total deadline per request
  samples: 3         # requests per line per round, one after another

relays:
  {relay}:
    # Name of the environment variable that holds this relay's key. Never put the key here.
    key_env: OPENAI_API_KEY
    # The variables `linepicker env` sets from this relay's choice; another relay may set the others.
    exports: [OPENAI_BASE_URL, OPENAI_API_BASE, ANTHROPIC_BASE_URL]
    lines:
      # From the relay's own doc page: replace https://api.openai.com with this.
      - name: main
        url: https://api.whatai.cc
    # targets:
    #   dotenv: ~/project/.env
    #   claude_settings: ~/.claude/settings.json
"""


@dataclass(frozen=True)
class Edit:
    path: Path
    name: str
    url: str | None  # the URL as stored, for `add`
    notes: tuple[str, ...] = ()  # what else changed, or how the URL was normalised
    relay: str | None = None  # the relay edited, in a file with relays:


def init(explicit: str | os.PathLike[str] | None, relay: str | None = None) -> tuple[Path, Path]:
    """Write the starter config, never over an existing file; returns it and the file a run would read now.

    With `relay`, the starter declares `relays:` with that one relay, so more relays can be added beside it.
    """
    path = Path(explicit).expanduser() if explicit else user_config_path()
    starter = STARTER if relay is None else STARTER_RELAYS.format(relay=relay)
    if relay is not None:
        parse_setup(starter, path)  # a relay name the config would refuse is refused before anything is written
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise LinepickerError(f"{path}: cannot write: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(starter.encode("utf-8"))
            handle.flush()
            os.fsync(handle.fileno())
        # link() refuses an existing name, so a file created meanwhile is not overwritten either.
        os.link(tmp, path)
    except FileExistsError:
        raise LinepickerError(f"{path} already exists; left as it is (edit it, or use linepicker add/remove)") from None
    except OSError as exc:
        raise LinepickerError(f"{path}: cannot write: {exc.strerror or exc}") from None
    finally:
        os.unlink(tmp)
    in_force, _ = find_config(explicit)
    return path, in_force


def editable_path(explicit: str | os.PathLike[str] | None) -> Path:
    """The file `add`/`remove` edit: the one a run would read, unless that is the bundled default."""
    path, origin = find_config(explicit)
    if origin == BUNDLED:
        raise ConfigError("no lines.yaml of your own yet: run 'linepicker init' first (or pass --config FILE)")
    return path


def add_line(path: Path, name: str, url: str, proxy: str | None = None, relay: str | None = None) -> Edit:
    text, bom, setup = _read(path)
    if relay is not None and setup.relay(relay) is None:
        return _add_relay(path, text, bom, setup, relay, name, url, proxy)
    config = _relay(setup, path, relay)
    existing = config.line(name)
    if existing is not None:
        item = _line_items(_block(_compose(text, path), setup, config))[name]
        raise ConfigError(f"{path}:{item.start_mark.line + 1}: a line named {name!r} already exists ({existing.url})")
    updated, added = _with_line(text, path, setup, config, name, url, proxy)
    notes: tuple[str, ...] = ()
    if added.url != url:
        # Store the URL as it is used, so the file does not warn on every run.
        updated, added = _with_line(text, path, setup, config, name, added.url, proxy)
        notes = (f"stored the URL as {added.url} (linepicker adds /v1 where a client needs it)",)
    _write(path, bom, updated)
    return Edit(path, name, added.url, notes, config.relay if setup.named else None)


def remove_line(path: Path, name: str, relay: str | None = None) -> Edit:
    text, bom, setup = _read(path)
    if "/" in name:
        named_relay, _, name = name.rpartition("/")
        if relay is not None and relay != named_relay:
            raise ConfigError(f"{named_relay}/{name} is in relay {named_relay!r}, not {relay!r}")
        relay = named_relay
    config = _relay(setup, path, relay, having=name)
    if config.line(name) is None:
        raise ConfigError(f"{path}: no line named {name!r}{_in(setup, config)} (lines: {', '.join(line.name for line in config.lines)})")
    if len(config.lines) == 1:
        needs = f"relay {config.relay!r} needs" if setup.named else "a config needs"
        raise ConfigError(f"{path}: {name!r} is the only line{_in(setup, config)}, and {needs} at least one")
    notes = []
    if name in config.exclude:
        text = _without_exclude(text, path, setup, config, name)
        notes.append(f"also removed {name!r} from exclude")
    block = _block(_compose(text, path), setup, config)
    text = _cut_item(text, _value(block, "lines"), _line_items(block)[name])
    result = _check(text, path)
    if not _same_but(result, setup, config.relay, lines=tuple(line for line in config.lines if line.name != name), exclude=config.exclude - {name}):
        raise LinepickerError(f"{path}: could not remove {name!r} cleanly; the file is unchanged")
    _write(path, bom, text)
    return Edit(path, name, None, tuple(notes), config.relay if setup.named else None)


def _relay(setup: Setup, path: Path, relay: str | None, having: str | None = None) -> Config:
    """The relay an edit is for: the one named, the only one, or (for `remove`) the only one with that line."""
    if relay is not None:
        config = setup.relay(relay)
        if config is None:
            raise UnknownRelay(f"no relay named {relay!r} in {path} (relays: {', '.join(setup.names)})")
        return config
    if len(setup.relays) == 1:
        return setup.relays[0]
    candidates = [config for config in setup.relays if having and config.line(having)]
    if len(candidates) == 1:
        return candidates[0]
    which = "say which with --relay" if having is None else f"say which, as RELAY/{having}"
    raise ConfigError(f"{path} has relays {', '.join(setup.names)}: {which}")


def _in(setup: Setup, config: Config) -> str:
    return f" in relay {config.relay!r}" if setup.named else ""


def _add_relay(path: Path, text: str, bom: bool, setup: Setup, relay: str, name: str, url: str, proxy: str | None) -> Edit:
    """A relay the file does not have yet is appended to `relays:`, with this one line; other relays are untouched."""
    if not setup.named:
        raise ConfigError(f"{path} has top-level lines: (one relay, named default): to add relay {relay!r}, move them under relays: (see README, Several relays)")
    relays = _value(_compose(text, path), "relays")
    if relays.flow_style:
        raise ConfigError(f"{path}: relays: is written inline ({{...}}); add relay {relay!r} by hand")
    indent = relays.value[0][0].start_mark.column
    newline = "\r\n" if "\r\n" in text else "\n"
    fields = {"name": name, "url": url, **({"proxy": proxy} if proxy else {})}
    entry = "".join(f"{' ' * (indent + 4)}{'- ' if i == 0 else '  '}{key}: {_plain(value)}{newline}" for i, (key, value) in enumerate(fields.items()))
    # Variables no other relay sets yet, written out so the user sees what the new relay hands out.
    free = [variable for variable in CLIENT_VARIABLES if not any(variable in config.exports for config in setup.relays)]
    block = f"{' ' * indent}{_plain(relay)}:{newline}{' ' * (indent + 2)}exports: [{', '.join(free)}]{newline}{' ' * (indent + 2)}lines:{newline}{entry}"
    at = _item_end(text, relays.value[-1][1])
    while at < len(text) and _comment_within(text[at : _line_end(text, at)], indent):
        at = _line_end(text, at)  # the last relay's own trailing comments stay with it
    if at > 0 and text[at - 1] not in _BREAK_CHARS:  # the last relay ends the file without a line break
        block = newline + block
    updated = text[:at] + block + text[at:]
    result = _check(updated, path)
    added = result.relay(relay)
    if added is None or [line.name for line in added.lines] != [name] or result.relays[:-1] != setup.relays:
        raise LinepickerError(f"{path}: could not add relay {relay!r} cleanly; the file is unchanged")
    if added.lines[0].url != url:
        return _add_relay(path, text, bom, setup, relay, name, added.lines[0].url, proxy)
    _write(path, bom, updated)
    exports = f"exporting {', '.join(free)}" if free else "exporting nothing (the other relays set every variable)"
    return Edit(path, name, url, (f"added relay {relay!r} {exports}: set its key_env, and its exports as you want them",), relay)


def _comment_within(line: str, indent: int) -> bool:
    """A comment indented deeper than the relay names: part of the relay above it."""
    stripped = line.lstrip(" ")
    return stripped.startswith("#") and len(line) - len(stripped) > indent


def _read(path: Path) -> tuple[str, bool, Setup]:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config: {exc.strerror or exc}") from None
    setup = parse_setup(raw, path)
    text = raw.decode("utf-8-sig")
    return text, raw.startswith(b"\xef\xbb\xbf"), setup


def _write(path: Path, bom: bool, text: str) -> None:
    atomic_write(path, (b"\xef\xbb\xbf" if bom else b"") + text.encode("utf-8"))


def _compose(text: str, path: Path) -> yaml.Node:
    """The file already passed parse_setup, so composing it again cannot fail."""
    root = yaml.compose(text)
    assert isinstance(root, yaml.MappingNode), path
    return root


def _value(root: yaml.MappingNode, key: str) -> yaml.Node:
    return next(value for key_node, value in root.value if key_node.value == key)


def _key(root: yaml.MappingNode, key: str) -> yaml.Node:
    return next(key_node for key_node, _ in root.value if key_node.value == key)


def _block(root: yaml.MappingNode, setup: Setup, config: Config) -> yaml.MappingNode:
    """Where a relay's keys are: the top of the file, or its entry under relays:."""
    if not setup.named:
        return root
    return next(value for key, value in _value(root, "relays").value if key.value == config.relay)


def _line_items(root: yaml.Node) -> dict[str, yaml.MappingNode]:
    items = {}
    for item in _value(root, "lines").value:
        name = next((value.value for key, value in item.value if key.value == "name"), None)
        items[name] = item
    return items


def _check(text: str, path: Path) -> Setup:
    """Parse the edited text; its errors point into text that was never written, so drop the file:line."""
    try:
        return parse_setup(text, path)
    except ConfigError as exc:
        detail = re.sub(rf"^{re.escape(str(path))}(:\d+)?: ", "", str(exc))
        raise ConfigError(f"{path} left unchanged: {detail}") from None


def _with_line(text: str, path: Path, setup: Setup, config: Config, name: str, url: str, proxy: str | None) -> tuple[str, Line]:
    root = _compose(text, path)
    sequence = _value(_block(root, setup, config), "lines")
    fields = {"name": name, "url": url, **({"proxy": proxy} if proxy else {})}
    if sequence.flow_style:
        entry = "{" + ", ".join(f"{key}: {json.dumps(value)}" for key, value in fields.items()) + "}"
        at = sequence.value[-1].end_mark.index
        updated = f"{text[:at]}, {entry}{text[at:]}"
    else:
        dash = sequence.start_mark.column
        first = sequence.value[0]
        indent = first.start_mark.column if first.start_mark.line == sequence.start_mark.line else dash + 2
        newline = "\r\n" if "\r\n" in text else "\n"
        entry = "".join(
            f"{' ' * dash}-{' ' * (indent - dash - 1)}{key}: {_plain(value)}{newline}" if i == 0 else f"{' ' * indent}{key}: {_plain(value)}{newline}"
            for i, (key, value) in enumerate(fields.items())
        )
        at = _item_end(text, sequence.value[-1])
        if at > 0 and text[at - 1] not in _BREAK_CHARS:  # the last item ends the file without a line break
            entry = newline + entry
        updated = text[:at] + entry + text[at:]
    result = _check(updated, path)
    edited = result.relay(config.relay)
    added = edited.line(name) if edited else None
    if added is None or not _same_but(result, setup, config.relay, lines=(*config.lines, added)):
        raise LinepickerError(f"{path}: could not add {name!r} cleanly; the file is unchanged")
    return updated, added


def _same_but(result: Setup, setup: Setup, relay: str, **changed: object) -> bool:
    """The edited file means exactly the old one with only these fields of one relay changed: every
    other line, its proxy included, every setting, and every other relay."""
    import dataclasses

    expected = tuple(dataclasses.replace(config, **changed) if config.relay == relay else config for config in setup.relays)
    return result.relays == expected and (result.retention, result.named) == (setup.retention, setup.named)


def _plain(value: str) -> str:
    """A value as YAML reads it back: plain when that is unambiguous, else a double-quoted (JSON) string."""
    try:
        if yaml.safe_load(f"k: {value}") == {"k": value}:
            return value
    except yaml.YAMLError:
        pass
    return json.dumps(value, ensure_ascii=False)


# Line breaks as PyYAML counts them (its marks' .line and .index follow these), not str.splitlines()'s,
# which also splits at \v, \f and \x1c-\x1e, nor str.count("\n"), which misses \r, \x85, U+2028 and U+2029.
_BREAK = re.compile("\r\n|[\r\n\x85\u2028\u2029]")
_BREAK_CHARS = "\r\n\x85\u2028\u2029"


def _line_start(text: str, index: int) -> int:
    """Where the YAML line holding index starts."""
    return max(text.rfind(char, 0, index) for char in _BREAK_CHARS) + 1


def _line_end(text: str, index: int) -> int:
    """Where the next YAML line starts after index (past its line break), or the end of the text."""
    found = _BREAK.search(text, index)
    return found.end() if found else len(text)


def _item_end(text: str, node: yaml.Node) -> int:
    """Where the text after a block item starts: past the line break of the last line it occupies
    (its end mark may already sit at the start of the next line)."""
    end = node.value[-1][1].end_mark if isinstance(node, yaml.MappingNode) and not node.flow_style else node.end_mark
    return _line_end(text, end.index) if end.column > 0 else end.index


def _dash_start(text: str, node: yaml.Node) -> int:
    """Where the line of the '-' that opens a block sequence item starts (the '-' may be on a line of its own)."""
    index = node.start_mark.index - 1
    while index >= 0 and text[index] in " \t" + _BREAK_CHARS:
        index -= 1
    return _line_start(text, index)


def _cut_item(text: str, sequence: yaml.Node, item: yaml.Node) -> str:
    if sequence.flow_style:
        position = sequence.value.index(item)
        if position > 0:
            start, end = sequence.value[position - 1].end_mark.index, item.end_mark.index
        else:
            start, end = item.start_mark.index, sequence.value[1].start_mark.index
        return text[:start] + text[end:]
    return text[: _dash_start(text, item)] + text[_item_end(text, item) :]


def _without_exclude(text: str, path: Path, setup: Setup, config: Config, name: str) -> str:
    """Drop the name from exclude:, or the whole key when it was the only entry (an empty block list reads as null)."""
    root = _block(_compose(text, path), setup, config)
    sequence = _value(root, "exclude")
    item = next(node for node in sequence.value if node.value == name)
    if len(sequence.value) > 1:
        return _cut_item(text, sequence, item)
    end = _line_end(text, sequence.end_mark.index) if sequence.flow_style else _item_end(text, item)
    return text[: _line_start(text, _key(root, "exclude").start_mark.index)] + text[end:]
