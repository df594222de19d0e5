"""Gateway (issue 13): what going through the gateway costs a client, beside a direct connection to the same line.

One run, three processes on 127.0.0.1: a line (an aiohttp server answering
chat completions, whole or streamed), `linepicker daemon` serving the gateway
in front of it, and this process as the client (aiohttp, one kept-alive
connection per request in flight, as the SDKs do). Every figure has its
reference measured in the same run, interleaved in blocks:

1. added latency of a small non-streaming request: p50 ≤ 1 ms, p99 ≤ 5 ms
   (gateway's quantile minus direct's, 3,000 requests each, one at a time);
2. SSE throughput through the gateway ≥ 80% of direct (events/s read by a
   client that only counts them, so the relay's own cost is laid bare; the
   line writes each event on its own, as relays do), and beside it the same
   with a client that decodes every event, as the SDKs do;
3. 200 concurrent streams through the gateway: no error, every event there,
   and the daemon's RSS (its peak, VmHWM) ≤ 150 MiB;
4. a failover when the chosen line refuses adds ≤ 20 ms: a gateway whose
   first line refuses against one whose first line answers (the gateway core
   in a child process of its own, with its breaker kept shut so that every
   request fails over).

    python bench/gateway.py            # or: python bench/run.py gateway
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import Result, bench_main, clean_env, fmt, print_table, quantile
from configs import isolated_env

COMMAND = "python bench/gateway.py"
KEY = "sk-bench-not-a-real-key"
EVENT = json.dumps({"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1, "model": "gpt-x",
                    "choices": [{"index": 0, "delta": {"content": "token "}, "finish_reason": None}]})
ANSWER = json.dumps({"id": "chatcmpl-bench", "object": "chat.completion", "created": 1, "model": "gpt-x",
                     "choices": [{"index": 0, "message": {"role": "assistant", "content": "hello"}, "finish_reason": "stop"}],
                     "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}}).encode()
REQUEST = json.dumps({"model": "gpt-x", "messages": [{"role": "user", "content": "hi"}]}).encode()


# ------------------------------------------------------------------ child processes


def serve_line() -> None:
    """The line: POST /v1/chat/completions; `?events=N&gap_ms=G` streams N chunks G ms apart, else one small answer."""
    from aiohttp import web

    async def chat(request: web.Request) -> web.StreamResponse:
        await request.read()
        events = int(request.query.get("events", 0))
        if not events:
            return web.Response(body=ANSWER, content_type="application/json")
        gap = float(request.query.get("gap_ms", 0)) / 1000
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        event = f"data: {EVENT}\n\n".encode()
        for _ in range(events):
            await response.write(event)
            if gap:
                await asyncio.sleep(gap)
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_get("/v1/models", lambda request: web.json_response({"object": "list", "data": [{"id": "gpt-x", "object": "model"}]}))
    _run_until_stdin_closes(app)


def serve_gateways(line: str, dead: str) -> None:
    """Two gateway cores: one whose first line refuses (then the line), one with the line alone."""
    from linepicker.config import GatewaySettings, Line, Listen
    from linepicker.daemon.gateway import Gateway

    async def start() -> list[Gateway]:
        settings = GatewaySettings(listen=Listen("127.0.0.1", 0), breaker_failures=1_000_000)
        failing = Gateway(settings, lambda: (Line("dead", dead), Line("line", line)))
        plain = Gateway(settings, lambda: (Line("line", line),))
        for gateway in (failing, plain):
            await gateway.start()
        print(f"PORTS {failing.url} {plain.url}", flush=True)
        return [failing, plain]

    async def main() -> None:
        gateways = await start()
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        for gateway in gateways:
            await gateway.close()

    asyncio.run(main())


def _run_until_stdin_closes(app: object) -> None:
    from aiohttp import web

    async def main() -> None:
        runner = web.AppRunner(app, access_log=None)  # type: ignore[arg-type]
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, backlog=1024)
        await site.start()
        print(f"PORTS http://127.0.0.1:{runner.addresses[0][1]}", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        await runner.cleanup()

    asyncio.run(main())


class Child:
    """A child process of this bench that prints 'PORTS url...' once it listens and ends when its stdin closes."""

    def __init__(self, argv: list[str], env: dict[str, str] | None = None):
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env or clean_env())
        line = self.proc.stdout.readline() if self.proc.stdout else ""
        if not line.startswith("PORTS "):
            self.close()
            raise RuntimeError(f"{argv[1:]} did not start: {line!r} {self.proc.stderr.read() if self.proc.stderr else ''}")
        self.urls = line.split()[1:]

    def close(self) -> None:
        if self.proc.poll() is None:
            if self.proc.stdin:
                self.proc.stdin.close()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class DaemonProcess:
    """`linepicker daemon` serving the gateway in front of the line, as a user runs it."""

    def __init__(self, line: str, home: Path):
        port = free_port()
        config = home / "lines.yaml"
        config.write_text(json.dumps({"probe": {"interval": 600}, "gateway": {"listen": f"127.0.0.1:{port}"},
                                      "lines": [{"name": "line", "url": line}]}))
        self.url = f"http://127.0.0.1:{port}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "linepicker", "daemon", "--config", str(config), "--db", str(home / "lp.db"), "--listen", "off", "--log-level", "warning"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=isolated_env(home),
        )
        deadline = time.monotonic() + 30
        while not port_open(port):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError(f"the daemon did not serve its gateway: {self.proc.stderr.read() if self.proc.stderr else ''}")
            time.sleep(0.05)

    def memory_kib(self) -> tuple[int, int]:
        """(VmRSS now, VmHWM: the peak so far)."""
        fields = {}
        with open(f"/proc/{self.proc.pid}/status") as handle:
            for line in handle:
                name, _, value = line.partition(":")
                if name in ("VmRSS", "VmHWM"):
                    fields[name] = int(value.split()[0])
        return fields["VmRSS"], fields["VmHWM"]

    def close(self) -> str:
        self.proc.terminate()
        _, err = self.proc.communicate(timeout=20)
        return err


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


# ------------------------------------------------------------------ the client


HEADERS = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}


async def latencies(session: object, bases: dict[str, str], count: int, block: int = 100) -> dict[str, list[float]]:
    """Small requests one at a time, `block` to each base in turn, so drift hits both alike."""
    found: dict[str, list[float]] = {name: [] for name in bases}
    for _ in range(count // block):
        for name, base in bases.items():
            for _ in range(block):
                started = time.perf_counter()
                async with session.post(f"{base}/v1/chat/completions", data=REQUEST, headers=HEADERS) as response:  # type: ignore[attr-defined]
                    await response.read()
                    assert response.status == 200, response.status
                found[name].append((time.perf_counter() - started) * 1000)
    return found


async def stream(session: object, base: str, events: int, gap_ms: float = 0, parse: bool = False) -> int:
    """Read one stream as fast as it comes; returns the events it held.

    `parse`: split it into events and decode each one's JSON, as the SDKs do; else only count them in the bytes.
    """
    seen = 0
    rest = b""
    async with session.post(f"{base}/v1/chat/completions?events={events}&gap_ms={gap_ms:g}", data=REQUEST, headers=HEADERS) as response:  # type: ignore[attr-defined]
        assert response.status == 200, response.status
        async for chunk in response.content.iter_any():
            if not parse:
                seen += chunk.count(b"\n\n")
                continue
            *whole, rest = (rest + chunk).split(b"\n\n")
            for event in whole:
                if event.startswith(b"data: {"):
                    json.loads(event[6:])
                seen += 1
    return seen - 1  # [DONE]


async def throughput(session: object, bases: dict[str, str], events: int, rounds: int, parse: bool) -> dict[str, float]:
    """Median events/s of each path, and the median of the gateway/direct ratios of back-to-back pairs:
    on a shared machine a burst of other work lands on one stream of a pair, not on one path for a whole run."""
    rates: dict[str, list[float]] = {name: [] for name in bases}
    for _ in range(rounds):
        for name, base in bases.items():
            started = time.perf_counter()
            got = await stream(session, base, events, parse=parse)
            assert got == events, (name, got)
            rates[name].append(events / (time.perf_counter() - started))
    ratios = [through / direct for direct, through in zip(rates["direct"], rates["gateway"])]
    return {"direct": quantile(rates["direct"], 0.5), "gateway": quantile(rates["gateway"], 0.5), "ratio": quantile(ratios, 0.5)}


def cpu_seconds(pid: int | None = None) -> float:
    """User + system CPU time of a process (this one by default)."""
    if pid is None:
        times = os.times()
        return times.user + times.system
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def cpu_per_event(session: object, line: str, daemon: "DaemonProcess", events: int) -> dict[str, float]:
    """CPU per event of a bare aiohttp reader (this process, direct) and of the daemon passing a stream on."""
    before = cpu_seconds()
    await stream(session, line, events)
    reader = cpu_seconds() - before
    before = cpu_seconds(daemon.proc.pid)
    await stream(session, daemon.url, events)
    relay = cpu_seconds(daemon.proc.pid) - before
    return {"bare_reader": reader / events * 1e6, "gateway": relay / events * 1e6}


async def concurrent(base: str, streams: int, events: int, gap_ms: float) -> tuple[int, int, float]:
    """`streams` streams at once, each on its own connection; (complete, errors, seconds)."""
    import aiohttp

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        started = time.perf_counter()
        results = await asyncio.gather(*(stream(session, base, events, gap_ms) for _ in range(streams)), return_exceptions=True)
        took = time.perf_counter() - started
    complete = sum(1 for r in results if r == events)
    return complete, streams - complete, took


async def measure(line: str, daemon: DaemonProcess, gateways: Child, quick: bool) -> dict:
    import aiohttp

    data: dict = {}
    bases = {"direct": line, "gateway": daemon.url}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as session:
        await latencies(session, bases, 200, block=100)  # warm both paths: pools, caches, the line's first requests
        found = await latencies(session, bases, 400 if quick else 3000)
        data["latency_ms"] = {name: {"p50": quantile(v, 0.5), "p99": quantile(v, 0.99), "n": len(v)} for name, v in found.items()}
        for mode, parse in (("sse_events_per_s", True), ("sse_raw_events_per_s", False)):
            data[mode] = await throughput(session, bases, 1000 if quick else 5000, 2 if quick else 20, parse)
        data["cpu_us_per_event"] = await cpu_per_event(session, line, daemon, 2000 if quick else 40_000)
        failing, plain = gateways.urls
        failover = await latencies(session, {"refused first": failing, "line alone": plain}, 200 if quick else 1000)
        data["failover_ms"] = {name: {"p50": quantile(v, 0.5), "p99": quantile(v, 0.99)} for name, v in failover.items()}
    rss_before, _ = daemon.memory_kib()
    streams, events, gap = (50, 50, 5) if quick else (200, 400, 5)
    direct = await concurrent(line, streams, events, gap)
    through = await concurrent(daemon.url, streams, events, gap)
    rss_after, peak = daemon.memory_kib()
    data["concurrent"] = {"streams": streams, "events": events, "gap_ms": gap, "direct": direct, "gateway": through,
                          "rss_before_kib": rss_before, "rss_after_kib": rss_after, "rss_peak_kib": peak}
    return data


def run(quick: bool = False) -> Result:
    result = Result("gateway", COMMAND)
    with tempfile.TemporaryDirectory(prefix="lp-bench-gateway-") as tmp:
        line_server = Child([sys.executable, __file__, "--serve-line"])
        line = line_server.urls[0]
        daemon = gateways = None
        try:
            daemon = DaemonProcess(line, Path(tmp))
            dead = f"http://127.0.0.1:{free_port()}"
            gateways = Child([sys.executable, __file__, "--serve-gateways", line, dead])
            data = asyncio.run(measure(line, daemon, gateways, quick))
        finally:
            log = daemon.close() if daemon else ""
            if gateways:
                gateways.close()
            line_server.close()
    result.data.update(data)
    if "Traceback" in log:
        result.note(f"the daemon logged a traceback: {log[-500:]}")
    report(result, data)
    return result


def report(result: Result, data: dict) -> None:
    lat = data["latency_ms"]
    added50 = lat["gateway"]["p50"] - lat["direct"]["p50"]
    added99 = lat["gateway"]["p99"] - lat["direct"]["p99"]
    print_table(["path", "p50 ms", "p99 ms", "requests"], [[name, fmt(v["p50"], "", 3), fmt(v["p99"], "", 3), v["n"]] for name, v in lat.items()])
    result.check("added latency, small non-streaming request: p50 ≤ 1 ms", f"+{added50:.3f} ms (gateway {lat['gateway']['p50']:.3f} ms)",
                 f"direct {lat['direct']['p50']:.3f} ms", added50 <= 1.0)
    result.check("added latency, small non-streaming request: p99 ≤ 5 ms", f"+{added99:.3f} ms (gateway {lat['gateway']['p99']:.3f} ms)",
                 f"direct {lat['direct']['p99']:.3f} ms", added99 <= 5.0)
    raw = data["sse_raw_events_per_s"]
    result.check("SSE throughput ≥ 80% of direct (a client that only counts the events in the bytes)",
                 f"{raw['gateway']:,.0f} events/s; {raw['ratio']:.0%} of direct (median of 20 back-to-back pairs)",
                 f"direct {raw['direct']:,.0f} events/s", raw["ratio"] >= 0.8)
    sse = data["sse_events_per_s"]
    result.check("SSE throughput, a client that decodes each event as the SDKs do",
                 f"{sse['gateway']:,.0f} events/s; {sse['ratio']:.0%} of direct", f"direct {sse['direct']:,.0f} events/s", None)
    cpu = data["cpu_us_per_event"]
    result.check("CPU per streamed event: the daemon reading and passing it on",
                 f"{cpu['gateway']:.1f} µs", f"a bare aiohttp client reading it: {cpu['bare_reader']:.1f} µs", None)
    conc = data["concurrent"]
    complete, errors, took = conc["gateway"]
    peak_mib = conc["rss_peak_kib"] / 1024
    result.check(
        f"{conc['streams']} concurrent streams: no error, daemon RSS ≤ 150 MiB",
        f"{complete} complete, {errors} errors in {took:.2f} s; RSS peak {peak_mib:.1f} MiB (idle {conc['rss_before_kib'] / 1024:.1f})",
        f"direct: {conc['direct'][0]} complete, {conc['direct'][1]} errors in {conc['direct'][2]:.2f} s",
        errors == 0 and peak_mib <= 150,
    )
    fail = data["failover_ms"]
    added = fail["refused first"]["p50"] - fail["line alone"]["p50"]
    result.check("failover when the chosen line refuses adds ≤ 20 ms", f"+{added:.3f} ms p50 (p99 {fail['refused first']['p99']:.3f} ms)",
                 f"the line alone through a gateway: p50 {fail['line alone']['p50']:.3f} ms", added <= 20.0)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--serve-line"]:
        serve_line()
    elif sys.argv[1:2] == ["--serve-gateways"]:
        serve_gateways(sys.argv[2], sys.argv[3])
    else:
        bench_main("gateway", run)
