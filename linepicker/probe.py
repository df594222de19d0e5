"""Probe relay lines over HTTP and time each phase of every request.

Modelled on blackbox_exporter: trace handlers only stamp monotonic times into
a per-sample record, the phases are computed afterwards, and a failed sample
keeps the phases it completed. Every sample uses a fresh connection and a
fresh DNS lookup, because connection reuse and DNS caching would hide the
very phases a user's first request pays for.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import errno
import functools
import json
import os
import socket
import ssl
import time
import urllib.request
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, AsyncIterator, Awaitable, Callable
from urllib.parse import urlsplit

from . import __version__
from .config import Line, ProbeSettings

if TYPE_CHECKING:
    import aiohttp  # imported where probes run: `status` and `--help` read samples without paying for it

    from .chat import ChatSample

BODY_CAP = 64 * 1024
MODELS_CAP = 4 * 2**20  # require_models needs the whole list; some relays list thousands of models
MAX_REDIRECTS = 5
ANTHROPIC_VERSION = "2023-06-01"
ANTHROPIC_MODELS_PAGE = 1000  # the most /v1/models returns at once
API_NAMES = {"openai": "OpenAI", "anthropic": "Anthropic"}

# Outcomes, in the words a user reads in the table.
OK = "ok"
TIMEOUT = "timeout"
DNS = "dns"
REFUSED = "refused"
UNREACHABLE = "unreachable"
RESET = "reset"
TLS = "tls"
PROTOCOL = "protocol"
HTTP_4XX = "http_4xx"
HTTP_5XX = "http_5xx"
NOT_API = "not_api"
AUTH = "auth"
RATE_LIMITED = "rate_limited"
UNFINISHED = "unfinished"
MISSING_MODEL = "missing_model"
MODEL_ERROR = "model_error"


@dataclass(frozen=True)
class Phases:
    """Milliseconds per phase; None where the sample never got there (or, for dns, no lookup was needed)."""

    dns_ms: float | None = None
    connect_ms: float | None = None
    tls_ms: float | None = None
    ttfb_ms: float | None = None
    transfer_ms: float | None = None
    total_ms: float | None = None


@dataclass(frozen=True)
class Sample:
    line: str
    seq: int
    started_at: float  # unix time
    outcome: str
    success: bool | None  # None: unfinished, counts neither way
    phases: Phases
    status: int | None = None
    error: str | None = None
    key_sent: bool = False


def is_success(outcome: str, key_sent: bool) -> bool:
    """Reachable and answering as the API: a 401 without a key still proves the API is there.

    A 429 counts as reachable too: the account is shared by every line, so a rate
    limit is not a reason to move to another line.
    """
    return outcome in (OK, RATE_LIMITED) or (outcome == AUTH and not key_sent)


@dataclass
class Stamps:
    """Monotonic times written by trace handlers; phases are derived from them later."""

    start: float = 0.0
    dns_start: float | None = None
    dns_end: float | None = None
    conn_start: float | None = None
    tls_start: float | None = None
    conn_end: float | None = None
    request_sent: float | None = None
    first_byte: float | None = None  # the answer's first bytes, decrypted, before aiohttp parses them
    headers: float | None = None
    body_end: float | None = None
    end: float = 0.0

    def new_hop(self) -> None:
        """A redirect starts a new request: the phases describe the hop that answered."""
        self.dns_start = self.dns_end = self.conn_start = self.tls_start = None
        self.conn_end = self.request_sent = self.first_byte = self.headers = self.body_end = None

    @property
    def answered(self) -> float | None:
        """When the answer began: its first bytes, else (if they came before they could be
        watched) the parsed headers, which are later by aiohttp's parsing and a loop turn."""
        return self.first_byte if self.first_byte is not None else self.headers

    def phases(self) -> Phases:
        connect_from = self.dns_end if self.dns_end is not None else self.conn_start
        tcp_done = self.tls_start if self.tls_start is not None else self.conn_end
        return Phases(
            dns_ms=span_ms(self.dns_start, self.dns_end),
            connect_ms=span_ms(connect_from, tcp_done),
            tls_ms=span_ms(self.tls_start, self.conn_end),
            ttfb_ms=span_ms(self.request_sent, self.answered),
            transfer_ms=span_ms(self.answered, self.body_end),
            total_ms=span_ms(self.start, self.end),
        )


def span_ms(start: float | None, end: float | None) -> float | None:
    """Milliseconds between two perf_counter stamps; None unless the probe reached both."""
    if start is None or end is None:
        return None
    return round((end - start) * 1000, 3)


current_stamps: contextvars.ContextVar[Stamps | None] = contextvars.ContextVar("linepicker_stamps", default=None)


class _TimedSSLContext(ssl.SSLContext):
    """Marks where the TCP connect ends and the TLS handshake begins.

    aiohttp's tracing has no TLS signal. asyncio wraps the socket in an SSL
    object (wrap_bio) as soon as the TCP connection is up, for direct and
    proxied (CONNECT, then start_tls) connections alike, so the moment of that
    call is the start of the handshake.
    """

    def wrap_bio(self, *args: Any, **kwargs: Any) -> ssl.SSLObject:
        stamps = current_stamps.get()
        if stamps is not None:
            stamps.tls_start = time.perf_counter()
        return super().wrap_bio(*args, **kwargs)


def make_ssl_context(verify: bool = True) -> ssl.SSLContext:
    """Verified TLS as the OpenAI SDK does it: system store, SSL_CERT_FILE/SSL_CERT_DIR honoured.

    `verify=False` exists only for lines the user marked `insecure: true`.
    Loading the store costs ~25 ms of CPU, half of a daemon's round over 20
    lines, so a context is reused until the store's paths or mtimes change.
    """
    return _ssl_context(verify, _trust_store_stamp() if verify else ())


def _trust_store_stamp() -> tuple[tuple[str | None, float | None], ...]:
    paths = ssl.get_default_verify_paths()  # SSL_CERT_FILE and SSL_CERT_DIR already applied
    return tuple((path, _mtime(path)) for path in (paths.cafile, paths.capath))


def _mtime(path: str | None) -> float | None:
    try:
        return os.stat(path).st_mtime if path else None
    except OSError:
        return None


@functools.lru_cache(maxsize=8)
def _ssl_context(verify: bool, stamp: tuple[tuple[str | None, float | None], ...]) -> ssl.SSLContext:
    context = _TimedSSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if verify:
        context.load_default_certs()
    else:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["http/1.1"])
    return context


@functools.cache
def _trace_config() -> aiohttp.TraceConfig:
    import aiohttp

    def stamp(attr: str) -> Callable[..., Awaitable[None]]:
        async def handler(session: Any, ctx: Any, params: Any) -> None:
            setattr(ctx.trace_request_ctx, attr, time.perf_counter())

        return handler

    async def redirect(session: Any, ctx: Any, params: Any) -> None:
        ctx.trace_request_ctx.new_hop()
        _drop_key_leaving_origin(params)

    trace = aiohttp.TraceConfig()
    trace.on_dns_resolvehost_start.append(stamp("dns_start"))
    trace.on_dns_resolvehost_end.append(stamp("dns_end"))
    trace.on_connection_create_start.append(stamp("conn_start"))
    trace.on_connection_create_end.append(stamp("conn_end"))
    trace.on_request_headers_sent.append(stamp("request_sent"))
    trace.on_request_redirect.append(redirect)
    return trace


def _drop_key_leaving_origin(params: Any) -> None:
    """aiohttp drops Authorization on a redirect to another origin, but not Anthropic's x-api-key.

    The headers handed to this trace signal are the ones the next hop sends, so
    the key is removed from them here, before that request is made. The target
    is read as aiohttp reads it (Location, else URI); in doubt the key stays home.
    """
    from yarl import URL

    if "x-api-key" not in params.headers:
        return
    location = params.response.headers.get("Location") or params.response.headers.get("URI")
    try:
        same = location is not None and params.url.join(URL(location)).origin() == params.url.origin()
    except ValueError:
        same = False
    if not same:
        params.headers.popall("x-api-key", None)


def api_headers(api: str, key: str | None, accept: str = "application/json") -> dict[str, str]:
    """What a client of that API sends: OpenAI's Bearer key, or Anthropic's x-api-key and version."""
    headers = {"User-Agent": f"linepicker/{__version__}", "Accept": accept}
    if api == "anthropic":
        headers["anthropic-version"] = ANTHROPIC_VERSION
        if key:
            headers["x-api-key"] = key
    elif key:
        headers["Authorization"] = f"Bearer {key}"
    return headers


def proxy_for(line: Line, url: str, environment: dict[str, str] | None = None) -> str | None:
    """The proxy the OpenAI SDK would use for this URL: the line's own, else HTTPS_PROXY/NO_PROXY.

    `environment` is getproxies_environment() read once by a round: reading it
    walks all of os.environ, which per sample cost as much CPU as the probe itself.
    """
    if line.proxy == "none":
        return None
    if line.proxy:
        return line.proxy
    proxies = urllib.request.getproxies_environment() if environment is None else environment
    host = urlsplit(url).hostname or ""
    if proxies.get("no") and urllib.request.proxy_bypass_environment(host, proxies):
        return None
    scheme = urlsplit(url).scheme
    return proxies.get(scheme) or proxies.get("all")


def redact(text: str, secret: str | None) -> str:
    if secret and secret in text:
        return text.replace(secret, "***")
    return text


async def probe_once(
    line: Line, seq: int, settings: ProbeSettings, key: str | None, ssl_context: ssl.SSLContext, proxy: str | None
) -> Sample:
    """One request on a fresh connection, ended by a total deadline however the server misbehaves."""
    url = line.url + request_path(settings)
    headers = api_headers(settings.api, key)
    stamps = Stamps(start=time.perf_counter())
    started_at = time.time()
    token = current_stamps.set(stamps)
    status = None
    try:
        async with fresh_session(ssl_context) as session:
            async with asyncio.timeout(settings.timeout):
                async with session.get(
                    url,
                    headers=headers,
                    proxy=proxy,
                    max_redirects=MAX_REDIRECTS,
                    trace_request_ctx=stamps,
                    auto_decompress=True,
                ) as response:
                    stamps.headers = time.perf_counter()
                    status = response.status
                    body, complete = await read_capped(response, MODELS_CAP if settings.require_models else BODY_CAP)
                    stamps.body_end = time.perf_counter()
                    outcome, error = classify_response(
                        response.status, response.content_type, body, complete, settings.api, settings.require_models
                    )
    except Exception as exc:
        outcome, error = classify_exception(exc, settings.timeout)
    finally:
        stamps.end = time.perf_counter()
        current_stamps.reset(token)
    return Sample(
        line=line.name,
        seq=seq,
        started_at=started_at,
        outcome=outcome,
        success=is_success(outcome, bool(key)),
        phases=stamps.phases(),
        status=status,
        error=redact(error, key) if error else None,
        key_sent=bool(key),
    )


def request_path(settings: ProbeSettings) -> str:
    """probe.path, asking Anthropic for its longest page when require_models needs the whole list (its default page is 20)."""
    if settings.api == "anthropic" and settings.require_models and "?" not in settings.path:
        return settings.path + f"?limit={ANTHROPIC_MODELS_PAGE}"
    return settings.path


def fresh_session(ssl_context: ssl.SSLContext) -> aiohttp.ClientSession:
    """A session for one request: a reused connection or a cached address would hide the phases being timed."""
    import aiohttp

    connector = aiohttp.TCPConnector(force_close=True, use_dns_cache=False, ssl=ssl_context, limit=1)
    return aiohttp.ClientSession(
        connector=connector, trace_configs=[_trace_config()], response_class=_first_byte_response(), trust_env=False
    )


@functools.cache
def _first_byte_response() -> type[aiohttp.ClientResponse]:
    """A response that stamps the moment its first bytes arrive, as curl's time_starttransfer does.

    aiohttp's tracing has no such signal, and the parsed-headers moment comes
    later by aiohttp's parsing and a turn of the event loop (about 0.3 ms,
    docs/benchmarks.md §1). start() runs right after the request is written,
    before the loop can deliver any answer, so watching the protocol's next
    data_received from there sees the answer's first bytes, after TLS.
    """
    import aiohttp

    class FirstByteResponse(aiohttp.ClientResponse):
        async def start(self, connection: aiohttp.connector.Connection) -> aiohttp.ClientResponse:
            stamps, protocol = current_stamps.get(), connection.protocol
            if stamps is not None and protocol is not None:
                receive = protocol.data_received

                def first_bytes(data: bytes) -> None:
                    if data:  # aiohttp itself may call it with b"" when it resumes reading
                        stamps.first_byte = time.perf_counter()
                        vars(protocol).pop("data_received", None)  # back to the class's own method
                    receive(data)

                protocol.data_received = first_bytes  # type: ignore[method-assign]
            return await super().start(connection)

    return FirstByteResponse


async def read_capped(response: aiohttp.ClientResponse, cap: int = BODY_CAP) -> tuple[bytes, bool]:
    """Read at most `cap` bytes: a block page or an endless stream must not cost memory."""
    chunks: list[bytes] = []
    size = 0
    while size < cap:
        chunk = await response.content.read(cap - size)
        if not chunk:
            return b"".join(chunks), True
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks), response.content.at_eof()


def classify_response(
    status: int, content_type: str, body: bytes, complete: bool, api: str = "openai", require_models: tuple[str, ...] = ()
) -> tuple[str, str | None]:
    shape, data = _json_shape(body, complete, api)
    if status == 429:
        return RATE_LIMITED, "429 Too Many Requests"
    if status >= 500:
        return HTTP_5XX, f"HTTP {status}" + page_hint(content_type, body)
    if status in (401, 403):
        if shape == "error":
            return AUTH, f"HTTP {status}: the API answered but did not accept the key"
        return NOT_API, f"HTTP {status} that is not the API" + page_hint(content_type, body)
    if 300 <= status < 400:
        return PROTOCOL, f"HTTP {status} redirect without a usable Location"
    if status >= 400:
        return HTTP_4XX, f"HTTP {status}" + page_hint(content_type, body)
    if shape == "api":
        return _missing_models(data, complete, require_models) if require_models else (OK, None)
    return NOT_API, f"HTTP {status} but the body is not {API_NAMES[api]}-shaped JSON" + page_hint(content_type, body)


def _missing_models(answer: dict[str, Any], complete: bool, required: tuple[str, ...]) -> tuple[str, str | None]:
    """The line answers, but a client asking for a model it does not list would be refused."""
    if not complete:
        return PROTOCOL, f"the model list is longer than {MODELS_CAP // 2**20} MiB, so require_models cannot be checked"
    data = answer.get("data")
    listed = {item.get("id") for item in data if isinstance(item, dict)} if isinstance(data, list) else set()
    missing = [model for model in required if model not in listed]
    if not missing:
        return OK, None
    paged = ", the first page of a longer list (has_more)" if answer.get("has_more") is True else ""
    return MISSING_MODEL, f"the model list lacks {', '.join(missing)} ({len(listed)} models listed{paged})"


def _json_shape(body: bytes, complete: bool, api: str = "openai") -> tuple[str | None, dict[str, Any]]:
    """'api' for an answer of the API (OpenAI: an object or list; Anthropic: a `data` list), 'error' for its error, else None;
    with the parsed answer, when the whole body was read and parsed.

    Anthropic's errors are {"type": "error", "error": {...}}; OpenAI's are {"error": {...}}: both carry `error`.
    """
    if complete:
        try:
            data = json.loads(body)
        except (ValueError, RecursionError):  # RecursionError: nested past Python's limit, a relay can send that
            return None, {}
        if not isinstance(data, dict):
            return None, {}
        if "error" in data:
            return "error", data
        if api == "anthropic":
            return ("api" if isinstance(data.get("data"), list) else None), data
        return ("api" if "data" in data or "object" in data else None), data
    head = body[:4096].lstrip()
    if not head.startswith(b"{"):
        return None, {}
    if b'"error"' in head[:200]:
        return "error", {}
    return ("api" if b'"data"' in head or b'"object"' in head else None), {}


def page_hint(content_type: str, body: bytes) -> str:
    """Name what came back instead of the API, so a block page is recognisable in the table."""
    if "html" in content_type or body.lstrip()[:1] == b"<":
        title = _html_title(body)
        return f" (HTML page{': ' + title if title else ''})"
    return f" ({content_type})" if content_type and content_type != "application/octet-stream" else ""


def _html_title(body: bytes) -> str:
    text = body[:8192].decode("utf-8", "replace")
    start = text.lower().find("<title>")
    if start < 0:
        return ""
    end = text.lower().find("</title>", start)
    title = text[start + 7 : end if end > 0 else start + 87]
    return " ".join(title.split())[:80]


def classify_exception(exc: Exception, timeout: float) -> tuple[str, str]:
    import aiohttp

    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
        return TIMEOUT, f"no complete answer within {timeout:g}s"
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return TLS, f"certificate rejected: {_ssl_reason(exc.certificate_error)}"
    if isinstance(exc, aiohttp.ClientConnectorSSLError):
        return TLS, f"TLS handshake failed: {_ssl_reason(exc.os_error)}"
    if isinstance(exc, ssl.SSLError):
        return TLS, f"TLS failed: {_ssl_reason(exc)}"
    if isinstance(exc, aiohttp.ClientConnectorDNSError) or isinstance(getattr(exc, "os_error", None), socket.gaierror):
        return DNS, f"DNS lookup failed: {getattr(exc, 'os_error', exc)}"
    if isinstance(exc, aiohttp.ClientHttpProxyError):
        return PROTOCOL, f"proxy answered {exc.status} to CONNECT"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return _classify_os_error(exc.os_error, "connect")
    if isinstance(exc, aiohttp.TooManyRedirects):
        return PROTOCOL, f"more than {MAX_REDIRECTS} redirects"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return RESET, "server closed the connection without an answer"
    if isinstance(exc, aiohttp.ClientPayloadError):
        if _reset_mid_body(exc):
            return RESET, "connection reset while reading the body"
        cause = exc.__cause__
        return PROTOCOL, f"broken response body: {_first_line(getattr(cause, 'message', None) or exc)}"
    if isinstance(exc, aiohttp.ClientResponseError):
        return PROTOCOL, f"not an HTTP answer: {_first_line(exc.message) or exc.status}"
    if isinstance(exc, (aiohttp.ClientOSError, OSError)):
        return _classify_os_error(exc, "read")
    if isinstance(exc, aiohttp.ClientError):
        return PROTOCOL, f"{type(exc).__name__}: {_first_line(exc)}"
    raise exc


def _reset_mid_body(exc: aiohttp.ClientPayloadError) -> bool:
    """aiohttp chains the framing error (body shorter than announced), not the reset behind it.

    The reset survives only in the message, as the repr of the ConnectionResetError.
    """
    chain = (exc.__cause__, exc.__context__)
    return any(isinstance(link, ConnectionResetError) for link in chain) or "ConnectionResetError(" in str(exc)


def _classify_os_error(exc: BaseException, during: str) -> tuple[str, str]:
    code = getattr(exc, "errno", None)
    if isinstance(exc, ConnectionRefusedError) or code == errno.ECONNREFUSED:
        return REFUSED, "connection refused"
    if isinstance(exc, (ConnectionResetError, BrokenPipeError)) or code in (errno.ECONNRESET, errno.EPIPE):
        return RESET, f"connection reset during {during}"
    if code in (errno.ENETUNREACH, errno.EHOSTUNREACH):
        return UNREACHABLE, os.strerror(code)
    return UNREACHABLE, f"{during} failed: {_first_line(exc)}"


def _ssl_reason(exc: BaseException | None) -> str:
    return str(getattr(exc, "verify_message", None) or getattr(exc, "reason", None) or exc)


def _first_line(value: object) -> str:
    text = str(value).strip()
    return text.splitlines()[0][:200] if text else ""


@dataclass
class LineRun:
    """One line's progress through a round, readable while the round is running."""

    line: Line
    samples: list[Sample] = field(default_factory=list)
    inflight_since: float | None = None  # perf_counter start of the sample in flight
    sampled: bool = False  # every sample taken; a follow-up may still run
    done: bool = False
    chat: ChatSample | None = None  # the streaming chat probe, when one ran this round


# Probes a line further once its samples are in (the chat probe), before the line
# counts as done, so a round never settles on a line it has not fully judged. It
# gets the line's TLS context and proxy, and takes its places from the round's
# Limits like a sample does.
FollowUp = Callable[[LineRun, ssl.SSLContext, "str | None", "Limits"], Awaitable[None]]


async def probe_line(
    run: LineRun,
    settings: ProbeSettings,
    key: str | None,
    ssl_context: ssl.SSLContext,
    proxy: str | None,
    limits: Limits,
    on_sample: Callable[[Sample], None] | None = None,
    follow_up: FollowUp | None = None,
) -> None:
    """Samples of one line go one after another, so they never compete with each other.

    Each sample queues for its places anew: every line's first sample goes
    before any line's second, so a dead line starts its timeout early instead
    of waiting behind the repeat samples of lines that answer.
    """
    for seq in range(settings.samples):
        async with limits.place():
            run.inflight_since = time.perf_counter()
            sample = await probe_once(run.line, seq, settings, key, ssl_context, proxy)
        run.samples.append(sample)
        run.inflight_since = None
        if on_sample:
            on_sample(sample)
        if sample.outcome == TIMEOUT:
            # Another sample would only cost another full timeout.
            break
    run.sampled = True
    if follow_up is not None:
        await follow_up(run, ssl_context, proxy, limits)
    run.done = True


Settled = Callable[[list[LineRun]], bool]

LEASE_S = 0.1


@dataclass
class Limits:
    """How much of a round runs at once.

    `sockets` keeps the open connections within the open-file limit. `busy` is
    probe.concurrency: every request in flight costs the one event loop CPU,
    and an answer that arrives while the loop is busy waits unread, which
    inflates the time measured (docs/benchmarks.md). A request still waiting
    after LEASE_S gives its busy place back: waiting costs the loop nothing, and
    a dead line must not hold a place for a whole timeout.
    """

    sockets: asyncio.Semaphore
    busy: asyncio.Semaphore

    @contextlib.asynccontextmanager
    async def place(self) -> AsyncIterator[None]:
        """The places one request takes: a socket for as long as it runs, a busy place under lease."""
        async with self.sockets:
            async with self._busy_place():
                yield

    @contextlib.asynccontextmanager
    async def _busy_place(self) -> AsyncIterator[None]:
        await self.busy.acquire()
        given_back = False

        def give_back() -> None:
            nonlocal given_back
            if not given_back:
                given_back = True
                self.busy.release()

        lease = asyncio.get_running_loop().call_later(LEASE_S, give_back)
        try:
            yield
        finally:
            lease.cancel()
            give_back()


def socket_budget() -> int:
    """How many probes may hold a socket at once: half the open-file limit, the rest left to the database and the daemon.

    Past the limit connect() fails with EMFILE, and that local shortage would be
    recorded against the line as if the line had failed.
    """
    try:
        import resource
    except ImportError:  # Windows: sockets are not bounded by a per-process file limit
        return 10_000
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 10_000
    return max(1, soft // 2)


async def probe_round(
    lines: tuple[Line, ...] | list[Line],
    settings: ProbeSettings,
    key: str | None,
    settled: Settled | None = None,
    on_sample: Callable[[Sample], None] | None = None,
    follow_up: FollowUp | None = None,
    tick: float = 0.02,
) -> list[LineRun]:
    """Probe every line concurrently; stop early once `settled` says the rest cannot matter.

    Lines cut short in their samples get one 'unfinished' sample so the record
    shows they were not waited for, rather than pretending they failed.
    """
    contexts = {verify: make_ssl_context(verify) for verify in {not line.insecure for line in lines}}
    limits = Limits(sockets=asyncio.Semaphore(socket_budget()), busy=asyncio.Semaphore(settings.concurrency))
    environment = urllib.request.getproxies_environment()
    runs = [LineRun(line) for line in lines]
    tasks = {
        asyncio.ensure_future(
            probe_line(
                run, settings, key, contexts[not run.line.insecure],
                proxy_for(run.line, run.line.url + settings.path, environment), limits, on_sample, follow_up,
            )
        ): run
        for run in runs
    }
    pending = set(tasks)
    try:
        while pending:
            done, pending = await asyncio.wait(pending, timeout=tick if settled else None, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()
            if pending and settled and settled(runs):
                break
    finally:
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
    now = time.perf_counter()
    for run in (tasks[task] for task in pending if not tasks[task].sampled):
        elapsed = (now - run.inflight_since) * 1000 if run.inflight_since else None
        run.samples.append(
            Sample(
                line=run.line.name,
                seq=len(run.samples),
                started_at=time.time() - (elapsed or 0) / 1000,
                outcome=UNFINISHED,
                success=None,
                phases=Phases(total_ms=round(elapsed, 3) if elapsed is not None else None),
                error="not waited for: the choice was already settled",
                key_sent=bool(key),
            )
        )
    return runs
