"""Timing one request phase by phase on a fresh connection.

Modelled on blackbox_exporter: trace handlers only stamp monotonic times into
a per-request record, the phases are computed afterwards, and a failed request
keeps the phases it completed. Every request uses a fresh connection and a
fresh DNS lookup, because connection reuse and DNS caching would hide the
very phases a user's first request pays for. The models probe and the chat
probe both go through `timed_request`.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import os
import ssl
import time
import urllib.request
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, AsyncIterator, Awaitable, Callable
from urllib.parse import urlsplit

from .. import __version__
from ..config import Line
from .phases import Phases

if TYPE_CHECKING:
    import aiohttp  # imported where probes run: `status` and `--help` read samples without paying for it

BODY_CAP = 64 * 1024
MODELS_CAP = 4 * 2**20  # require_models needs the whole list; some relays list thousands of models
MAX_REDIRECTS = 5
ANTHROPIC_VERSION = "2023-06-01"


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

    def unanswered(self, now: float) -> Phases:
        """The phases of a request still waiting at `now`: those it completed, and as ttfb and total
        how long it has waited since the request went out and since it began (the least they can be)."""
        return replace(self.phases(), ttfb_ms=span_ms(self.request_sent, now), total_ms=span_ms(self.start, now))

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


def fresh_session(ssl_context: ssl.SSLContext | None = None) -> aiohttp.ClientSession:
    """A session whose every request opens a new connection after a new lookup: a reused connection or a
    cached address would hide the phases being timed. A round shares one among all its requests (a
    session and its connector cost more CPU to make and close than the bare request does); the
    connections are still one per request, and `probe.concurrency` is enforced by the round, not here."""
    import aiohttp

    connector = aiohttp.TCPConnector(force_close=True, use_dns_cache=False, ssl=ssl_context or True, limit=0)
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




@contextlib.asynccontextmanager
async def timed_request(
    method: str,
    url: str,
    stamps: Stamps,
    ssl_context: ssl.SSLContext,
    timeout: float,
    headers: dict[str, str],
    proxy: str | None,
    session: aiohttp.ClientSession | None = None,
    **kwargs: Any,
) -> AsyncIterator[aiohttp.ClientResponse]:
    """One request on a new connection (in `session`, made by fresh_session, else in one of its own),
    under one total deadline, stamping `stamps` as it goes.

    The deadline covers reading the answer inside the block too, so however a
    server misbehaves the request ends; `stamps.end` is set on every way out.
    """
    token = current_stamps.set(stamps)
    try:
        async with contextlib.AsyncExitStack() as stack:
            if session is None:
                session = await stack.enter_async_context(fresh_session(ssl_context))
            async with asyncio.timeout(timeout):
                async with session.request(
                    method, url, headers=headers, proxy=proxy, max_redirects=MAX_REDIRECTS, trace_request_ctx=stamps,
                    ssl=ssl_context, **kwargs,
                ) as response:
                    stamps.headers = time.perf_counter()
                    yield response
    finally:
        stamps.end = time.perf_counter()
        current_stamps.reset(token)
