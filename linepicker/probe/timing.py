"""Timing one request phase by phase on a fresh connection.

Modelled on blackbox_exporter: trace handlers only stamp monotonic times into
a per-request record, the phases are computed afterwards, and a failed request
keeps the phases it completed. Every request uses a fresh connection and a
fresh DNS lookup, because connection reuse and DNS caching would hide the
very phases a user's first request pays for. The models probe and the chat
probe both go through `timed_request`, which also follows redirects itself:
where a redirect may lead is probe.follow_redirects' call, and a target that
could never be requested must end the sample before aiohttp trips over it.
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
import weakref
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, AsyncIterator, Awaitable, Callable
from urllib.parse import urlsplit

from .. import __version__
from ..config import Line, host_problem
from .phases import Phases

if TYPE_CHECKING:
    import aiohttp  # imported where probes run: `status` and `--help` read samples without paying for it

BODY_CAP = 64 * 1024
MODELS_CAP = 4 * 2**20  # require_models needs the whole list; some relays list thousands of models
MAX_REDIRECTS = 5
REDIRECT_STATUSES = (301, 302, 303, 307, 308)
KEY_HEADERS = ("Authorization", "x-api-key", "Cookie")  # what never crosses to another origin
ANTHROPIC_VERSION = "2023-06-01"


class RedirectRefused(Exception):
    """A redirect probe.follow_redirects does not follow: the sample ends there, naming where it led."""

    def __init__(self, target: str, follow: str):
        super().__init__(f"redirected to {target} (probe.follow_redirects: {follow})")


class BadRedirect(Exception):
    """A redirect to something that cannot be requested: not a URL, not HTTP, a host no resolver takes, or one hop too many."""


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

    trace = aiohttp.TraceConfig()
    trace.on_dns_resolvehost_start.append(stamp("dns_start"))
    trace.on_dns_resolvehost_end.append(stamp("dns_end"))
    trace.on_connection_create_start.append(stamp("conn_start"))
    trace.on_connection_create_end.append(stamp("conn_end"))
    trace.on_request_headers_sent.append(stamp("request_sent"))
    return trace


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


_RESOLVERS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple[tuple[str, ...], float], Any]] = weakref.WeakKeyDictionary()


def resolver(nameservers: tuple[str, ...], timeout: float) -> aiohttp.abc.AbstractResolver:
    """The event loop's DNS resolver: aiodns (c-ares), never the thread pool.

    aiohttp's threaded resolver runs getaddrinfo in the default executor, a
    handful of threads that a lookup nobody answers holds until the system
    resolver gives up (10 s and more): six such lines starved every other
    line's lookup and held the process's exit. c-ares waits for all lookups on
    one thread of its own, and abandoning a lookup at the sample's deadline
    costs nothing. Its own retries are fitted within `timeout`. One resolver
    serves a whole loop, each lookup still fresh (the connector caches nothing).
    """
    from aiohttp.resolver import AsyncResolver

    made = _RESOLVERS.setdefault(asyncio.get_running_loop(), {})
    key = (nameservers, timeout)
    if key not in made:
        made[key] = AsyncResolver(nameservers=list(nameservers) or None, timeout=timeout / 2, tries=2)
    return made[key]


def fresh_session(ssl_context: ssl.SSLContext | None = None, dns: aiohttp.abc.AbstractResolver | None = None) -> aiohttp.ClientSession:
    """A session whose every request opens a new connection after a new lookup (through `dns`, from
    `resolver`): a reused connection or a cached address would hide the phases being timed. A round
    shares one among all its requests (a session and its connector cost more CPU to make and close than
    the bare request does); the connections are still one per request, and `probe.concurrency` is
    enforced by the round, not here."""
    import aiohttp

    connector = aiohttp.TCPConnector(force_close=True, use_dns_cache=False, ssl=ssl_context or True, limit=0, resolver=dns)
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
    follow: str = "same-origin",
    nameservers: tuple[str, ...] = (),
    **kwargs: Any,
) -> AsyncIterator[aiohttp.ClientResponse]:
    """One request on a new connection (in `session`, made by fresh_session, else in one of its own),
    under one total deadline, stamping `stamps` as it goes.

    The deadline covers redirects and reading the answer inside the block too,
    so however a server misbehaves the request ends; `stamps.end` is set on
    every way out. Redirects are followed as `follow` (probe.follow_redirects)
    allows, with the phases of the hop that answered. A session of its own
    looks names up through `nameservers` (probe.nameservers) when given, else
    the system's servers; a round's session was made with its resolver.
    """
    from yarl import URL

    token = current_stamps.set(stamps)
    try:
        async with contextlib.AsyncExitStack() as stack:
            if session is None:
                session = await stack.enter_async_context(fresh_session(ssl_context, resolver(nameservers, timeout)))
            async with asyncio.timeout(timeout):
                target, home, headers = URL(url), URL(url).origin(), dict(headers)
                for hop in range(MAX_REDIRECTS + 1):
                    response = await session.request(
                        method, target, headers=headers, proxy=proxy, allow_redirects=False, trace_request_ctx=stamps, ssl=ssl_context, **kwargs
                    )
                    stamps.headers = time.perf_counter()
                    following = next_hop(target, response, home, follow)
                    if following is None:
                        break
                    response.release()
                    if hop == MAX_REDIRECTS:
                        raise BadRedirect(f"more than {MAX_REDIRECTS} redirects")
                    if following.origin() != home:
                        for name in KEY_HEADERS:
                            headers.pop(name, None)
                    if response.status == 303 or (response.status in (301, 302) and method == "POST"):
                        method, kwargs = "GET", {k: v for k, v in kwargs.items() if k not in ("json", "data")}
                    target = following
                    stamps.new_hop()
                async with response:
                    yield response
    finally:
        stamps.end = time.perf_counter()
        current_stamps.reset(token)


def next_hop(current: Any, response: aiohttp.ClientResponse, home: Any, follow: str) -> Any:
    """Where a redirect leads, if it is to be followed; None when the response is the answer.

    Read as aiohttp reads it (Location, else URI, relative to the current
    URL). Credentials in the target are dropped: only the line's own key is
    sent, and only to the line's origin. Raises RedirectRefused for a target
    `follow` rules out, BadRedirect for one that cannot be requested at all.
    """
    from yarl import URL

    location = response.headers.get("Location") or response.headers.get("URI")
    if response.status not in REDIRECT_STATUSES or location is None:
        return None
    try:
        target = current.join(URL(location))
        scheme, host = target.scheme, target.raw_host
    except (ValueError, UnicodeError):
        raise BadRedirect(f"redirect to an address that is not a URL: {location}") from None
    if scheme not in ("http", "https"):
        raise BadRedirect(f"redirect to a location that is not HTTP: {location}")
    if problem := host_problem(host or ""):
        raise BadRedirect(f"redirect to an invalid host name ({problem}): {host}")
    target = target.with_user(None)
    if follow == "none" or (follow == "same-origin" and target.origin() != home):
        raise RedirectRefused(str(target.origin()), follow)
    return target
