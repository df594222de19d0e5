"""The local gateway: one endpoint every client reads once, forwarded to the best line of the moment.

Claude Code and Codex read their BaseURL at start and keep it, so a choice
made later never reaches a running session; a stable local endpoint does.
Each request goes to the lines in the order a callable gives (the policy's,
chosen first), and moves to the next line only while nothing of the answer
has reached the client: a line that cannot be reached, resets before
answering, answers with a page that is not the API, or opens its stream with
an error event. Everything else, 401, 403, 429 and the API's own JSON errors
included, is the answer, passed on as it arrives.

This module is the core of it and knows nothing of the daemon: it is given
the lines and a callback that receives every attempt as evidence, so tests
and benches run it alone. Connections to the lines are pooled and kept alive
(unlike probes, which time fresh ones). Credentials pass through untouched
and are never kept, logged or put in the evidence.
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import time
import urllib.request
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, AsyncIterator, Callable, Sequence
from urllib.parse import urlsplit

from aiohttp import web

from ..config import GatewaySettings, Line, Listen, is_loopback
from ..probe.chat import Event, EventStream, error_text, token_rate
from ..probe.outcomes import (
    AUTH,
    HTTP_4XX,
    HTTP_5XX,
    MODEL_ERROR,
    OK,
    PROTOCOL,
    RATE_LIMITED,
    TIMEOUT,
    UNFINISHED,
    classify_exception,
    classify_response,
    relay_text,
)
from ..probe.timing import make_ssl_context, proxy_for
from ..traffic import Attempt
from ..urlmask import mask_userinfo

if TYPE_CHECKING:
    import aiohttp

log = logging.getLogger("linepicker")

LINE_HEADER = "x-linepicker-line"
MAX_HEADERS = 128  # request headers a client may send; Claude Code sends about 20
LINE_HEADER_CAP = 64 * 1024  # a line's header lines; larger is a broken or hostile line
HELD_CAP = 64 * 1024  # a stream held back longer than this without a judgeable event is let through
PAGE_CAP = 64 * 1024  # of a page that is not the API, read to name it; the rest is not needed
POOL_IDLE_S = 15.0  # a pooled connection to a line unused this long is closed
STALE_RETRIES = 2  # a kept-alive connection the line closed meanwhile is retried on a new one, not failed over
ERROR_TEXT_CAP = 300
SECRET_PIECE = 6  # no run of this many characters of a credential survives in recorded text

# RFC 9110 §7.6.1: meaningful for one connection only, never forwarded; plus the framing we redo.
HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-connection", "proxy-authenticate", "proxy-authorization", "te", "trailer", "trailers",
     "transfer-encoding", "upgrade", "host", "content-length", "expect"}
)
CREDENTIAL_HEADERS = ("authorization", "x-api-key", "api-key", "x-goog-api-key", "proxy-authorization")


class Breakers:
    """Per-line circuit breakers fed by real requests.

    `failures` consecutive failed attempts open a line: it is skipped for the
    cooldown, then half-open: one request may try it, and its outcome closes
    the breaker or opens it again for twice as long (up to 16 times).
    Passing answers on (a 429, the API's errors) is never a failure: only
    what makes the gateway move to another line is.
    """

    def __init__(self, failures: int, cooldown: float, clock: Callable[[], float] = time.monotonic):
        self.failures = failures
        self.cooldown = cooldown
        self.clock = clock
        self._state: dict[str, _Breaker] = {}

    def state(self, name: str) -> str:
        breaker = self._state.get(name)
        if breaker is None or breaker.opened_at is None:
            return "closed"
        return "open" if self.clock() < breaker.opened_at + breaker.cooldown else "half-open"

    def reopens_in(self, name: str) -> float | None:
        """Seconds until an open line may be tried again."""
        breaker = self._state.get(name)
        if breaker is None or breaker.opened_at is None:
            return None
        return max(0.0, breaker.opened_at + breaker.cooldown - self.clock())

    def claim(self, name: str) -> bool:
        """May a request try this line now? A half-open line lets one request through at a time."""
        state = self.state(name)
        if state == "closed":
            return True
        breaker = self._state[name]
        if state == "half-open" and not breaker.trial:
            breaker.trial = True
            return True
        return False

    def release(self, name: str) -> None:
        """A claimed trial that never ran (an earlier line answered) goes back."""
        if (breaker := self._state.get(name)) is not None:
            breaker.trial = False

    def record(self, name: str, ok: bool) -> bool:
        """Fold one attempt in; True when this failure opened the line."""
        breaker = self._state.setdefault(name, _Breaker())
        breaker.trial = False
        if ok:
            self._state[name] = _Breaker()
            return False
        breaker.failed += 1
        if breaker.opened_at is not None:  # a half-open trial failed, or a last-resort try of an open line
            breaker.opened_at = self.clock()
            breaker.cooldown = min(breaker.cooldown * 2, self.cooldown * 16)
            return True
        if breaker.failed >= self.failures:
            breaker.opened_at = self.clock()
            breaker.cooldown = self.cooldown
            return True
        return False

    def forget(self, keep: set[str]) -> None:
        """Lines removed from the config take their breakers with them."""
        self._state = {name: b for name, b in self._state.items() if name in keep}


@dataclass
class _Breaker:
    failed: int = 0
    opened_at: float | None = None  # monotonic
    cooldown: float = 0.0
    trial: bool = False


@dataclass
class _Body:
    """The request body: whole (and so replayable on another line) or streaming through once."""

    data: bytes | None  # None with no stream: no body at all
    stream: AsyncIterator[bytes] | None = None
    size: int = 0  # bytes read from the client so far
    length: int | None = None  # the client's Content-Length, announced again for a streaming body
    too_large: bool = False  # a streaming body went past max_body_bytes (aiohttp reports it as a send failure)

    @property
    def replayable(self) -> bool:
        return self.stream is None

    def streaming(self, content: Any, read: list[bytes], cap: int) -> "_Body":
        """Go on as a stream: what was read, then the rest as it arrives, up to `cap` bytes in all."""

        async def chunks() -> AsyncIterator[bytes]:
            for chunk in read:
                yield chunk
            while chunk := await content.readany():
                self.size += len(chunk)
                if self.size > cap:
                    self.too_large = True
                    raise BodyTooLarge
                yield chunk

        self.stream = chunks()
        return self


class BodyTooLarge(Exception):
    pass


@dataclass(frozen=True)
class _Route:
    origin: Any  # yarl.URL
    ssl: Any  # ssl.SSLContext
    proxy: str | None


@dataclass
class _Stamps:
    """perf_counter moments of one attempt, written by the trace hooks and the forwarding loop."""

    start: float
    sent: float | None = None  # the request's head written
    body_sent: float | None = None
    head: float | None = None  # the answer's head parsed
    end: float | None = None
    reused: bool = False


class Gateway:
    """Serve on `settings.listen`, forwarding every request to the lines that `lines()` gives, in that order."""

    def __init__(
        self,
        settings: GatewaySettings,
        lines: Callable[[], Sequence[Line]],
        on_attempt: Callable[[Attempt], None] | None = None,
    ):
        self.settings = settings
        self.lines = lines
        self.on_attempt = on_attempt
        self.breakers = Breakers(settings.breaker_failures, settings.breaker_cooldown)
        self.url: str | None = None
        self._runner: web.ServerRunner | None = None
        self._server: _Server | None = None
        self._session: aiohttp.ClientSession | None = None
        self._hosts: frozenset[str] = frozenset()
        self._port = 0
        self._ssl = {verify: make_ssl_context(verify) for verify in (True, False)}
        self._proxies = urllib.request.getproxies_environment()  # read once: it walks all of os.environ
        self._routes: dict[Line, _Route] = {}
        self._timeout: aiohttp.ClientTimeout | None = None

    async def start(self) -> str:
        """Bind and serve; returns the base URL clients are given. A port in use is a one-line OSError."""
        import aiohttp

        settings = self.settings
        self._timeout = aiohttp.ClientTimeout(total=None, connect=settings.connect_timeout)
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=POOL_IDLE_S, ttl_dns_cache=10),
            trace_configs=[_trace_config()],
            auto_decompress=False,  # bytes pass through as the line encoded them
            trust_env=False,  # a line's proxy is chosen per line, as probes do
            skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),  # only what the client sent
            max_line_size=LINE_HEADER_CAP,
            max_field_size=LINE_HEADER_CAP,
        )
        server = _Server(
            self.handle,
            settings.header_timeout,
            handler_cancellation=True,  # a client that leaves cancels its request to the line
            keepalive_timeout=settings.idle_timeout,
            max_line_size=settings.max_header_bytes,
            max_field_size=settings.max_header_bytes,
            max_headers=MAX_HEADERS,
            access_log=None,
        )
        self._server = server
        runner = web.ServerRunner(server, shutdown_timeout=2.0)
        await runner.setup()
        try:
            await web.TCPSite(runner, settings.listen.host, settings.listen.port, backlog=1024).start()
        except OSError:
            await runner.cleanup()
            await self._session.close()
            raise
        self._runner = runner
        port = runner.addresses[0][1]
        self._hosts = _allowed_hosts(settings.listen.host, port)
        self._port = port
        self.url = Listen(settings.listen.host, port).url
        return self.url

    async def close(self) -> None:
        """Stop listening; requests in flight get a short grace, then their connections are closed."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        if self._server is not None:
            self._server.head_arrived(request.protocol)
        refusal = self._refusal(request)
        if refusal is not None:
            return _error(403, refusal, "request_refused")
        try:
            return await self._forward(request)
        except BodyTooLarge:
            limit = self.settings.max_body_bytes
            return _error(413, f"the request body is larger than gateway.max_body_bytes ({limit} bytes)", "request_too_large")

    async def _forward(self, request: web.BaseRequest) -> web.StreamResponse:
        """Try the planned lines in turn until one answers for the client."""
        body = await self._read_body(request)
        plan, claimed = self._plan(body.replayable)
        if not plan:
            return _error(503, "no line is configured", "no_line")
        tried: list[str] = []
        try:
            for seq, line in enumerate(plan, 1):
                claimed.discard(line.name)
                response = await self._attempt(request, line, body, seq, tried[-1] if tried else None, last=seq == len(plan))
                if response is not None:
                    return response
                tried.append(line.name)
        finally:
            for name in claimed:
                self.breakers.release(name)
        return _error(502, f"no line answered (tried {', '.join(tried)}); see the daemon's log", "no_line_answered")

    def _refusal(self, request: web.BaseRequest) -> str | None:
        """A web page must not reach the gateway (it would spend the user's key), nor a name it does not serve."""
        host = request.headers.get("Host", "").lower()
        if host not in self._hosts and not (self.settings.allow_remote and _remote_host_ok(host, self.settings.listen.host, self._port)):
            return f"the gateway answers only to {', '.join(sorted(self._hosts))}, not Host {host[:100]!r}"
        origin = request.headers.get("Origin")
        if origin is not None and not _loopback_origin(origin):
            return "requests from web pages are refused (Origin is not this machine)"
        if not request.raw_path.startswith("/"):
            return "the request target must be a path"
        return None

    async def _read_body(self, request: web.BaseRequest) -> _Body:
        """Keep a body up to max_replay_bytes for a retry; a larger one streams to one line only."""
        settings = self.settings
        length = request.content_length
        if length is not None and length > settings.max_body_bytes:
            raise BodyTooLarge
        if request.headers.get("Expect", "").lower() == "100-continue" and request.version >= (1, 1):
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")  # the low-level server leaves this to us
        body = _Body(None, length=length)
        if not request.body_exists:
            return body
        if length is not None and length > settings.max_replay_bytes:
            return body.streaming(request.content, [], settings.max_body_bytes)
        chunks: list[bytes] = []
        while chunk := await request.content.readany():
            chunks.append(chunk)
            body.size += len(chunk)
            if body.size > settings.max_body_bytes:
                raise BodyTooLarge
            if body.size > settings.max_replay_bytes:  # a chunked body, of no announced length
                return body.streaming(request.content, chunks, settings.max_body_bytes)
        body.data = b"".join(chunks)
        return body

    def _plan(self, replayable: bool) -> tuple[list[Line], set[str]]:
        """The lines to try, in order: those whose breaker lets them, then the open ones as a last resort.

        Returns the half-open lines whose one trial this request has claimed, to give back if not tried.
        """
        breakers = self.breakers
        usable: list[Line] = []
        rest: list[Line] = []
        claimed: set[str] = set()
        attempts = self.settings.max_attempts if replayable else 1
        for line in self.lines():
            if len(usable) < attempts and breakers.claim(line.name):
                usable.append(line)
                if breakers.state(line.name) == "half-open":
                    claimed.add(line.name)
            else:
                rest.append(line)
        return (usable + rest)[:attempts], claimed

    async def _attempt(
        self, request: web.BaseRequest, line: Line, body: _Body, seq: int, previous: str | None, last: bool
    ) -> web.StreamResponse | None:
        """Try one line; the answer when it is to be the client's, None to go on to the next line."""
        record = _Record(self, request, line, seq, previous, body)
        try:
            upstream = await self._send(request, line, body, record)
        except asyncio.CancelledError:
            record.finish(UNFINISHED, None, "the client left before the answer")
            raise
        except Exception as exc:
            if body.too_large:
                record.finish(UNFINISHED, None, "the request body went past gateway.max_body_bytes")
                raise BodyTooLarge from None
            outcome, error = classify_exception(exc, self.settings.first_byte_timeout or self.settings.connect_timeout)
            if outcome == TIMEOUT:
                error = _timeout_text(record.stamps, self.settings)
            record.finish(outcome, False, error, failover=not last)
            return None
        try:
            return await _Forward(self, request, line, upstream, record, last).run()
        finally:
            if upstream.content.at_eof():
                upstream.release()  # the connection goes back to the pool
            else:
                upstream.close()  # an answer not read to its end leaves the connection unusable

    async def _send(self, request: web.BaseRequest, line: Line, body: _Body, record: "_Record") -> "aiohttp.ClientResponse":
        """Send the request; a kept-alive connection the line closed in the meantime is retried on a new one."""
        import aiohttp
        from yarl import URL

        assert self._session is not None and self._timeout is not None
        route = self._route(line)
        target = URL(line.url + request.raw_path, encoded=True)
        if target.origin() != route.origin:
            raise aiohttp.InvalidURL(line.url)  # defence in depth: only configured lines are ever reached
        headers = _forward_headers(request.headers, body)
        for retry in range(STALE_RETRIES + 1):
            stamps = record.stamps = _Stamps(time.perf_counter())
            try:
                async with asyncio.timeout(self.settings.first_byte_timeout):
                    response = await self._session.request(
                        request.method,
                        target,
                        headers=headers,
                        data=body.data if body.replayable else body.stream,
                        allow_redirects=False,
                        ssl=route.ssl,
                        proxy=route.proxy,
                        timeout=self._timeout,
                        trace_request_ctx=stamps,
                    )
            except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
                if stamps.reused and body.replayable and retry < STALE_RETRIES and _is_reset(exc):
                    continue
                raise
            stamps.head = time.perf_counter()
            return response
        raise AssertionError("unreachable: the last retry raises")

    def _route(self, line: Line) -> _Route:
        """How to reach a line, worked out once: its origin, TLS context and proxy."""
        route = self._routes.get(line)
        if route is None:
            from yarl import URL

            route = self._routes[line] = _Route(URL(line.url).origin(), self._ssl[not line.insecure], proxy_for(line, line.url, self._proxies))
        return route

    def emit(self, attempt: Attempt) -> None:
        if self.on_attempt is None:
            return
        try:
            self.on_attempt(attempt)
        except Exception as exc:  # evidence is worth less than the request it describes
            log.error("gateway: recording an attempt failed: %s", exc)


class _Record:
    """What one attempt has shown so far, turned into an Attempt once its outcome is known."""

    def __init__(self, gateway: Gateway, request: web.BaseRequest, line: Line, seq: int, previous: str | None, body: _Body):
        self.gateway = gateway
        self.line = line
        self.seq = seq
        self.previous = previous
        self.method = request.method
        self.path = request.path[:200]
        self.body = body
        self.secrets = _credentials(request.headers)
        self.started_at = time.time()
        self.stamps = _Stamps(time.perf_counter())
        self.status: int | None = None
        self.watch: _StreamWatch | None = None
        self.done = False

    def finish(self, outcome: str, success: bool | None, error: str | None, failover: bool = False) -> None:
        if self.done:
            return
        self.done = True
        stamps = self.stamps
        stamps.end = time.perf_counter()
        breakers = self.gateway.breakers
        tripped = False
        if success is None:
            breakers.release(self.line.name)
        else:
            tripped = breakers.record(self.line.name, success)
        watch = self.watch
        if watch is not None:
            watch.settle()
        attempt = Attempt(
            line=self.line.name,
            seq=self.seq,
            started_at=self.started_at,
            method=self.method,
            path=self.path,
            outcome=outcome,
            success=success,
            failover=failover,
            previous=self.previous,
            status=self.status,
            error=_scrub(error, self.secrets) if error else None,
            stream=watch is not None,
            request_bytes=self.body.size,
            upload_ms=_ms(stamps.sent, stamps.body_sent),
            ttfb_ms=_ms(stamps.sent, stamps.head),
            ttft_ms=_ms(stamps.sent, watch.first_text) if watch else None,
            total_ms=_ms(stamps.start, stamps.end),
            tokens=watch.tokens if watch else None,
            tokens_per_s=watch.rate() if watch and outcome == OK else None,
            reused=stamps.reused,
            tripped=tripped,
        )
        if failover:
            log.info("gateway: %s %s: %s failed (%s), trying the next line", self.method, self.path, self.line.name, attempt.error or outcome)
        elif success is False:
            log.warning("gateway: %s %s on %s: %s", self.method, self.path, self.line.name, attempt.error or outcome)
        if tripped:
            log.warning("gateway: %s skipped for %.3g s: its requests keep failing", self.line.name, breakers.reopens_in(self.line.name) or 0)
        self.gateway.emit(attempt)


class _Forward:
    """Judge a line's answer before any of it reaches the client, then pass it on as it arrives."""

    def __init__(self, gateway: Gateway, request: web.BaseRequest, line: Line, upstream: "aiohttp.ClientResponse", record: _Record, last: bool):
        self.gateway = gateway
        self.request = request
        self.line = line
        self.upstream = upstream
        self.record = record
        self.last = last
        self.held: list[bytes] = []
        self.failure: tuple[str, str] | None = None  # why a last attempt's answer, passed on all the same, is not the API's
        record.status = upstream.status

    async def run(self) -> web.StreamResponse | None:
        try:
            failure = await self._judge()
        except asyncio.CancelledError:
            self.record.finish(UNFINISHED, None, "the client left before the answer")
            raise
        except Exception as exc:  # the line broke off before its answer could be judged: nothing of it is worth passing on
            outcome, error = classify_exception(exc, self.gateway.settings.connect_timeout)
            self.record.finish(outcome, False, error, failover=not self.last)
            return None
        if failure is not None and not self.last:
            self.record.finish(failure[0], False, failure[1], failover=True)
            return None
        self.failure = failure
        return await self._pass_on()

    async def _judge(self) -> tuple[str, str] | None:
        """Why this answer is not the API's (outcome, error), or None when it is to be passed on."""
        upstream = self.upstream
        status = upstream.status
        ctype = upstream.headers.get("Content-Type", "").lower()
        if not self.request.path.startswith("/v1/") or status in (401, 429):
            return None
        if "html" in ctype or (status >= 500 and "json" not in ctype) or not ctype and await self._peek_is_page():
            page = await self._hold(PAGE_CAP)
            api = "anthropic" if self.request.path.startswith("/v1/messages") else "openai"
            outcome, error = classify_response(status, ctype, page, upstream.content.at_eof(), api)
            return outcome, error or f"HTTP {status} that is not the API"
        if 200 <= status < 300 and "text/event-stream" in ctype:
            return await self._first_event()
        return None

    async def _peek_is_page(self) -> bool:
        chunk = await self.upstream.content.readany()
        if chunk:
            self.held.append(chunk)
        return b"".join(self.held).lstrip()[:1] == b"<"

    async def _hold(self, cap: int) -> bytes:
        """Read and keep up to `cap` bytes of the answer, for judging it and passing it on if it is to be."""
        size = sum(map(len, self.held))
        while size < cap:
            chunk = await self.upstream.content.readany()
            if not chunk:
                break
            self.held.append(chunk)
            size += len(chunk)
        return b"".join(self.held)

    async def _first_event(self) -> tuple[str, str] | None:
        """Hold a stream back until its first event says whether it is an answer or an error."""
        watch = self.record.watch = _StreamWatch()
        size = 0
        while watch.verdict is None:
            chunk = await self.upstream.content.readany()
            if not chunk:
                return PROTOCOL, "the stream ended before its first event"
            self.held.append(chunk)
            watch.feed(chunk)
            size += len(chunk)
            if size >= HELD_CAP:
                return None
        return None if watch.verdict is True else (MODEL_ERROR, f"the stream opened with an error: {watch.verdict}")

    async def _pass_on(self) -> web.StreamResponse:
        """Send the held bytes and the rest as they come; a line that breaks off mid-way breaks the client's answer too."""
        upstream, request, watch = self.upstream, self.request, self.record.watch
        response = web.StreamResponse(status=upstream.status, reason=upstream.reason, headers=_answer_headers(upstream.headers, self.line.name))
        length = upstream.headers.get("Content-Length")
        if length is not None and length.isdigit() and request.method != "HEAD":
            response.content_length = int(length)
        try:
            await response.prepare(request)
            for chunk in self.held:
                await response.write(chunk)
            while True:
                try:
                    chunk = await upstream.content.readany()
                except Exception as exc:  # reading from the line: whatever fails here is the line's
                    outcome, error = classify_exception(exc, self.gateway.settings.connect_timeout)
                    self.record.finish(outcome, False, f"cut mid-answer: {error}")
                    _break_off(request)  # the client must see a broken answer, never a clean end
                    return response
                if not chunk:
                    break
                if watch is not None:
                    watch.feed(chunk)
                await response.write(chunk)
            await response.write_eof()
        except asyncio.CancelledError:
            self._client_left()
            raise
        except ConnectionError:  # writing to the client: it went away
            self._client_left()
            return response
        self._done()
        return response

    def _client_left(self) -> None:
        """A client may hang up once it has read a stream's last event, before the line's final bytes."""
        watch = self.record.watch
        if watch is not None:
            watch.settle()
        if watch is not None and watch.ended:
            self._done()
        else:
            self.record.finish(UNFINISHED, None, "the client left during the answer")

    def _done(self) -> None:
        if self.failure is not None:
            self.record.finish(self.failure[0], False, self.failure[1])
        else:
            self.record.finish(_answer_outcome(self.upstream.status), True, None)


STREAM_END_TYPES = ("message_stop", "response.completed", "response.incomplete", "response.failed")
RECENT_CAP = 64 * 1024  # of a stream's last bytes, kept to read its usage and its end from


class _StreamWatch:
    """Reads a stream's events as they pass: the first one judged, the first text timed, the usage found.

    Events are parsed until the first text. After that a chunk costs only a
    clock read and a place in a window of the stream's last RECENT_CAP bytes:
    the usage and the end of a stream are in its last events, read once the
    stream is over (docs/benchmarks.md, gateway). A last event larger than the
    window (a Responses answer of some 60,000 characters) goes without tokens/s.
    """

    def __init__(self) -> None:
        self.events = EventStream()
        self.verdict: bool | str | None = None  # True: an answer; str: the error it opened with
        self.first_text: float | None = None
        self.last_data: float | None = None
        self.tokens: int | None = None
        self.ended = False  # the API's last event went by: [DONE], message_stop, response.completed...
        self._recent: deque[bytes] = deque()
        self._recent_size = 0
        self._settled = False

    def feed(self, chunk: bytes) -> None:
        now = time.perf_counter()
        if self.first_text is None:
            for event in self.events.feed(chunk):
                data = self._read(event)
                if self.first_text is None and data is not None and _has_text(data):
                    self.first_text = now
            if self.first_text is None:
                return
        self.last_data = now
        recent = self._recent
        recent.append(chunk)  # the chunk that held the first text too: its later events may be the last ones
        self._recent_size += len(chunk)
        while self._recent_size - len(recent[0]) >= RECENT_CAP:
            self._recent_size -= len(recent.popleft())

    def settle(self) -> None:
        """Read the usage and the end from the stream's last events, once it is over (or the client left)."""
        if self._settled:
            return
        self._settled = True
        # The window may begin mid-event: what is left of a cut line has no field name the parser knows, so it is skipped.
        for event in EventStream().feed(b"".join(self._recent)):
            self._read(event)

    def _read(self, event: Event) -> dict[str, Any] | None:
        """Judge the first event, note the end and the usage; the event's JSON object, if it is one."""
        data = _json_object(event.data)
        if self.verdict is None and event.name != "ping" and event.data.strip():
            self.verdict = _event_error(event, data) or True
        if event.data.strip() == "[DONE]" or (data is not None and data.get("type") in STREAM_END_TYPES):
            self.ended = True
        if data is not None:
            self._usage(data)
        return data

    def _usage(self, data: dict[str, Any]) -> None:
        for holder in (data, data.get("response"), data.get("message")):
            usage = holder.get("usage") if isinstance(holder, dict) else None
            if isinstance(usage, dict):
                for key in ("completion_tokens", "output_tokens"):
                    if isinstance(usage.get(key), int):
                        self.tokens = usage[key]

    def rate(self) -> float | None:
        """Tokens after the first over the time they took, as the chat probe counts them."""
        return token_rate(self.tokens, self.first_text, self.last_data)


class _Server(web.Server):
    """aiohttp's low-level server, plus a deadline for a new connection's first request head.

    aiohttp closes a connection idle between requests after keepalive_timeout,
    but a head sent a byte at a time would hold its socket that long too.
    """

    def __init__(self, handler: Callable[..., Any], header_timeout: float, **kwargs: Any):
        super().__init__(handler, **kwargs)
        self._header_timeout = header_timeout
        self._waiting: dict[Any, asyncio.TimerHandle] = {}

    def connection_made(self, handler: Any, transport: Any) -> None:
        super().connection_made(handler, transport)
        self._waiting[handler] = asyncio.get_running_loop().call_later(self._header_timeout, self._too_slow, handler)

    def connection_lost(self, handler: Any, exc: BaseException | None = None) -> None:
        timer = self._waiting.pop(handler, None)
        if timer is not None:
            timer.cancel()
        super().connection_lost(handler, exc)

    def head_arrived(self, handler: Any) -> None:
        timer = self._waiting.pop(handler, None)
        if timer is not None:
            timer.cancel()

    def _too_slow(self, handler: Any) -> None:
        if self._waiting.pop(handler, None) is not None:
            handler.force_close()



def _trace_config() -> "aiohttp.TraceConfig":
    """Stamp when the request's head and body were written, and whether the connection was a kept-alive one."""
    import aiohttp

    async def headers_sent(session: Any, ctx: Any, params: Any) -> None:
        ctx.trace_request_ctx.sent = time.perf_counter()

    async def chunk_sent(session: Any, ctx: Any, params: Any) -> None:
        ctx.trace_request_ctx.body_sent = time.perf_counter()

    async def reused(session: Any, ctx: Any, params: Any) -> None:
        ctx.trace_request_ctx.reused = True

    trace = aiohttp.TraceConfig()
    trace.on_request_headers_sent.append(headers_sent)
    trace.on_request_chunk_sent.append(chunk_sent)
    trace.on_connection_reuseconn.append(reused)
    return trace


def _forward_headers(headers: Any, body: _Body) -> Any:
    """The client's headers minus the hop-by-hop ones (and those its Connection header names); Host comes from the line."""
    from multidict import CIMultiDict

    named = {token.strip().lower() for value in headers.getall("Connection", ()) for token in value.split(",")}
    forwarded = CIMultiDict((name, value) for name, value in headers.items() if name.lower() not in HOP_BY_HOP and name.lower() not in named)
    if body.stream is not None and body.length is not None:
        forwarded["Content-Length"] = str(body.length)
    return forwarded


def _answer_headers(headers: Any, line: str) -> Any:
    from multidict import CIMultiDict

    named = {token.strip().lower() for value in headers.getall("Connection", ()) for token in value.split(",")}
    answer = CIMultiDict((name, value) for name, value in headers.items() if name.lower() not in HOP_BY_HOP and name.lower() not in named)
    answer[LINE_HEADER] = line
    return answer


def _answer_outcome(status: int) -> str:
    """A passed-on answer in the probes' words: the line delivered it, whatever the API said."""
    if status in (401, 403):
        return AUTH
    if status == 429:
        return RATE_LIMITED
    if status >= 500:
        return HTTP_5XX
    if status >= 400:
        return HTTP_4XX
    return OK


def _event_error(event: Event, data: dict[str, Any] | None) -> str | None:
    """The message of an event that reports an error: Anthropic's and Responses' `error`,
    Responses' `response.failed`, or an OpenAI chunk carrying `error`; None for any other event."""
    data = data or {}
    if event.name != "error" and data.get("type") not in ("error", "response.failed") and not data.get("error"):
        return None
    response = data.get("response")
    if not data.get("error") and isinstance(response, dict) and response.get("error"):
        data = response  # response.failed carries its error in the response
    return relay_text(str(error_text(data) or data.get("message") or event.data), None, 200) or "an error event"


def _has_text(data: dict[str, Any]) -> bool:
    """Whether an event carries answer text (or reasoning, or tool-call arguments): what a user waits for."""
    kind = data.get("type")
    if kind == "content_block_delta" or (isinstance(kind, str) and kind.startswith("response.") and kind.endswith(".delta")):
        return True
    choices = data.get("choices")
    if not isinstance(choices, list):
        return False
    for choice in choices:
        delta = choice.get("delta") if isinstance(choice, dict) else None
        if isinstance(delta, dict) and (delta.get("content") or delta.get("reasoning_content") or delta.get("tool_calls")):
            return True
    return False


def _json_object(text: str) -> dict[str, Any] | None:
    if not text.startswith("{"):
        return None
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):
        return None
    return data if isinstance(data, dict) else None


def _break_off(request: web.BaseRequest) -> None:
    """Close the client's connection without the end of the answer (no last chunk), so its SDK raises."""
    protocol = request.protocol
    if protocol is not None:
        protocol.force_close()


def _error(status: int, message: str, code: str) -> web.Response:
    """The gateway's own answer, shaped so both OpenAI's and Anthropic's SDKs show the message."""
    body = {"type": "error", "error": {"type": "linepicker_gateway_error", "code": code, "message": f"linepicker gateway: {message}"}}
    return web.Response(status=status, text=json.dumps(body), content_type="application/json")


def _allowed_hosts(host: str, port: int) -> frozenset[str]:
    """Host headers a local client sends: the listen address and the loopback names, with the port."""
    names = {"localhost", "127.0.0.1", "[::1]", f"[{host}]" if ":" in host else host}
    hosts = {f"{name.lower()}:{port}" for name in names}
    if port == 80:
        hosts |= {name.lower() for name in names}
    return frozenset(hosts)


def _remote_host_ok(host: str, listen: str, port: int) -> bool:
    """With allow_remote on a wildcard address, any name of this machine with the port: the Origin check still applies."""
    return listen in ("0.0.0.0", "::", "") and host.rpartition(":")[2] == str(port)


def _loopback_origin(origin: str) -> bool:
    try:
        host = urlsplit(origin).hostname
    except ValueError:
        return False
    return bool(host) and is_loopback(host)


def _credentials(headers: Any) -> list[str]:
    """The secrets a request carries, to scrub from any text a line sends back."""
    secrets = []
    for name in CREDENTIAL_HEADERS:
        for value in headers.getall(name, ()):
            secrets.append(value)
            scheme, _, token = value.partition(" ")
            if token:
                secrets.append(token.strip())
    return [secret for secret in secrets if len(secret) >= SECRET_PIECE]


def _scrub(text: str, secrets: list[str]) -> str:
    """Cut every run of SECRET_PIECE or more characters of a credential out of `text`: a hostile line
    may echo the key, or part of it, in a page title or an error message. A URL's password goes too
    (an aiohttp error may name a line's proxy)."""
    text = mask_userinfo(text)[:ERROR_TEXT_CAP]
    if not secrets:
        return text
    hidden = [False] * len(text)
    for secret in secrets:
        pieces = {secret[i : i + SECRET_PIECE] for i in range(len(secret) - SECRET_PIECE + 1)}
        for piece in pieces:
            start = text.find(piece)
            while start >= 0:
                hidden[start : start + SECRET_PIECE] = [True] * SECRET_PIECE
                start = text.find(piece, start + 1)
    out: list[str] = []
    for char, secret in zip(text, hidden):
        if not secret:
            out.append(char)
        elif not out or out[-1] != "\0":
            out.append("\0")
    return "".join(out).replace("\0", "***")


def _is_reset(exc: BaseException) -> bool:
    import aiohttp

    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return True
    return getattr(exc, "errno", None) in (errno.ECONNRESET, errno.EPIPE) or isinstance(exc, (ConnectionResetError, BrokenPipeError))


def _timeout_text(stamps: _Stamps, settings: GatewaySettings) -> str:
    if stamps.sent is None:
        return f"no connection within gateway.connect_timeout ({settings.connect_timeout:g} s)"
    return f"no answer within gateway.first_byte_timeout ({settings.first_byte_timeout:g} s)"


def _ms(start: float | None, end: float | None) -> float | None:
    return None if start is None or end is None else round((end - start) * 1000, 3)
