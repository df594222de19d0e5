"""Real misbehaving servers on 127.0.0.1 for the tests: relay lines that are fast, slow,
hanging, blocked, broken or rude, all running in one background event loop."""

from __future__ import annotations

import asyncio
import json
import random
import socket
import ssl
import struct
import threading
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

from aiohttp import web

MODELS = {"object": "list", "data": [{"id": "gpt-4.1-mini", "object": "model", "owned_by": "relay"}]}
AUTH_ERROR = {"error": {"message": "Invalid API key", "type": "invalid_request_error", "code": "invalid_api_key"}}
BLOCK_PAGE = b"<!DOCTYPE html><html><head><title>Access Denied</title></head><body>Blocked in your region</body></html>"
GATEWAY_PAGE = b"<html><head><title>502 Bad Gateway</title></head><body><center>502 Bad Gateway</center></body></html>"


@dataclass
class Behaviour:
    """How one named line answers; tests change it mid-run."""

    mode: str = "ok"  # ok, hang, html502, block, auth, ratelimit, flaky, error503, redirect
    delay_ms: float = 0.0
    key: str | None = None  # for mode auth: the key that is accepted
    redirect_to: str | None = None
    counter: int = 0
    jitter_ms: float = 0.0  # each answer is delay_ms plus or minus up to this much, uniformly
    fail_rate: float = 0.0  # each request fails (503) with this probability
    seed: int = 0  # for jitter and failures: the same seed, the same run
    rng: random.Random = field(default_factory=random.Random)

    def __post_init__(self) -> None:
        self.rng.seed(self.seed)


@dataclass
class Relay:
    """One aiohttp server that plays many lines, each under /line/<name>."""

    behaviours: dict[str, Behaviour] = field(default_factory=lambda: defaultdict(Behaviour))
    requests: dict[str, list[dict[str, str]]] = field(default_factory=lambda: defaultdict(list))
    base: str = ""

    def url(self, name: str, **behaviour: Any) -> str:
        self.behaviours[name] = Behaviour(**behaviour)
        return f"{self.base}/line/{name}"

    def set(self, name: str, **behaviour: Any) -> None:
        self.behaviours[name] = Behaviour(**behaviour)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        self.requests[name].append(dict(request.headers))
        b = self.behaviours[name]
        b.counter += 1
        delay = b.delay_ms + (b.rng.uniform(-b.jitter_ms, b.jitter_ms) if b.jitter_ms else 0.0)
        fails = b.fail_rate and b.rng.random() < b.fail_rate
        if delay > 0:
            await asyncio.sleep(delay / 1000)
        if fails:
            return web.json_response({"error": {"message": "upstream failed at random"}}, status=503)
        if b.mode == "hang":
            await asyncio.sleep(3600)
        if b.mode == "html502":
            return web.Response(status=502, body=GATEWAY_PAGE, content_type="text/html")
        if b.mode == "block":
            return web.Response(status=200, body=BLOCK_PAGE, content_type="text/html")
        if b.mode == "error503":
            return web.json_response({"error": {"message": "upstream down"}}, status=503)
        if b.mode == "ratelimit":
            return web.json_response({"error": {"message": "slow down"}}, status=429)
        if b.mode == "flaky" and b.counter % 2 == 0:
            return web.json_response({"error": {"message": "flaky"}}, status=503)
        if b.mode == "redirect":
            raise web.HTTPFound(b.redirect_to or "/")
        if b.mode == "auth" and request.headers.get("Authorization") != f"Bearer {b.key}":
            return web.json_response(AUTH_ERROR, status=401)
        return web.json_response(MODELS)


class ServerThread:
    """An event loop in a daemon thread, so tests can run the CLI's own asyncio.run beside it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.cleanups: list[Callable[[], Awaitable[None]]] = []

    def run(self, coro: Awaitable[Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=30)  # type: ignore[arg-type]

    def stop(self) -> None:
        for cleanup in reversed(self.cleanups):
            self.run(cleanup())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)

    def start_app(self, app: web.Application, ssl_context: ssl.SSLContext | None = None, host: str = "127.0.0.1") -> int:
        async def start() -> int:
            runner = web.AppRunner(app, handler_cancellation=True)
            await runner.setup()
            site = web.TCPSite(runner, host, 0, ssl_context=ssl_context)
            await site.start()
            self.cleanups.append(runner.cleanup)
            return runner.addresses[0][1]

        return self.run(start())

    def start_relay(self, ssl_context: ssl.SSLContext | None = None) -> Relay:
        relay = Relay()
        app = web.Application()
        app.router.add_get("/line/{name}/v1/models", relay.handle)
        port = self.start_app(app, ssl_context)
        relay.base = f"{'https' if ssl_context else 'http'}://127.0.0.1:{port}"
        return relay

    def start_raw(self, on_connect: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]) -> str:
        """A bare TCP server for answers that are not HTTP at all."""

        async def start() -> int:
            server = await asyncio.start_server(on_connect, "127.0.0.1", 0)

            async def close() -> None:
                server.close()

            self.cleanups.append(close)
            return server.sockets[0].getsockname()[1]

        return f"http://127.0.0.1:{self.run(start())}"


async def send_garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.read(1024)
    writer.write(b"\x00\xff\x13garbage that is not HTTP\r\n\r\n")
    await writer.drain()
    writer.close()


async def reset_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Read the request, then abort with an RST rather than a clean FIN."""
    await reader.read(1024)
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


def refused_url() -> str:
    """A loopback port that nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


# --- Hostile servers (issue 4): raw handlers that misbehave in one precise way each. ---

RawHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
MODELS_BODY = json.dumps(MODELS).encode()


def start_raw_server(
    server: ServerThread, handler: RawHandler, ssl_context: ssl.SSLContext | None = None, backlog: int = 100
) -> str:
    """Like ServerThread.start_raw, with TLS and a listen backlog for many simultaneous connects."""

    async def start() -> int:
        listener = await asyncio.start_server(handler, "127.0.0.1", 0, ssl=ssl_context, backlog=backlog)

        async def close() -> None:
            listener.close()

        server.cleanups.append(close)
        return listener.sockets[0].getsockname()[1]

    return f"{'https' if ssl_context else 'http'}://127.0.0.1:{server.run(start())}"


def never_accepting_url(server: ServerThread) -> str:
    """A socket that listens but never accept()s: the kernel completes the handshake, nobody answers."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)

    async def close() -> None:
        sock.close()

    server.cleanups.append(close)
    return f"http://127.0.0.1:{sock.getsockname()[1]}"


async def read_request(reader: asyncio.StreamReader) -> bytes:
    """Read the request head, so that no reply races the request it answers."""
    try:
        return await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
        return b""


async def hold_until_closed(reader: asyncio.StreamReader) -> None:
    """Keep the connection open until the client gives up, so the client's deadline is what ends it."""
    try:
        while await reader.read(65536):
            pass
    except ConnectionError:
        pass


def head(status: str = "200 OK", version: str = "HTTP/1.1", **fields: str | int) -> bytes:
    """A response head; keyword names become header names (content_type -> Content-Type)."""
    lines = [f"{version} {status}"] + [f"{name.replace('_', '-').title()}: {value}" for name, value in fields.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def replies(raw: bytes, close: str = "fin") -> RawHandler:
    """Answer every request with exactly these bytes, then close with a FIN, or 'hold' the connection open."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        try:
            writer.write(raw)
            await writer.drain()
            if close == "hold":
                await hold_until_closed(reader)
        except ConnectionError:
            pass
        finally:
            writer.close()

    return handler


async def never_answers(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Accepts, reads the request, says nothing."""
    await read_request(reader)
    await hold_until_closed(reader)
    writer.close()


def drips(raw: bytes, interval: float = 1.0) -> RawHandler:
    """Send the answer one byte per interval: every read succeeds, the answer never completes in time."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        try:
            for byte in raw:
                writer.write(bytes([byte]))
                await writer.drain()
                await asyncio.sleep(interval)
        except ConnectionError:
            pass
        finally:
            writer.close()

    return handler


def streams_forever(first: bytes, chunk: bytes, chunked: bool = False) -> RawHandler:
    """Send `first`, then `chunk` again and again (as HTTP chunks if asked) until the client leaves."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        piece = f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n" if chunked else chunk
        try:
            writer.write(first)
            while True:
                writer.write(piece)
                await writer.drain()  # bounded on this side too: waits while the client does not read
        except ConnectionError:
            pass
        finally:
            writer.close()

    return handler


def resets_after(raw: bytes) -> RawHandler:
    """Send part of an answer, then abort the connection with an RST instead of a FIN."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(raw)
        await writer.drain()
        await asyncio.sleep(0.05)  # let the partial body arrive before the RST does
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()

    return handler


def redirects(status: int, location: str) -> RawHandler:
    """Answer with a redirect; a relative location pointing at itself makes a loop."""
    return replies(head(f"{status} Redirect", location=location, content_length=0, connection="close"))


def head_then_drips(raw_head: bytes, body: bytes, interval: float = 1.0) -> RawHandler:
    """Send the head at once, then the body one byte per interval: only a total deadline ends it in time."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        try:
            writer.write(raw_head)
            for byte in body:
                await writer.drain()
                await asyncio.sleep(interval)
                writer.write(bytes([byte]))
        except ConnectionError:
            pass
        finally:
            writer.close()

    return handler


def recording(log: list[bytes], handler: RawHandler) -> RawHandler:
    """Keep the request head each connection sent (to check which headers crossed), then answer as `handler` does."""

    async def wrapper(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await read_request(reader)
        log.append(request)
        replay = asyncio.StreamReader()
        replay.feed_data(request)
        replay.feed_eof()
        await handler(replay, writer)

    return wrapper


def tls_server_context(cert: Any) -> ssl.SSLContext:
    """A server-side context presenting a trustme LeafCert."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(context)
    return context


# --- API lines for the gateway (issue 13): the endpoints Claude Code, Codex and the SDKs call. ---

GATEWAY_MODES = ("ok", "html502", "block", "error_event", "cut", "auth", "ratelimit", "json503", "echo_key_page", "hang")


@dataclass
class ApiRelay:
    """One aiohttp server playing many lines under /line/<name>, each answering chat completions,
    Responses and Messages (stream or not) with text that names the line, or failing as its mode says."""

    modes: dict[str, str] = field(default_factory=lambda: defaultdict(lambda: "ok"))
    requests: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: defaultdict(list))
    base: str = ""
    words: int = 5  # text chunks per streamed answer

    def url(self, name: str, mode: str = "ok") -> str:
        self.modes[name] = mode
        return f"{self.base}/line/{name}"

    async def handle(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        body = await request.read()
        self.requests[name].append({"method": request.method, "path": request.match_info["tail"], "query": request.query_string,
                                    "headers": dict(request.headers), "body": body})
        mode = self.modes[name]
        if mode == "hang":
            await asyncio.sleep(3600)
        if mode == "html502":
            return web.Response(status=502, body=GATEWAY_PAGE, content_type="text/html")
        if mode == "block":
            return web.Response(status=403, body=BLOCK_PAGE, content_type="text/html")
        if mode == "echo_key_page":
            key = request.headers.get("Authorization", "") or request.headers.get("x-api-key", "")
            page = f"<html><head><title>Denied {key} {key[10:20]}</title></head></html>"
            return web.Response(status=502, text=page, content_type="text/html")
        if mode == "auth":
            return web.json_response(AUTH_ERROR, status=401)
        if mode == "ratelimit":
            return web.json_response({"error": {"message": "slow down", "type": "rate_limit_error"}}, status=429)
        if mode == "json503":
            return web.json_response({"error": {"message": "model overloaded", "type": "overloaded"}}, status=503)
        tail = request.match_info["tail"]
        data = json.loads(body) if body else {}
        if request.method == "HEAD" or tail == "":
            return web.Response(text=f"<html>relay home {name}</html>", content_type="text/html")
        if tail == "v1/models":
            return web.json_response(MODELS)
        words = [f"{name}{i}" for i in range(self.words)]
        if not data.get("stream"):
            return web.json_response(_whole_answer(tail, name, " ".join(words)))
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        events = _stream_events(tail, name, words, error=mode == "error_event")
        for n, event in enumerate(events):
            await response.write(event)
            if mode == "cut" and n == 2:
                await asyncio.sleep(0.05)
                request.transport.close()  # the line dies mid-answer: no last chunk, no [DONE]
                return response
            await asyncio.sleep(0.001)
        await response.write_eof()
        return response


def _sse(data: dict[str, Any] | str, event: str | None = None) -> bytes:
    text = data if isinstance(data, str) else json.dumps(data)
    return (f"event: {event}\n" if event else "").encode() + f"data: {text}\n\n".encode()


def _whole_answer(tail: str, name: str, text: str) -> dict[str, Any]:
    if tail == "v1/messages":
        return {"id": f"msg_{name}", "type": "message", "role": "assistant", "model": "claude-x", "stop_reason": "end_turn", "stop_sequence": None,
                "content": [{"type": "text", "text": text}], "usage": {"input_tokens": 3, "output_tokens": 5}}
    if tail == "v1/responses":
        return _response_object(name, text, "completed")
    return {"id": f"chatcmpl-{name}", "object": "chat.completion", "created": 1, "model": "gpt-x",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}}


def _response_object(name: str, text: str, status: str) -> dict[str, Any]:
    output = [{"type": "message", "id": f"msg_{name}", "status": "completed", "role": "assistant",
               "content": [{"type": "output_text", "text": text, "annotations": []}]}] if text else []
    return {"id": f"resp_{name}", "object": "response", "created_at": 1, "status": status, "model": "gpt-x", "output": output,
            "parallel_tool_calls": True, "tool_choice": "auto", "tools": [], "error": None, "incomplete_details": None, "instructions": None,
            "metadata": {}, "temperature": 1.0, "top_p": 1.0,
            "usage": {"input_tokens": 3, "output_tokens": 5, "total_tokens": 8, "input_tokens_details": {"cached_tokens": 0},
                      "output_tokens_details": {"reasoning_tokens": 0}} if status == "completed" else None}


def _stream_events(tail: str, name: str, words: list[str], error: bool) -> list[bytes]:
    """A real stream of each API, or one that opens with that API's error event."""
    if tail == "v1/messages":
        if error:
            return [_sse({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}, "error")]
        return [
            _sse({"type": "message_start", "message": {"id": f"msg_{name}", "type": "message", "role": "assistant", "model": "claude-x", "content": [],
                  "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": 3, "output_tokens": 1}}}, "message_start"),
            _sse({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}, "content_block_start"),
            _sse({"type": "ping"}, "ping"),
            *[_sse({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": word + " "}}, "content_block_delta") for word in words],
            _sse({"type": "content_block_stop", "index": 0}, "content_block_stop"),
            _sse({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None}, "usage": {"output_tokens": len(words)}}, "message_delta"),
            _sse({"type": "message_stop"}, "message_stop"),
        ]
    if tail == "v1/responses":
        if error:
            return [_sse({"type": "error", "code": "server_error", "message": "upstream failed", "param": None, "sequence_number": 0}, "error")]
        created = _response_object(name, "", "in_progress")
        return [
            _sse({"type": "response.created", "response": created, "sequence_number": 0}, "response.created"),
            *[_sse({"type": "response.output_text.delta", "item_id": f"msg_{name}", "output_index": 0, "content_index": 0, "delta": word + " ",
                    "sequence_number": n + 1, "logprobs": []}, "response.output_text.delta") for n, word in enumerate(words)],
            _sse({"type": "response.completed", "response": _response_object(name, " ".join(words) + " ", "completed"),
                  "sequence_number": len(words) + 1}, "response.completed"),
        ]
    if error:
        return [_sse({"error": {"message": "upstream channel failed", "type": "upstream_error", "code": "bad_gateway"}})]
    chunk = {"id": f"chatcmpl-{name}", "object": "chat.completion.chunk", "created": 1, "model": "gpt-x"}
    return [
        _sse({**chunk, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]}),
        *[_sse({**chunk, "choices": [{"index": 0, "delta": {"content": word + " "}, "finish_reason": None}]}) for word in words],
        _sse({**chunk, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}),
        _sse({**chunk, "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": len(words), "total_tokens": 3 + len(words)}}),
        _sse("[DONE]"),
    ]


def start_api_relay(server: ServerThread) -> ApiRelay:
    relay = ApiRelay()
    app = web.Application(client_max_size=2**30)
    app.router.add_route("*", "/line/{name}/{tail:.*}", relay.handle)
    relay.base = f"http://127.0.0.1:{server.start_app(app)}"
    return relay


def held_tls_url(server: ServerThread, context: ssl.SSLContext, hold_ms: float, delay_ms: float = 0.0) -> str:
    """A TLS line that accepts the TCP connection at once but starts the handshake only after
    `hold_ms` (an overloaded TLS terminator, a TLS 1.2 round trip more), then answers the models
    list `delay_ms` after the request: its time to first byte hides what a new connection pays."""

    class Held(asyncio.Protocol):
        def __init__(self) -> None:
            self.request = b""
            self.asked = asyncio.Event()
            self.task: asyncio.Task[None] | None = None

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            assert isinstance(transport, asyncio.Transport)
            transport.pause_reading()  # the ClientHello waits in the socket until the handshake starts
            self.task = asyncio.ensure_future(self.serve(transport))

        def data_received(self, data: bytes) -> None:
            self.request += data
            if b"\r\n\r\n" in self.request:
                self.asked.set()

        async def serve(self, transport: asyncio.Transport) -> None:
            loop = asyncio.get_running_loop()
            try:
                await asyncio.sleep(hold_ms / 1000)
                tls = await loop.start_tls(transport, self, context, server_side=True)
                await self.asked.wait()
                await asyncio.sleep(delay_ms / 1000)
                tls.write(head(content_type="application/json", content_length=len(MODELS_BODY), connection="close") + MODELS_BODY)
                tls.close()
            except (ConnectionError, ssl.SSLError, OSError):
                transport.abort()

    async def start() -> int:
        listener = await asyncio.get_running_loop().create_server(Held, "127.0.0.1", 0)

        async def close() -> None:
            listener.close()

        server.cleanups.append(close)
        return listener.sockets[0].getsockname()[1]

    return f"https://127.0.0.1:{server.run(start())}"

# --- DNS (issue 11 item 16): a resolver of our own on 127.0.0.1 that answers some names and ignores others. ---

DNS_A, DNS_AAAA = 1, 28


class DNSServer(asyncio.DatagramProtocol):
    """Answers A queries for the names in `answers` with their address, AAAA with no records,
    and never answers a name mapped to None (a resolver that has gone silent). Unknown names: NXDOMAIN."""

    def __init__(self, answers: dict[str, str | None]):
        self.answers = {name.lower().rstrip("."): address for name, address in answers.items()}
        self.queries: list[str] = []
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        try:
            name, qtype, end = _dns_question(data)
        except (IndexError, struct.error, UnicodeDecodeError):
            return
        self.queries.append(name)
        if name in self.answers and self.answers[name] is None:
            return  # silent: the client's own deadline is all that ends the lookup
        question = data[12:end]
        known = name in self.answers
        answers = b""
        if known and qtype == DNS_A:
            answers = b"\xc0\x0c" + struct.pack(">HHIH", DNS_A, 1, 5, 4) + socket.inet_aton(self.answers[name])  # type: ignore[arg-type]
        flags = 0x8180 if known else 0x8183  # a response, recursion available; NXDOMAIN for unknown names
        header = struct.pack(">HHHHHH", struct.unpack(">H", data[:2])[0], flags, 1, 1 if answers else 0, 0, 0)
        assert self.transport is not None
        self.transport.sendto(header + question + answers, addr)


def _dns_question(data: bytes) -> tuple[str, int, int]:
    """The query's name, type, and where its question section ends."""
    labels, at = [], 12
    while data[at]:
        labels.append(data[at + 1 : at + 1 + data[at]].decode("ascii"))
        at += 1 + data[at]
    qtype = struct.unpack(">H", data[at + 1 : at + 3])[0]
    return ".".join(labels).lower(), qtype, at + 5


def start_dns_server(server: ServerThread, answers: dict[str, str | None], port: int = 0) -> tuple[DNSServer, int]:
    """A UDP DNS server on 127.0.0.1 (port 0: any free one); returns it and its port."""

    async def start() -> tuple[DNSServer, int]:
        transport, protocol = await asyncio.get_running_loop().create_datagram_endpoint(
            lambda: DNSServer(answers), local_addr=("127.0.0.1", port)
        )

        async def close() -> None:
            transport.close()

        server.cleanups.append(close)
        return protocol, transport.get_extra_info("sockname")[1]

    return server.run(start())
