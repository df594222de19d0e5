"""Load and validate lines.yaml into frozen dataclasses every other module reads.

The config is the user's main interface, so every mistake is reported as one
line naming the file and line number, and nothing downstream ever sees an
unchecked value.
"""

from __future__ import annotations

import ipaddress
import os
import re
import shlex
import string
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, NoReturn, Sequence
from urllib.parse import SplitResult, urlsplit

import yaml

from . import APP_NAME
from .clientenv import CLIENT_VARIABLES, DEFAULT_RELAY
from .errors import ConfigError, UnknownLine, UnknownRelay
from .urlmask import mask_userinfo

CONFIG_NAME = "lines.yaml"
DEFAULT_LISTEN = "127.0.0.1:9137"  # the daemon's status page, /metrics and /healthz
BUNDLED = "bundled default"  # Config.origin of the lines.yaml shipped with linepicker
MAX_CONFIG_BYTES = 16 * 2**20  # 10,000 lines take about 1 MiB


@dataclass(frozen=True)
class Line:
    name: str
    url: str
    proxy: str | None = None  # None: follow HTTPS_PROXY/NO_PROXY; "none": never use a proxy
    insecure: bool = False  # skip certificate checks for this line only; never the default
    # Where the entry and each of its keys stand in the file ("" for the entry), for messages that point there.
    file_lines: tuple[tuple[str, int], ...] = field(default=(), compare=False, repr=False)


API_STYLES = ("openai", "anthropic")
FOLLOW_REDIRECTS = ("same-origin", "any", "none")
CHAT_PROMPT = "Count from 1 to 20, separated by spaces."


@dataclass(frozen=True)
class ChatSettings:
    """The opt-in streaming chat probe: it costs tokens, so it runs only when configured."""

    model: str
    every: int = 1  # rounds between chat probes of a line whose last one succeeded
    max_tokens: int = 20
    prompt: str = CHAT_PROMPT
    timeout: float = 15.0  # a total deadline for the whole answer


@dataclass(frozen=True)
class ProbeSettings:
    path: str = "/v1/models"
    timeout: float = 5.0
    samples: int = 3
    concurrency: int = 50  # requests in flight at once; more make the event loop late to read answers (docs/benchmarks.md)
    interval: float = 60.0  # daemon: seconds between full rounds
    down_interval: float = 10.0  # daemon: re-probe of lines that are down, like HAProxy's downinter
    watch_interval: float | None = None  # daemon: re-probe of the chosen line; None: as down_interval
    api: str = "openai"  # which API's headers, answers and chat stream: openai or anthropic
    require_models: tuple[str, ...] = ()  # model ids every eligible line must list
    chat: ChatSettings | None = None
    follow_redirects: str = "same-origin"  # a redirect elsewhere is an outcome of its own, not the line's answer
    nameservers: tuple[str, ...] = ()  # DNS servers to ask instead of the system's ("ip" or "ip:port")

    @property
    def watch_every(self) -> float:
        """The chosen line is watched at least as closely as a line that is down, unless told otherwise."""
        return self.down_interval if self.watch_interval is None else self.watch_interval


LATENCY_MODES = ("fresh", "warm")


@dataclass(frozen=True)
class PolicySettings:
    window: float = 900.0
    min_success_rate: float = 0.6
    margin_relative: float = 0.2
    margin_ms: float = 10.0
    failure_penalty_ms: float = 500.0
    rise: int = 2  # daemon: good rounds before a down line is up again
    fall: int = 3  # daemon: failed rounds before an up line is down
    latency: str = "fresh"  # what a client waits for: fresh (dns + connect + tls + ttfb) or warm (ttfb only)
    half_life: float = 120.0  # seconds after which a sample weighs half as much as a new one


@dataclass(frozen=True)
class RetentionSettings:
    raw: float = 7 * 86400.0  # raw samples older than this are rolled up into hourly aggregates
    hourly: float = 90 * 86400.0


@dataclass(frozen=True)
class CodexTarget:
    path: Path
    provider: str = "linepicker"  # the [model_providers.<id>] table whose base_url we own
    env_key: str = "OPENAI_API_KEY"  # written only when we create that table


@dataclass(frozen=True)
class TemplateTarget:
    path: Path
    template: str  # str.format text using only TEMPLATE_FIELDS; checked when the config is read


TEMPLATE_FIELDS = ("url", "url_v1", "name")
CODEX_BUILTIN_PROVIDERS = ("openai", "ollama", "lmstudio")


@dataclass(frozen=True)
class Targets:
    dotenv: tuple[Path, ...] = ()
    claude_settings: tuple[Path, ...] = ()
    codex: tuple[CodexTarget, ...] = ()
    template: tuple[TemplateTarget, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.dotenv or self.claude_settings or self.codex or self.template)


DEFAULT_GATEWAY_PORT = 9138


@dataclass(frozen=True)
class GatewaySettings:
    """The local gateway (`gateway:`): one endpoint that clients read once, forwarded to the best line.

    Defaults favour a long completion over a quick give-up: no limit on an
    answer unless first_byte_timeout is set, as a model may think for minutes.
    """

    listen: Listen = field(default_factory=lambda: Listen("127.0.0.1", DEFAULT_GATEWAY_PORT))  # port 0: any free one (tests)
    connect_timeout: float = 5.0  # resolve + connect + TLS to a line, then the next line is tried
    first_byte_timeout: float | None = None  # from the request sent to the answer's head; None: no limit
    max_attempts: int = 3  # lines tried per request
    max_replay_bytes: int = 32 * 2**20  # request bodies up to this are kept for a retry on the next line
    max_body_bytes: int = 256 * 2**20  # larger requests are refused (413)
    max_header_bytes: int = 16 * 1024  # per header line and for the request line; at most MAX_HEADERS of them
    header_timeout: float = 10.0  # a new connection must send a whole request head within this
    idle_timeout: float = 75.0  # a kept-alive client connection with no request is closed after this
    allow_remote: bool = False  # listen on an address other machines reach
    breaker_failures: int = 3  # consecutive failed attempts before a line is skipped
    breaker_cooldown: float = 30.0  # how long it is skipped before one request may try it again

    @property
    def url(self) -> str:
        return self.listen.url


@dataclass(frozen=True)
class Config:
    source: Path
    origin: str  # which rule of the lookup order found the file
    lines: tuple[Line, ...]
    key_env: str | None = None
    probe: ProbeSettings = ProbeSettings()
    policy: PolicySettings = PolicySettings()
    exclude: frozenset[str] = frozenset()
    targets: Targets = Targets()
    retention: RetentionSettings = RetentionSettings()
    on_switch: tuple[str, ...] = ()  # argv run when the choice changes; never through a shell
    gateway: GatewaySettings | None = None  # None: no `gateway:` block, the daemon serves no gateway
    warnings: tuple[str, ...] = field(default=(), compare=False)
    notes: tuple[str, ...] = field(default=(), compare=False)  # normalised input: worth saying where the file is inspected, not on every run
    relay: str = DEFAULT_RELAY  # which relay of the file these settings are; its choice, pin and history are its own
    exports: tuple[str, ...] = CLIENT_VARIABLES  # the variables `env` and .env targets set from this relay's choice

    @property
    def active_lines(self) -> tuple[Line, ...]:
        return tuple(line for line in self.lines if line.name not in self.exclude)

    def line(self, name: str) -> Line | None:
        return next((line for line in self.lines if line.name == name), None)

    def where(self, name: str, key: str) -> str:
        """`file:line` of a key of a line's entry (or of the entry), for pointing at it in a message."""
        line = self.line(name)
        positions = dict(line.file_lines) if line else {}
        number = positions.get(key, positions.get(""))
        return f"{self.source}:{number}" if number else str(self.source)

    def api_key(self) -> str | None:
        """The key is read from the environment at the last moment and kept nowhere.

        Only a config the user wrote (or `init` created) sends it: the bundled default names
        a third-party relay the user never chose, and an OpenAI-shaped 401 already proves a line
        reachable, so the key stays home however the variable is set.
        """
        if not self.key_env or self.origin == BUNDLED:
            return None
        return os.environ.get(self.key_env) or None

    def missing_key(self) -> str | None:
        """What a round does without its key, for commands that probe to say before they start."""
        if not self.key_env or self.origin == BUNDLED or self.api_key():
            return None
        chat = ", and sending no chat (a relay refuses one without the key)" if self.probe.chat else ""
        return f"{self.key_env} is not set: probing without a key{chat}"


@dataclass(frozen=True)
class Setup:
    """Everything one lines.yaml says: one relay (top-level `lines:`) or several (`relays:`), sharing one database.

    Each relay is a Config of its own, so everything that works on one relay's
    lines (probing, choosing, targets, doctor) takes the relay's Config unchanged.
    """

    source: Path
    origin: str
    relays: tuple[Config, ...]
    retention: RetentionSettings = RetentionSettings()  # one database, one retention
    named: bool = False  # the file has `relays:`; False: top-level `lines:`, one relay named `default`
    warnings: tuple[str, ...] = field(default=(), compare=False)
    notes: tuple[str, ...] = field(default=(), compare=False)

    @classmethod
    def of(cls, config: Config) -> "Setup":
        """A single relay's settings as a whole setup, for callers that hold only a Config."""
        return cls(config.source, config.origin, (config,), config.retention, config.relay != DEFAULT_RELAY, config.warnings, config.notes)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(config.relay for config in self.relays)

    def relay(self, name: str) -> Config | None:
        return next((config for config in self.relays if config.relay == name), None)

    def select(self, names: Sequence[str] = ()) -> tuple[Config, ...]:
        """The relays a `--relay` option names, in the file's order; every relay when it names none."""
        if not names:
            return self.relays
        for name in names:
            if self.relay(name) is None:
                raise UnknownRelay(f"no relay named {name!r} in {self.source} (relays: {', '.join(self.names)})")
        return tuple(config for config in self.relays if config.relay in names)

    def line_urls(self) -> dict[str, tuple[str, dict[str, str]]]:
        """Each relay's file and line URLs by name: what `env --config` checks a recorded choice against."""
        return {config.relay: (str(config.source), {line.name: line.url for line in config.lines}) for config in self.relays}

    def resolve_line(self, spec: str, relays: Sequence[str] = ()) -> tuple[Config, str]:
        """`RELAY/LINE`, or `LINE` when one relay (of those `relays` names) has a line of that name."""
        relay, slash, name = spec.rpartition("/")
        candidates = self.select(relays)
        pool = [self._relay_among(relay, candidates, spec)] if slash else candidates
        having = [config for config in pool if config.line(name)]
        if not having:
            self._no_line(name, pool)
        if len(having) > 1:
            which = ", ".join(f"{config.relay}/{name}" for config in having)
            raise ConfigError(f"several relays have a line named {name!r}: say which, as one of {which}")
        return having[0], name

    def line_filter(self, specs: Sequence[str], relays: Sequence[str] = ()) -> list[tuple[Config, tuple[str, ...]]]:
        """The relays to show and, for each, the lines `--line` names there (none named: all of them)."""
        candidates = self.select(relays)
        if not specs:
            return [(config, ()) for config in candidates]
        chosen: dict[str, list[str]] = {}
        for spec in specs:
            relay, slash, name = spec.rpartition("/")
            pool = [self._relay_among(relay, candidates, spec)] if slash else candidates
            having = [config for config in pool if config.line(name)]
            if not having:
                self._no_line(name, pool)
            for config in having:
                chosen.setdefault(config.relay, []).append(name)
        return [(config, tuple(chosen[config.relay])) for config in candidates if config.relay in chosen]

    def _relay_among(self, relay: str, candidates: tuple[Config, ...], spec: str) -> Config:
        config = self.select([relay])[0]
        if config not in candidates:
            raise UnknownRelay(f"{spec} names relay {relay!r}, which --relay leaves out")
        return config

    def _no_line(self, name: str, configs: Sequence[Config]) -> NoReturn:
        known = ", ".join(f"{c.relay}/{line.name}" if self.named else line.name for c in configs for line in c.lines)
        where = f" of relay {configs[0].relay!r}" if self.named and len(configs) == 1 else ""
        raise UnknownLine(f"no line named {name!r}{where} in {self.source} (lines: {known})")


@dataclass(frozen=True)
class Listen:
    host: str
    port: int

    @property
    def loopback(self) -> bool:
        return is_loopback(self.host)

    @property
    def url(self) -> str:
        """The base URL a local client is given: a wildcard address is reached on loopback."""
        host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(self.host, self.host)
        return f"http://{f'[{host}]' if ':' in host else host}:{self.port}"


_HOST_LABEL = re.compile(r"^[A-Za-z0-9_](?:[A-Za-z0-9_-]*[A-Za-z0-9_])?$")


def host_problem(host: str) -> str | None:
    """Why a host name can never be looked up, or None if it can.

    The rules of DNS and IDNA, checked before any request: past them the
    resolver or the IDNA codec raises instead of failing a lookup. Line URLs
    are checked when the config is read, and redirect targets before they
    are followed.
    """
    try:
        ipaddress.ip_address(host.strip("[]"))
        return None
    except ValueError:
        pass
    name = host[:-1] if host.endswith(".") else host  # one trailing dot: the root, as in "example.com."
    labels = name.split(".")
    if not all(labels):
        return "an empty label: a dot at the start or two dots in a row"
    if len(longest := max(labels, key=len)) > 63:
        return f"a label of {len(longest)} characters, more than DNS allows (63)"
    if labels[-1].isdigit():
        return "an all-digit last label: neither a host name nor an IPv4 address written in full"
    try:
        encoded = name if name.isascii() else name.encode("idna").decode("ascii")
    except UnicodeError:
        return "not a valid international domain name"
    if len(encoded) > 253:
        return f"{len(encoded)} characters, more than DNS allows (253)"
    for label in encoded.split("."):
        if len(label) > 63:
            return f"a label of {len(label)} characters once IDNA-encoded, more than DNS allows (63)"
        if not _HOST_LABEL.match(label):
            return f"the label {label!r} is not letters, digits, '-' and '_' with no '-' at either end"
    return None


def parse_listen(text: str) -> Listen:
    """HOST:PORT, [IPv6]:PORT, or a bare PORT on 127.0.0.1."""
    try:
        return split_listen(text)
    except ValueError:
        raise ConfigError(f"--listen {text!r}: expected HOST:PORT such as {DEFAULT_LISTEN}") from None


def split_listen(text: str) -> Listen:
    """parse_listen's reading, raising ValueError, for callers that word the error themselves."""
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = "127.0.0.1", text
    host = host.strip("[]") or "127.0.0.1"
    if not (port.isascii() and port.isdigit() and len(port) <= 5) or int(port) > 65535:  # '²' is a digit to isdigit()
        raise ValueError(f"expected HOST:PORT such as {DEFAULT_LISTEN}")
    return Listen(host, int(port))


def is_loopback(host: str) -> bool:
    """Only this machine reaches it: localhost or a loopback address (127.0.0.0/8, ::1)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False



def bundled_config_path() -> Path:
    """The wheel ships the repo's top-level lines.yaml inside the package; a source checkout has only the top-level one."""
    packaged = Path(__file__).with_name(CONFIG_NAME)
    checkout = Path(__file__).resolve().parent.parent / CONFIG_NAME
    return checkout if not packaged.is_file() and checkout.is_file() else packaged


def user_config_path() -> Path:
    import platformdirs

    return Path(platformdirs.user_config_dir(APP_NAME)) / CONFIG_NAME


def find_config(explicit: str | os.PathLike[str] | None = None) -> tuple[Path, str]:
    """Apply the lookup order: --config, LINEPICKER_CONFIG, ./lines.yaml, user dir, bundled."""
    if explicit:
        return Path(explicit).expanduser(), "--config"
    env = os.environ.get("LINEPICKER_CONFIG")
    if env:
        return Path(env).expanduser(), "LINEPICKER_CONFIG"
    candidates = [
        (Path.cwd() / CONFIG_NAME, "current directory"),
        (user_config_path(), "user config dir"),
    ]
    for path, origin in candidates:
        if path.is_file():
            return path, origin
    return bundled_config_path(), BUNDLED


def load_config(explicit: str | os.PathLike[str] | None = None) -> Config:
    """A file of one relay, as a Config; a file with several relays is refused (callers that serve them read load_setup)."""
    return _single(load_setup(explicit))


def load_setup(explicit: str | os.PathLike[str] | None = None) -> Setup:
    path, origin = find_config(explicit)
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_CONFIG_BYTES + 1)  # bounded: --config /dev/zero or a log file by mistake
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config: {exc.strerror or exc}") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: larger than {MAX_CONFIG_BYTES // 2**20} MiB, so not a lines.yaml")
    return parse_setup(data, path, origin)


def parse_config(data: bytes | str, path: Path, origin: str = "--config") -> Config:
    """Parse the text of a one-relay config; raises ConfigError and nothing else, whatever the input."""
    return _single(parse_setup(data, path, origin))


def _single(setup: Setup) -> Config:
    if len(setup.relays) > 1:
        raise ConfigError(f"{setup.source}: has {len(setup.relays)} relays ({', '.join(setup.names)}), where one was expected")
    return setup.relays[0]


def parse_setup(data: bytes | str, path: Path, origin: str = "--config") -> Setup:
    """Parse config text into every relay it declares; raises ConfigError and nothing else, whatever the input."""
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            line = data.count(b"\n", 0, exc.start) + 1
            raise ConfigError(f"{path}:{line}: not UTF-8 text (byte {exc.start})") from None
    try:
        loader = yaml.SafeLoader(data)
        try:
            root = loader.get_single_node()
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ConfigError(f"{where}: invalid YAML: {exc.problem or exc.context}") from None
    except yaml.reader.ReaderError as exc:
        # Its str() spans two lines and names "<unicode string>", not the file.
        line = len(_YAML_BREAK.findall(data, 0, exc.position)) + 1
        raise ConfigError(f"{path}:{line}: invalid YAML: unacceptable character #x{exc.character:04x} ({exc.reason})") from None
    except (yaml.YAMLError, RecursionError, ValueError) as exc:
        raise ConfigError(f"{path}: invalid YAML: {exc}") from None
    return _Validator(path, origin).setup(root)


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_YAML_BREAK = re.compile("\r\n|[\r\n\x85\u2028\u2029]")  # PyYAML's line breaks: its marks count lines by these
_SURROGATE = re.compile("[\ud800-\udfff]")
# In a BaseURL: whitespace, quotes, shell and template metacharacters, stray '%', controls (C0, DEL, C1).
_URL_NEVER = re.compile(r"""[\s"'`$\\<>{}|^\x00-\x1f\x7f-\x9f]|%(?![0-9A-Fa-f]{2})""")


YEAR_S = 365 * 86400.0
MAX_SPAN_S = 10 * YEAR_S  # the longest retention, so the longest period `history` and `report` can show
# Every duration is bounded where it is read: a timer, a deadline or a window of 10^14 s overflows
# the scheduler and the clock arithmetic long after the config was accepted.
MAX_DURATION_S = {
    "probe.timeout": 600.0,
    "probe.chat.timeout": 600.0,
    "probe.interval": 86400.0,
    "probe.down_interval": 86400.0,
    "probe.watch_interval": 86400.0,
    "policy.window": 30 * 86400.0,
    "policy.half_life": 30 * 86400.0,
    "retention.raw": MAX_SPAN_S,
    "retention.hourly": MAX_SPAN_S,
    "gateway.connect_timeout": 600.0,
    "gateway.first_byte_timeout": 86400.0,  # a model may think for minutes; an hour is not absurd
    "gateway.header_timeout": 600.0,
    "gateway.idle_timeout": 86400.0,
    "gateway.breaker_cooldown": 86400.0,
}


def _span(seconds: float) -> str:
    """600 -> '10m', 86400 -> '1d': a bound as the config would write it."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"


def parse_duration(value: object) -> float:
    """Seconds from a number or a string such as '90s', '15m', '7d'."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 30, '30s', '15m' or '7d'")
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        match = _DURATION.match(str(value))
        if not match:
            raise ValueError(f"expected a duration such as 30, '30s', '15m' or '7d', got {value!r}")
        seconds = float(match.group(1)) * _DURATION_UNITS[match.group(2)]
    if not seconds > 0 or seconds == float("inf"):
        raise ValueError(f"expected a positive duration, got {value!r}")
    return seconds


class _Validator:
    """Walks the YAML node tree so that every error can name its line."""

    def __init__(self, path: Path, origin: str):
        self.path = path
        self.origin = origin
        self.warnings: list[str] = []
        self.notes: list[str] = []

    def fail(self, node: yaml.Node | None, message: str) -> ConfigError:
        """Messages quote what the file says, so a proxy's password is masked (user:***@)."""
        line = f":{node.start_mark.line + 1}" if node is not None else ""
        return ConfigError(f"{self.path}{line}: {mask_userinfo(message)}")

    def warn(self, node: yaml.Node, message: str) -> None:
        self.warnings.append(f"{self.path}:{node.start_mark.line + 1}: {mask_userinfo(message)}")

    def note(self, node: yaml.Node, message: str) -> None:
        self.notes.append(f"{self.path}:{node.start_mark.line + 1}: {message}")

    def mapping(self, node: yaml.Node, what: str, allowed: set[str]) -> dict[str, yaml.Node]:
        if not isinstance(node, yaml.MappingNode):
            raise self.fail(node, f"{what} must be a mapping")
        result: dict[str, yaml.Node] = {}
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            if not isinstance(key, str) or key not in allowed:
                known = ", ".join(sorted(allowed))
                raise self.fail(key_node, f"unknown key {key!r} in {what} (known: {known})")
            if key in result:
                raise self.fail(key_node, f"duplicate key {key!r} in {what}")
            result[key] = value_node
        return result

    def scalar(self, node: yaml.Node, what: str) -> Any:
        if not isinstance(node, yaml.ScalarNode):
            raise self.fail(node, f"{what} must be a single value")
        loader = yaml.SafeLoader("")
        try:
            value = loader.construct_object(node)
        except yaml.MarkedYAMLError as exc:
            # Only the problem: str(exc) adds a multi-line excerpt of "<unicode string>".
            raise self.fail(node, f"{what}: {exc.problem}") from None
        except Exception:
            # PyYAML's constructors index, look up and regex-match tagged text without checking it
            # first (`!!timestamp x`, `!!bool x`, `!!int ''`), so any failure is a malformed value.
            raise self.fail(node, f"{what}: {node.value!r} is not a valid {node.tag} value") from None
        finally:
            loader.dispose()
        if isinstance(value, str) and _SURROGATE.search(value):
            # "\ud83d" in a double-quoted YAML string: no file, argv or URL can carry it (UTF-8 refuses it).
            raise self.fail(node, f"{what} holds a lone UTF-16 surrogate escape (such as \\ud83d), which no UTF-8 text can carry")
        return value

    def text(self, node: yaml.Node, what: str) -> str:
        value = self.scalar(node, what)
        if not isinstance(value, str) or not value.strip():
            raise self.fail(node, f"{what} must be a non-empty string")
        return value.strip()

    def number(self, node: yaml.Node, what: str, convert: Callable[[Any], float], check: Callable[[float], bool], rule: str) -> Any:
        value = self.scalar(node, what)
        if isinstance(value, bool):
            raise self.fail(node, f"{what} must be {rule}, got {value!r}")
        try:
            number = convert(value)
        except (TypeError, ValueError, OverflowError) as exc:  # OverflowError: float() of a 400-digit int
            raise self.fail(node, f"{what} must be {rule}: {exc}") from None
        if not check(number):
            raise self.fail(node, f"{what} must be {rule}, got {value!r}")
        return number

    def flag(self, node: yaml.Node, what: str) -> bool:
        value = self.scalar(node, what)
        if not isinstance(value, bool):
            raise self.fail(node, f"{what} must be true or false, got {value!r}")
        return value

    def duration(self, node: yaml.Node, what: str) -> float:
        high = MAX_DURATION_S[what]
        return self.number(node, what, parse_duration, lambda v: v <= high, f"a positive duration up to {_span(high)}")

    def whole(self, node: yaml.Node, what: str, low: int, high: int) -> int:
        def convert(value: Any) -> int:
            if isinstance(value, float) or not isinstance(value, int):
                raise ValueError(f"{value!r} is not a whole number")
            return value

        return self.number(node, what, convert, lambda v: low <= v <= high, f"a whole number from {low} to {high}")

    def ratio(self, node: yaml.Node, what: str) -> float:
        return self.number(node, what, _real, lambda v: 0 <= v <= 1, "a number from 0 to 1")

    def millis(self, node: yaml.Node, what: str) -> float:
        return self.number(node, what, _real, lambda v: 0 <= v < 3_600_000, "a number of milliseconds, 0 or more")

    def setup(self, root: yaml.Node | None) -> Setup:
        if root is None:
            raise ConfigError(f"{self.path}:1: the config is empty: it needs at least a 'lines:' list")
        top = self.mapping(root, "the config", ONE_RELAY_KEYS | {"relays"})
        retention = self.retention(top.get("retention"))
        if "relays" not in top:
            config = self.relay_config(top, root, DEFAULT_RELAY, retention)
            return self.finished((config,), retention, named=False)
        for key, node in top.items():
            if key not in SHARED_KEYS:
                raise self.fail(node, _MISPLACED.get(key, f"'{key}:' belongs inside a relay when the file has 'relays:'"))
        relays = []
        for name, named_at, node in self.relay_blocks(top["relays"]):
            keys = self.mapping(node, f"relay {name!r}", RELAY_KEYS)
            if "lines" not in keys:
                raise self.fail(named_at, f"relay {name!r} has no 'lines:': list its BaseURLs there")
            for shared in ("probe", "policy"):
                keys[shared] = self.overlay(top.get(shared), keys.get(shared), shared)
            if "on_switch" in top and "on_switch" not in keys:
                keys["on_switch"] = top["on_switch"]
            relays.append((self.relay_config(keys, node, name, retention), keys, named_at))
        self.refuse_clashes(relays)
        return self.finished(tuple(config for config, _, _ in relays), retention, named=True)

    def finished(self, relays: tuple[Config, ...], retention: RetentionSettings, named: bool) -> Setup:
        """Warnings and notes are the file's: every relay carries them all, and the setup says them once."""
        warnings, notes = tuple(self.warnings), tuple(self.notes)
        configs = tuple(replace(config, warnings=warnings, notes=notes) for config in relays)
        return Setup(self.path, self.origin, configs, retention, named, warnings, notes)

    def relay_blocks(self, node: yaml.Node) -> list[tuple[str, yaml.Node, yaml.Node]]:
        """Each relay's name, the node naming it (where messages about the relay point) and its settings."""
        if not isinstance(node, yaml.MappingNode) or not node.value:
            raise self.fail(node, "relays must map each relay's name to its settings (key_env, exports, targets, lines)")
        seen: dict[str, int] = {}
        blocks = []
        for key_node, value in node.value:
            name = self.text(key_node, "relay name")
            if not _NAME.match(name):
                raise self.fail(key_node, f"relay name {name!r} must be 1-64 letters, digits, '.', '_' or '-'")
            if name in seen:
                raise self.fail(key_node, f"duplicate relay name {name!r} (first on line {seen[name]})")
            seen[name] = key_node.start_mark.line + 1
            blocks.append((name, key_node, value))
        return blocks

    def overlay(self, shared: yaml.Node | None, own: yaml.Node | None, what: str) -> yaml.Node | None:
        """A relay's probe:/policy: over the top-level one, key by key; the nodes keep their marks, so errors still name the line."""
        if shared is None or own is None:
            return own if shared is None else shared
        for node in (shared, own):
            if not isinstance(node, yaml.MappingNode):
                raise self.fail(node, f"{what} must be a mapping")
        mine = {key.value for key, _ in own.value if isinstance(key, yaml.ScalarNode)}
        pairs = [(key, value) for key, value in shared.value if not (isinstance(key, yaml.ScalarNode) and key.value in mine)]
        return yaml.MappingNode(own.tag, pairs + list(own.value), own.start_mark, own.end_mark)

    def relay_config(self, top: dict[str, yaml.Node], root: yaml.Node, relay: str, retention: RetentionSettings) -> Config:
        """One relay's settings: the whole file without `relays:`, or one block of it."""
        if "lines" not in top:
            raise self.fail(root, "missing 'lines:': list the relay's BaseURLs there")
        lines = self.lines(top["lines"])
        key_env = None
        if "key_env" in top:
            key_env = self.text(top["key_env"], "key_env")
            if not _ENV_NAME.match(key_env):
                raise self.fail(top["key_env"], "key_env must name an environment variable (such as OPENAI_API_KEY), not hold the key itself")
        exclude = self.exclude(top.get("exclude"), {line.name for line in lines})
        if not [line for line in lines if line.name not in exclude]:
            raise self.fail(top["exclude"], "exclude leaves no line to probe")
        probe = self.probe(top.get("probe"))
        if probe.chat is not None and not key_env:
            self.warn(top["probe"], "probe.chat is skipped: there is no key_env, and a relay refuses a chat without the key")
        exports = self.exports(top["exports"]) if "exports" in top else CLIENT_VARIABLES
        targets = self.targets(top.get("targets"), key_env)
        if targets.dotenv and not exports:
            raise self.fail(top["targets"], f"targets.dotenv sets the variables in exports:, and relay {relay!r} exports none")
        return Config(
            source=self.path,
            origin=self.origin,
            lines=lines,
            key_env=key_env,
            probe=probe,
            policy=self.policy(top.get("policy")),
            exclude=exclude,
            targets=targets,
            retention=retention,
            on_switch=self.command(top["on_switch"]) if "on_switch" in top else (),
            gateway=self.gateway(top["gateway"]) if "gateway" in top else None,
            relay=relay,
            exports=exports,
        )

    def exports(self, node: yaml.Node) -> tuple[str, ...]:
        items = node.value if isinstance(node, yaml.SequenceNode) else [node]
        names: list[str] = []
        for item in items:
            name = self.text(item, "exports entry")
            if name not in CLIENT_VARIABLES:
                raise self.fail(item, f"exports: {name!r} is not a variable linepicker sets (known: {', '.join(CLIENT_VARIABLES)})")
            if name in names:
                raise self.fail(item, f"exports lists {name} twice")
            names.append(name)
        return tuple(name for name in CLIENT_VARIABLES if name in names)

    def refuse_clashes(self, relays: list[tuple[Config, dict[str, yaml.Node], yaml.Node]]) -> None:
        """A variable, a key in a file or a gateway's address holds one line: two relays sharing it would overwrite each other at every switch."""
        claims: list[tuple[str, tuple[str, ...], int]] = []  # (relay, what it sets, the line that says so)
        for config, keys, named_at in relays:
            at = keys.get("exports", named_at)
            default = "" if "exports" in keys else " (every variable, as no exports: is set)"
            for name in config.exports:
                self.claim(claims, config.relay, ("export", name), f"export {name}{default}", at)
            for path, key, what in target_keys(config):
                self.claim(claims, config.relay, ("file", path, key), f"write {what} in {path}", keys["targets"])
            if config.gateway is not None and config.gateway.listen.port:
                address = f"{config.gateway.listen.host}:{config.gateway.listen.port}"
                self.claim(claims, config.relay, ("listen", address), f"serve a gateway on {address}", keys["gateway"])

    def claim(self, claims: list[tuple[str, tuple[str, ...], int]], relay: str, claim: tuple[str, ...], said: str, node: yaml.Node) -> None:
        """Refuse what another relay already claimed, naming both relays and lines; else record it."""
        for other, taken, line in claims:
            if other != relay and _clash(claim, taken):
                raise self.fail(node, f"relays {other!r} (line {line}) and {relay!r} both {said}: each would overwrite the other's choice")
        claims.append((relay, claim, node.start_mark.line + 1))

    def probe(self, node: yaml.Node | None) -> ProbeSettings:
        if node is None:
            return ProbeSettings()
        keys = self.mapping(
            node,
            "probe",
            {"path", "timeout", "samples", "concurrency", "interval", "down_interval", "watch_interval", "api", "require_models", "chat", "follow_redirects", "nameservers"},
        )
        settings: dict[str, Any] = {}
        if "path" in keys:
            path = self.text(keys["path"], "probe.path")
            if not path.startswith("/"):
                raise self.fail(keys["path"], f"probe.path must start with '/', got {path!r}")
            settings["path"] = path
        if "timeout" in keys:
            settings["timeout"] = self.duration(keys["timeout"], "probe.timeout")
        if "samples" in keys:
            settings["samples"] = self.whole(keys["samples"], "probe.samples", 1, 100)
        if "concurrency" in keys:
            settings["concurrency"] = self.whole(keys["concurrency"], "probe.concurrency", 1, 10_000)
        for key in ("interval", "down_interval", "watch_interval"):
            if key in keys:
                settings[key] = self.duration(keys[key], f"probe.{key}")
        if "api" in keys:
            api = self.text(keys["api"], "probe.api")
            if api not in API_STYLES:
                raise self.fail(keys["api"], f"probe.api must be one of {', '.join(API_STYLES)}, got {api!r}")
            settings["api"] = api
        if "require_models" in keys:
            settings["require_models"] = self.models(keys["require_models"], settings.get("path", ProbeSettings.path))
        if "chat" in keys:
            settings["chat"] = self.chat(keys["chat"])
        if "follow_redirects" in keys:
            follow = self.text(keys["follow_redirects"], "probe.follow_redirects")
            if follow not in FOLLOW_REDIRECTS:
                raise self.fail(keys["follow_redirects"], f"probe.follow_redirects must be one of {', '.join(FOLLOW_REDIRECTS)}, got {follow!r}")
            settings["follow_redirects"] = follow
        if "nameservers" in keys:
            settings["nameservers"] = self.nameservers(keys["nameservers"])
        return ProbeSettings(**settings)

    def nameservers(self, node: yaml.Node) -> tuple[str, ...]:
        """IP addresses, each with an optional port (1.1.1.1, 127.0.0.1:5353, [::1]:53): c-ares takes nothing else."""
        items = node.value if isinstance(node, yaml.SequenceNode) else [node]
        if not items:
            raise self.fail(node, "probe.nameservers must name a DNS server or a list of them")
        servers = []
        for item in items:
            text = self.text(item, "probe.nameservers entry")
            host, port = text, None
            if text.startswith("["):
                host, _, port = text[1:].partition("]")
                port = port.removeprefix(":") or None
            elif text.count(":") == 1:
                host, port = text.split(":")
            try:
                ipaddress.ip_address(host)
            except ValueError:
                raise self.fail(item, f"probe.nameservers entry {text!r} must be an IP address, with an optional :port") from None
            if port is not None and not (port.isdigit() and 0 < int(port) < 65536):
                raise self.fail(item, f"probe.nameservers entry {text!r} has an invalid port")
            servers.append(text)
        return tuple(servers)

    def models(self, node: yaml.Node, path: str) -> tuple[str, ...]:
        """Model ids are checked against the answer to probe.path, so that path has to be the model list."""
        items = node.value if isinstance(node, yaml.SequenceNode) else [node]
        if not items:
            raise self.fail(node, "probe.require_models must name a model or a list of them")
        if not urlsplit(path).path.rstrip("/").endswith("/models"):
            raise self.fail(node, f"probe.require_models is checked against the model list, but probe.path is {path!r} (use /v1/models)")
        return tuple(dict.fromkeys(self.text(item, "probe.require_models entry") for item in items))

    def chat(self, node: yaml.Node) -> ChatSettings:
        keys = self.mapping(node, "probe.chat", {"model", "every", "max_tokens", "prompt", "timeout"})
        if "model" not in keys:
            raise self.fail(node, "probe.chat needs 'model:' (the model the chat probe asks)")
        settings: dict[str, Any] = {"model": self.text(keys["model"], "probe.chat.model")}
        if "every" in keys:
            settings["every"] = self.whole(keys["every"], "probe.chat.every", 1, 100_000)
        if "max_tokens" in keys:
            settings["max_tokens"] = self.whole(keys["max_tokens"], "probe.chat.max_tokens", 1, 4096)
        if "prompt" in keys:
            settings["prompt"] = self.text(keys["prompt"], "probe.chat.prompt")
        if "timeout" in keys:
            settings["timeout"] = self.duration(keys["timeout"], "probe.chat.timeout")
        return ChatSettings(**settings)

    def policy(self, node: yaml.Node | None) -> PolicySettings:
        if node is None:
            return PolicySettings()
        checks: dict[str, Callable[[yaml.Node, str], float | str]] = {
            "window": self.duration,
            "min_success_rate": self.ratio,
            "margin_relative": self.ratio,
            "margin_ms": self.millis,
            "failure_penalty_ms": self.millis,
            "rise": lambda node, what: self.whole(node, what, 1, 100),
            "fall": lambda node, what: self.whole(node, what, 1, 100),
            "latency": self.latency,
            "half_life": self.duration,
        }
        keys = self.mapping(node, "policy", set(checks))
        return PolicySettings(**{key: checks[key](value, f"policy.{key}") for key, value in keys.items()})

    def latency(self, node: yaml.Node, what: str) -> str:
        mode = self.text(node, what)
        if mode not in LATENCY_MODES:
            raise self.fail(node, f"{what} must be fresh (a new connection per request) or warm (a kept-alive one), got {mode!r}")
        return mode

    def lines(self, node: yaml.Node) -> tuple[Line, ...]:
        if not isinstance(node, yaml.SequenceNode) or not node.value:
            raise self.fail(node, "lines must be a non-empty list of {name, url} entries")
        seen: dict[str, int] = {}
        lines = []
        for item in node.value:
            keys = self.mapping(item, "a line", {"name", "url", "proxy", "insecure"})
            for required in ("name", "url"):
                if required not in keys:
                    raise self.fail(item, f"a line needs '{required}:'")
            name = self.text(keys["name"], "line name")
            if not _NAME.match(name):
                raise self.fail(keys["name"], f"line name {name!r} must be 1-64 letters, digits, '.', '_' or '-'")
            if name in seen:
                raise self.fail(keys["name"], f"duplicate line name {name!r} (first on line {seen[name]})")
            seen[name] = keys["name"].start_mark.line + 1
            url = self.base_url(keys["url"])
            proxy = self.proxy(keys["proxy"]) if "proxy" in keys else None
            insecure = self.flag(keys["insecure"], "insecure") if "insecure" in keys else False
            if insecure:
                self.warn(keys["insecure"], f"line {name!r} has insecure: true: its certificate is NOT checked")
            file_lines = (("", item.start_mark.line + 1),) + tuple((key, node.start_mark.line + 1) for key, node in keys.items())
            lines.append(Line(name=name, url=url, proxy=proxy, insecure=insecure, file_lines=file_lines))
        return tuple(lines)

    def base_url(self, node: yaml.Node) -> str:
        raw = self.text(node, "url")
        parts = self.split_url(node, raw, "url")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise self.fail(node, f"url must be an http:// or https:// address, got {raw!r}")
        if bad := _URL_NEVER.search(raw):
            char = bad.group(0)
            what = f"'{char}' not followed by two hex digits" if char == "%" else repr(char)
            raise self.fail(node, f"url contains {what}, which no BaseURL needs (it would be written into .env files and shell exports): {raw!r}")
        if problem := host_problem(parts.hostname):
            raise self.fail(node, f"url has an invalid host name ({problem}): {raw!r}")
        if parts.query or parts.fragment or parts.username or parts.password:
            raise self.fail(node, f"url must be a plain BaseURL without query, fragment or credentials, got {raw!r}")
        try:
            parts.port
        except ValueError:
            raise self.fail(node, f"url has an invalid port: {raw!r}") from None
        path = parts.path.rstrip("/")
        if path.endswith("/v1"):
            path = path[: -len("/v1")]
            self.note(node, f"url {raw!r} ends in /v1: using {parts.scheme}://{parts.netloc}{path} (linepicker adds /v1 where a client needs it)")
        return f"{parts.scheme}://{parts.netloc}{path}"

    def split_url(self, node: yaml.Node, raw: str, what: str) -> SplitResult:
        """urlsplit raises ValueError on text such as 'http://[::1' (an unclosed IPv6 bracket)."""
        try:
            return urlsplit(raw)
        except ValueError as exc:
            raise self.fail(node, f"{what} is not a valid address ({exc}): {raw!r}") from None

    def proxy(self, node: yaml.Node) -> str:
        raw = self.text(node, "proxy")
        if raw.lower() == "none":
            return "none"
        parts = self.split_url(node, raw, "proxy")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise self.fail(node, f"proxy must be an http:// proxy URL or 'none', got {raw!r}")
        if problem := host_problem(parts.hostname):
            raise self.fail(node, f"proxy has an invalid host name ({problem}): {raw!r}")
        return raw

    def exclude(self, node: yaml.Node | None, names: set[str]) -> frozenset[str]:
        if node is None:
            return frozenset()
        if not isinstance(node, yaml.SequenceNode):
            raise self.fail(node, "exclude must be a list of line names")
        excluded = set()
        for item in node.value:
            name = self.text(item, "exclude entry")
            if name not in names:
                raise self.fail(item, f"exclude names {name!r}, which is not a line")
            excluded.add(name)
        return frozenset(excluded)

    def targets(self, node: yaml.Node | None, key_env: str | None) -> Targets:
        if node is None:
            return Targets()
        keys = self.mapping(node, "targets", {"dotenv", "claude_settings", "codex", "template"})
        found: dict[str, Any] = {key: self.paths(keys[key], f"targets.{key}") for key in ("dotenv", "claude_settings") if key in keys}
        if "codex" in keys:
            found["codex"] = tuple(self.codex_target(item, key_env) for item in self.entries(keys["codex"], "targets.codex"))
        if "template" in keys:
            found["template"] = tuple(self.template_target(item) for item in self.entries(keys["template"], "targets.template"))
        return Targets(**found)

    def entries(self, node: yaml.Node, what: str) -> list[yaml.Node]:
        items = node.value if isinstance(node, yaml.SequenceNode) else [node]
        if not items:
            raise self.fail(node, f"{what} must be one entry or a list of them")
        return items

    def codex_target(self, node: yaml.Node, key_env: str | None) -> CodexTarget:
        """A bare path, or {path, provider} when the provider table is not the default 'linepicker'."""
        env_key = key_env or "OPENAI_API_KEY"
        if not isinstance(node, yaml.MappingNode):
            return CodexTarget(self.resolve(self.text(node, "targets.codex")), env_key=env_key)
        keys = self.mapping(node, "targets.codex", {"path", "provider"})
        if "path" not in keys:
            raise self.fail(node, "targets.codex needs 'path:' (Codex reads ~/.codex/config.toml)")
        target = CodexTarget(self.resolve(self.text(keys["path"], "targets.codex.path")), env_key=env_key)
        if "provider" not in keys:
            return target
        provider = self.text(keys["provider"], "targets.codex.provider")
        if not _NAME.match(provider):
            raise self.fail(keys["provider"], f"targets.codex.provider {provider!r} must be 1-64 letters, digits, '.', '_' or '-'")
        if provider in CODEX_BUILTIN_PROVIDERS:
            # Codex keeps its built-in providers over a same-named table in config.toml, so a base_url there is ignored.
            raise self.fail(keys["provider"], f"targets.codex.provider {provider!r} is built into Codex, which ignores a config.toml table of that name; use your own name")
        return CodexTarget(target.path, provider, env_key)

    def template_target(self, node: yaml.Node) -> TemplateTarget:
        keys = self.mapping(node, "a targets.template entry", {"path", "template"})
        for required in ("path", "template"):
            if required not in keys:
                raise self.fail(node, f"a targets.template entry needs '{required}:'")
        text = self.scalar(keys["template"], "targets.template.template")
        if not isinstance(text, str) or not text:
            raise self.fail(keys["template"], "targets.template.template must be text")
        fields = ", ".join("{" + name + "}" for name in TEMPLATE_FIELDS)
        try:
            parsed = list(string.Formatter().parse(text))
        except ValueError as exc:
            raise self.fail(keys["template"], f"targets.template.template: {exc} (write {{{{ and }}}} for a literal brace)") from None
        for _, field_name, spec, conversion in parsed:
            if field_name is not None and (field_name not in TEMPLATE_FIELDS or spec or conversion):
                shown = "{" + field_name + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "") + "}"
                raise self.fail(keys["template"], f"targets.template.template: unknown placeholder {shown} (known: {fields})")
        return TemplateTarget(self.resolve(self.text(keys["path"], "targets.template.path")), text)

    def retention(self, node: yaml.Node | None) -> RetentionSettings:
        if node is None:
            return RetentionSettings()
        keys = self.mapping(node, "retention", {"raw", "hourly"})
        return RetentionSettings(**{key: self.duration(value, f"retention.{key}") for key, value in keys.items()})

    def gateway(self, node: yaml.Node) -> GatewaySettings:
        """An empty `gateway:` turns the gateway on with every default."""
        if isinstance(node, yaml.ScalarNode) and self.scalar(node, "gateway") is None:
            return GatewaySettings()
        checks: dict[str, Callable[[yaml.Node, str], Any]] = {
            "listen": lambda node, what: node,  # judged below, once allow_remote is known
            "connect_timeout": self.duration,
            "first_byte_timeout": self.duration,
            "max_attempts": lambda node, what: self.whole(node, what, 1, 10),
            "max_replay_bytes": lambda node, what: self.size(node, what, 0, 2**32),
            "max_body_bytes": lambda node, what: self.size(node, what, 2**10, 2**36),
            "max_header_bytes": lambda node, what: self.size(node, what, 2**10, 2**20),
            "header_timeout": self.duration,
            "idle_timeout": self.duration,
            "allow_remote": self.flag,
            "breaker_failures": lambda node, what: self.whole(node, what, 1, 1000),
            "breaker_cooldown": self.duration,
        }
        keys = self.mapping(node, "gateway", set(checks))
        settings = {key: checks[key](value, f"gateway.{key}") for key, value in keys.items() if key != "listen"}
        if "listen" in keys:
            settings["listen"] = self.listen(keys["listen"], settings.get("allow_remote", False))
        if settings.get("max_replay_bytes", GatewaySettings.max_replay_bytes) > settings.get("max_body_bytes", GatewaySettings.max_body_bytes):
            raise self.fail(keys.get("max_replay_bytes") or node, "gateway.max_replay_bytes is larger than gateway.max_body_bytes, which refuses such bodies")
        return GatewaySettings(**settings)

    def listen(self, node: yaml.Node, allow_remote: bool) -> Listen:
        raw = self.scalar(node, "gateway.listen")
        example = f"127.0.0.1:{DEFAULT_GATEWAY_PORT}"
        if isinstance(raw, bool) or not isinstance(raw, (str, int)):
            raise self.fail(node, f"gateway.listen must be HOST:PORT such as {example}, got {raw!r}")
        text = str(raw).strip()
        if text.count(":") > 1 and not text.startswith("["):
            raise self.fail(node, f"gateway.listen {raw!r}: write an IPv6 address in brackets, such as [::1]:{DEFAULT_GATEWAY_PORT}")
        try:
            listen = split_listen(text)
        except ValueError:
            raise self.fail(node, f"gateway.listen {raw!r}: expected HOST:PORT such as {example}") from None
        if not allow_remote and not listen.loopback:
            raise self.fail(
                node, f"gateway.listen {raw!r} is not a loopback address: anyone reaching it could use the gateway; set gateway.allow_remote: true if that is meant"
            )
        if allow_remote and not listen.loopback:
            self.warn(node, f"gateway.allow_remote is true: the gateway on {raw} forwards requests from other machines")
        return listen

    def size(self, node: yaml.Node, what: str, low: int, high: int) -> int:
        return self.number(node, what, parse_size, lambda v: low <= v <= high, f"a size from {low} to {high} bytes (such as '64 KiB' or '32 MiB')")

    def command(self, node: yaml.Node) -> tuple[str, ...]:
        """A string is split like a shell would, but it is never run through one."""
        if isinstance(node, yaml.SequenceNode):
            argv = tuple(self.text(item, "on_switch entry") for item in node.value)
        else:
            try:
                argv = tuple(shlex.split(self.text(node, "on_switch")))
            except ValueError as exc:
                raise self.fail(node, f"on_switch: {exc}") from None
        if not argv:
            raise self.fail(node, "on_switch must name a command")
        return argv

    def paths(self, node: yaml.Node, what: str) -> tuple[Path, ...]:
        items = node.value if isinstance(node, yaml.SequenceNode) else [node]
        if not items:
            raise self.fail(node, f"{what} must name a file or a list of files")
        return tuple(self.resolve(self.text(item, what)) for item in items)

    def resolve(self, raw: str) -> Path:
        """Relative target paths follow the config file, so a daemon started elsewhere writes the same files."""
        path = Path(os.path.expanduser(raw))
        return path if path.is_absolute() else self.path.parent.resolve() / path


_SIZE = re.compile(r"^\s*(\d+)\s*(B|KB|KiB|MB|MiB|GB|GiB)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"b": 1, "kb": 1000, "kib": 2**10, "mb": 1000**2, "mib": 2**20, "gb": 1000**3, "gib": 2**30, None: 1}


def parse_size(value: object) -> int:
    """Bytes from a whole number or a string such as '512 KiB', '32MiB' or '1 GB'."""
    if isinstance(value, bool) or isinstance(value, float):
        raise ValueError(f"expected a size such as 65536, '64 KiB' or '32 MiB', got {value!r}")
    if isinstance(value, int):
        return value
    match = _SIZE.match(str(value))
    if not match:
        raise ValueError(f"expected a size such as 65536, '64 KiB' or '32 MiB', got {value!r}")
    unit = match.group(2).lower() if match.group(2) else None
    return int(match.group(1)) * _SIZE_UNITS[unit]


ONE_RELAY_KEYS = {"key_env", "probe", "policy", "lines", "exclude", "targets", "retention", "on_switch", "gateway"}
RELAY_KEYS = {"key_env", "exports", "probe", "policy", "lines", "exclude", "targets", "on_switch", "gateway"}
SHARED_KEYS = {"relays", "probe", "policy", "retention", "on_switch"}  # beside relays:, defaults every relay may override
_MISPLACED = {
    "key_env": "key_env: belongs inside each relay when the file has 'relays:' (a relay's key sent to another relay's lines would leak it)",
    "lines": "lines: belongs inside a relay when the file has 'relays:' (or drop 'relays:' for a single relay)",
}


def target_keys(config: Config) -> list[tuple[str, str, str]]:
    """What each target of a relay writes: (the file, resolved; the key in it, '' for the whole file; how to say it)."""
    targets = config.targets
    keys = [(path, name, name) for path in targets.dotenv for name in config.exports]
    keys += [(path, "env.ANTHROPIC_BASE_URL", "env.ANTHROPIC_BASE_URL") for path in targets.claude_settings]
    keys += [(t.path, f"model_providers.{t.provider}.base_url", f"[model_providers.{t.provider}] base_url") for t in targets.codex]
    keys += [(t.path, "", "the whole file (a template)") for t in targets.template]
    return [(os.path.realpath(path), key, what) for path, key, what in keys]


def _clash(claim: tuple[str, ...], taken: tuple[str, ...]) -> bool:
    """The same variable or gateway address; or the same file and the same key in it, or a template that owns the whole file."""
    if claim[0] != taken[0]:
        return False
    if claim[0] != "file":
        return claim == taken
    return claim[1] == taken[1] and (claim[2] == taken[2] or "" in (claim[2], taken[2]))


def _real(value: Any) -> float:
    if not isinstance(value, (int, float)):
        raise ValueError(f"{value!r} is not a number")
    number = float(value)
    if number != number:
        raise ValueError("NaN is not a number")
    return number
