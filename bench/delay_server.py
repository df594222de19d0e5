"""A loopback relay whose delay is in the URL, run as its own process by the benches.

    python bench/delay_server.py [--host 127.0.0.1] [--port 0]

Prints "PORT <n>" on stdout once listening and exits when its stdin closes (so a
crashed bench never leaves it behind) or on SIGTERM.

Routes (anything after the prefix is accepted, so every line can have its own path):
    /d/<ms>/...          sleep <ms> milliseconds, then answer the OpenAI /v1/models JSON
    /hang/...            never answer (until the client goes away)
    /stats               JSON: how late the server's own sleeps were since the last /stats?reset=1
                         (server-side lateness is part of every measured error, client or curl)

It runs in a separate process so that its event loop never competes with the
prober's: the prober's own contention is what the benches measure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import statistics
import sys
import time

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


def make_app(stats: Lateness) -> web.Application:
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

    app = web.Application()
    app.router.add_get("/d/{ms:[0-9.]+}/{rest:.*}", delayed)
    app.router.add_get("/hang/{rest:.*}", hang)
    app.router.add_get("/stats", report)
    return app


async def serve(host: str, port: int) -> None:
    stats = Lateness()
    runner = web.AppRunner(make_app(stats), access_log=None, handler_cancellation=True)
    await runner.setup()
    # A deep accept queue: a round of 1,000 lines connects in a burst, and a SYN
    # dropped from a short queue is retried only after a whole second.
    site = web.TCPSite(runner, host, port, backlog=4096)
    await site.start()
    print(f"PORT {runner.addresses[0][1]}", flush=True)

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
    await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    if not args.host.startswith("127.") and args.host not in ("localhost", "::1"):
        parser.error("the bench server listens on loopback only")
    asyncio.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
