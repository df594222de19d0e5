"""A loopback relay whose delay is in the URL, run as its own process by the benches.

    python bench/delay_server.py [--host 127.0.0.1] [--port 0] [--tls CERT KEY [--held-ms MS]]

Prints "PORT <n>" on stdout once listening (with --tls also "TLSPORT <n>", the
same routes over TLS, and with --held-ms "HELDPORT <n>", a TLS listener that
starts each handshake only MS after accepting the connection) and exits when
its stdin closes (so a crashed bench never leaves it behind) or on SIGTERM.

Routes (anything after the prefix is accepted, so every line can have its own path):
    /d/<ms>/...          sleep <ms> milliseconds, then answer the OpenAI /v1/models JSON
    /hang/...            never answer (until the client goes away)
    /line/<tag>/...      answer as /control/<tag> last said (default: at once)
    POST /control/<tag>  JSON {"delay_ms", "jitter_ms", "fail_rate", "spike_rate", "spike_ms", "hang", "seed"}:
                         answer after delay_ms +- jitter_ms (uniform), plus spike_ms with probability
                         spike_rate (a lost SYN costs a fresh connection 1 s), fail with a 503 with
                         probability fail_rate, or never (hang); draws come from random.Random(seed)
    /stats               JSON: how late the server's own sleeps were since the last /stats?reset=1
                         (server-side lateness is part of every measured error, client or curl)

It runs in a separate process so that its event loop never competes with the
prober's: the prober's own contention is what the benches measure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import signal
import ssl
import statistics
import sys
import time
from dataclasses import dataclass, field

from aiohttp import web

MODELS = json.dumps({"object": "list", "data": [{"id": "gpt-4.1-mini", "object": "model", "owned_by": "relay"}]}).encode()


class Lateness:
    def __init__(self) -> None:
        self.values: list[float] = []
        self.served = 0

    def summary(self) -> dict:
        values = sorted(self.values)
        if not values:
            return {"served": self.served, "late_p50_ms": None, "late_p95_ms": None, "late_max_ms": None}
        return {
            "served": self.served,
            "late_p50_ms": round(statistics.median(values), 3),
            "late_p95_ms": round(values[int(0.95 * (len(values) - 1))], 3),
            "late_max_ms": round(values[-1], 3),
        }


@dataclass
class Behaviour:
    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    fail_rate: float = 0.0
    spike_rate: float = 0.0
    spike_ms: float = 0.0
    hang: bool = False
    seed: int = 0
    rng: random.Random = field(default_factory=random.Random)

    def __post_init__(self) -> None:
        self.rng.seed(self.seed)

    async def answer(self) -> int:
        """Wait as told; the HTTP status to answer with (0: never answer)."""
        if self.hang:
            await asyncio.sleep(3600)
            return 0
        delay = self.delay_ms + (self.rng.uniform(-self.jitter_ms, self.jitter_ms) if self.jitter_ms else 0.0)
        if self.spike_rate and self.rng.random() < self.spike_rate:
            delay += self.spike_ms
        failed = self.fail_rate and self.rng.random() < self.fail_rate
        if delay > 0:
            await asyncio.sleep(delay / 1000)
        return 503 if failed else 200


def answer_bytes(status: int) -> bytes:
    body = MODELS if status == 200 else b'{"error": {"message": "failed at random"}}'
    head = f"HTTP/1.1 {status} {'OK' if status == 200 else 'Service Unavailable'}\r\nContent-Type: application/json\r\n"
    return (head + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body


def make_app(stats: Lateness, lines: dict[str, Behaviour] | None = None) -> web.Application:
    lines = {} if lines is None else lines
    async def delayed(request: web.Request) -> web.Response:
        ms = float(request.match_info["ms"])
        start = time.perf_counter()
        if ms > 0:
            await asyncio.sleep(ms / 1000)
        stats.values.append((time.perf_counter() - start) * 1000 - ms)
        stats.served += 1
        return web.Response(body=MODELS, content_type="application/json")

    async def hang(request: web.Request) -> web.Response:
        await asyncio.sleep(3600)
        return web.Response(status=504)

    async def report(request: web.Request) -> web.Response:
        body = stats.summary()
        if request.query.get("reset"):
            stats.values.clear()
            stats.served = 0
        return web.json_response(body)

    async def line(request: web.Request) -> web.Response:
        status = await lines.setdefault(request.match_info["tag"], Behaviour()).answer()
        return web.Response(body=answer_bytes(status).split(b"\r\n\r\n", 1)[1], status=status, content_type="application/json")

    async def control(request: web.Request) -> web.Response:
        lines[request.match_info["tag"]] = Behaviour(**await request.json())
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_get("/line/{tag}/{rest:.*}", line)
    app.router.add_post("/control/{tag}", control)
    app.router.add_get("/d/{ms:[0-9.]+}/{rest:.*}", delayed)
    app.router.add_get("/hang/{rest:.*}", hang)
    app.router.add_get("/stats", report)
    return app


def held_tls_protocol(context: ssl.SSLContext, held_ms: float, lines: dict[str, Behaviour]) -> type[asyncio.Protocol]:
    """A TLS line whose handshake starts `held_ms` after the TCP connection is accepted, then answers
    GET /line/<tag>/... as that tag's behaviour says: what every new connection to it pays."""

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
            try:
                await asyncio.sleep(held_ms / 1000)
                tls = await asyncio.get_running_loop().start_tls(transport, self, context, server_side=True)
                await self.asked.wait()
                parts = self.request.split(b" ", 2)[1].decode("latin-1").split("/") if b" " in self.request else []
                tag = parts[2] if len(parts) > 2 and parts[1] == "line" else ""
                status = await lines.setdefault(tag, Behaviour()).answer()
                if status:
                    tls.write(answer_bytes(status))
                tls.close()
            except (ConnectionError, ssl.SSLError, OSError):
                transport.abort()

    return Held


async def serve(host: str, port: int, tls: tuple[str, str] | None = None, held_ms: float | None = None) -> None:
    stats = Lateness()
    lines: dict[str, Behaviour] = {}
    runner = web.AppRunner(make_app(stats, lines), access_log=None, handler_cancellation=True)
    await runner.setup()
    # A deep accept queue: a round of 1,000 lines connects in a burst, and a SYN
    # dropped from a short queue is retried only after a whole second.
    site = web.TCPSite(runner, host, port, backlog=4096)
    await site.start()
    print(f"PORT {runner.addresses[0][1]}", flush=True)
    listeners = []
    if tls:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(*tls)
        tls_site = web.TCPSite(runner, host, 0, backlog=4096, ssl_context=context)
        await tls_site.start()
        print(f"TLSPORT {tls_site._server.sockets[0].getsockname()[1]}", flush=True)  # type: ignore[union-attr]
        if held_ms is not None:
            held = await asyncio.get_running_loop().create_server(held_tls_protocol(context, held_ms, lines), host, 0, backlog=4096)
            listeners.append(held)
            print(f"HELDPORT {held.sockets[0].getsockname()[1]}", flush=True)

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)

    def stdin_ready() -> None:
        if not sys.stdin.buffer.raw.read(4096):  # EOF: the bench that started us is gone
            stop.set()

    try:
        loop.add_reader(sys.stdin.fileno(), stdin_ready)
    except (OSError, ValueError, PermissionError):
        pass  # stdin is not pollable (a regular file): rely on signals
    await stop.wait()
    for listener in listeners:
        listener.close()
    await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--tls", nargs=2, metavar=("CERT", "KEY"), help="also serve the routes over TLS with this certificate chain and key")
    parser.add_argument("--held-ms", type=float, help="with --tls: also a TLS listener that holds each handshake back this long")
    args = parser.parse_args()
    if not args.host.startswith("127.") and args.host not in ("localhost", "::1"):
        parser.error("the bench server listens on loopback only")
    asyncio.run(serve(args.host, args.port, tuple(args.tls) if args.tls else None, args.held_ms))


if __name__ == "__main__":
    main()
