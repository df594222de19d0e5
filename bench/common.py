"""Shared pieces of the benches: delay servers in their own processes, figures, verdicts."""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Sequence

if TYPE_CHECKING:
    import ssl

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
# The real CLI in a child process that writes its own peak RSS (VmHWM, KiB) to $BENCH_HWM_FILE as it exits.
MEASURED_CLI = r"""
import atexit, os, sys
def report():
    with open("/proc/self/status") as status, open(os.environ["BENCH_HWM_FILE"], "w") as out:
        out.write(next(line.split()[1] for line in status if line.startswith("VmHWM:")))
atexit.register(report)
sys.argv[0] = "linepicker"
from linepicker.cli import main
main()
"""
PROXY_VARS = ["HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "all_proxy", "no_proxy"]

if str(ROOT) not in sys.path:  # run from a checkout without the package installed
    sys.path.insert(0, str(ROOT))


def clean_env(**extra: str) -> dict[str, str]:
    """The environment for child processes: no proxy (loopback only), no user config or key."""
    env = {k: v for k, v in os.environ.items() if k not in PROXY_VARS and not k.startswith("LINEPICKER_")}
    env.pop("OPENAI_API_KEY", None)
    env.pop("PYTHONPROFILEIMPORTTIME", None)
    env.update(extra)
    return env


def scrub_proxies() -> None:
    """This process too: the prober must never be sent through a proxy off the machine."""
    for name in PROXY_VARS:
        os.environ.pop(name, None)


def linepicker_exe() -> str:
    """The console script next to this interpreter (the venv's), else the one on PATH."""
    here = Path(sys.executable).parent / "linepicker"
    if here.exists():
        return str(here)
    found = shutil.which("linepicker")
    if not found:
        raise SystemExit("linepicker console script not found: activate the venv (. /work/.venv/bin/activate)")
    return found


class Servers:
    """N delay servers (bench/delay_server.py), each its own process on its own dynamic port."""

    def __init__(self, count: int = 1, tls: tuple[str, str] | None = None, held_ms: float | None = None):
        self.procs: list[subprocess.Popen] = []
        self.ports: list[int] = []
        self.tls_ports: list[int] = []
        self.held_ports: list[int] = []
        extra = [*(["--tls", *tls] if tls else []), *(["--held-ms", f"{held_ms:g}"] if tls and held_ms is not None else [])]
        for _ in range(count):
            proc = subprocess.Popen(
                [sys.executable, str(BENCH_DIR / "delay_server.py"), *extra],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                env=clean_env(),
                text=True,
            )
            self.procs.append(proc)
        for proc in self.procs:
            for prefix, ports in (("PORT ", self.ports), ("TLSPORT ", self.tls_ports), ("HELDPORT ", self.held_ports)):
                if prefix != "PORT " and (not tls or (prefix == "HELDPORT " and held_ms is None)):
                    continue
                line = proc.stdout.readline() if proc.stdout else ""
                if not line.startswith(prefix):
                    self.close()
                    raise RuntimeError(f"delay server did not start: {line!r}")
                ports.append(int(line.split()[1]))

    def tagged_url(self, tag: str, listener: str = "http", index: int = 0) -> str:
        """A line under /line/<tag>, behaving as control() says: plain http, "tls", or "held" (TLS held back)."""
        ports = {"http": self.ports, "tls": self.tls_ports, "held": self.held_ports}[listener]
        scheme = "http" if listener == "http" else "https"
        return f"{scheme}://127.0.0.1:{ports[index % len(ports)]}/line/{tag}"

    def control(self, tag: str, index: int = 0, **behaviour: Any) -> None:
        """Set how /line/<tag> answers from now on (see bench/delay_server.py)."""
        request = urllib.request.Request(
            f"{self.base(index)}/control/{tag}", data=json.dumps(behaviour).encode(), headers={"Content-Type": "application/json"}
        )
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(request, timeout=10) as response:
            response.read()

    def base(self, index: int = 0) -> str:
        return f"http://127.0.0.1:{self.ports[index % len(self.ports)]}"

    def line_url(self, delay_ms: float, tag: str = "x", index: int = 0) -> str:
        """A line's BaseURL: linepicker appends /v1/models to it."""
        return f"{self.base(index)}/d/{delay_ms:g}/{tag}"

    def hang_url(self, tag: str = "x", index: int = 0) -> str:
        return f"{self.base(index)}/hang/{tag}"

    def stats(self, reset: bool = True) -> list[dict]:
        """Server-side lateness of the sleeps, per server process (loopback only)."""
        out = []
        for port in self.ports:
            url = f"http://127.0.0.1:{port}/stats" + ("?reset=1" if reset else "")
            opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
            with opener.open(url, timeout=10) as response:
                out.append(json.loads(response.read()))
        return out

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                try:
                    if proc.stdin:
                        proc.stdin.close()
                except OSError:
                    pass
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def __enter__(self) -> "Servers":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def merged_lateness(stats: Sequence[dict]) -> float | None:
    """A served-weighted mean of the per-process median lateness (rough, for diagnosis only)."""
    pairs = [(s["late_p50_ms"], s["served"]) for s in stats if s.get("late_p50_ms") is not None]
    total = sum(n for _, n in pairs)
    return round(sum(v * n for v, n in pairs) / total, 3) if total else None


def median(values: Iterable[float]) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def quantile(values: Iterable[float], q: float) -> float | None:
    values = sorted(v for v in values if v is not None)
    if not values:
        return None
    pos = (len(values) - 1) * q
    low = int(pos)
    high = min(low + 1, len(values) - 1)
    return values[low] + (values[high] - values[low]) * (pos - low)


def fmt(value: float | None, unit: str = "", digits: int = 2) -> str:
    if value is None:
        return "n/a"
    return f"{value:.{digits}f}{unit}"


def timed_run(argv: Sequence[str], env: dict[str, str] | None = None, cwd: str | None = None, check: bool = False) -> tuple[float, subprocess.CompletedProcess]:
    start = time.perf_counter()
    proc = subprocess.run(list(argv), capture_output=True, text=True, env=env or clean_env(), cwd=cwd)
    wall = time.perf_counter() - start
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {proc.returncode}: {proc.stderr.strip()[:500]}")
    return wall, proc


def rss_kib() -> int:
    """Resident set size of this process now (not the peak)."""
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


@dataclass
class Check:
    target: str
    figure: str
    reference: str
    passed: bool | None  # None: informational


@dataclass
class Result:
    name: str
    command: str
    checks: list[Check] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def check(self, target: str, figure: str, reference: str, passed: bool | None) -> None:
        self.checks.append(Check(target, figure, reference, passed))

    def note(self, text: str) -> None:
        self.notes.append(text)
        print(f"  note: {text}", flush=True)

    def print_summary(self) -> None:
        print(f"\n== {self.name}: results ==")
        for c in self.checks:
            verdict = {True: "PASS", False: "FAIL", None: "info"}[c.passed]
            print(f"  [{verdict}] {c.target}\n         figure:    {c.figure}\n         reference: {c.reference}")
        print(f"  reproduce: {self.command}", flush=True)

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "command": self.command,
            "checks": [c.__dict__ for c in self.checks],
            "data": self.data,
            "notes": self.notes,
        }


def bench_main(name: str, run: Any) -> None:
    """Standard entry point: `python bench/bench_NAME.py [--quick] [--json FILE]`."""
    import argparse

    parser = argparse.ArgumentParser(description=f"linepicker bench: {name}")
    parser.add_argument("--quick", action="store_true", help="a miniature run (smoke test), no verdicts worth reading")
    parser.add_argument("--json", help="also write the result as JSON to this file")
    args = parser.parse_args()
    scrub_proxies()
    started = time.perf_counter()
    result: Result = run(quick=args.quick)
    result.data["bench_wall_s"] = round(time.perf_counter() - started, 2)
    result.print_summary()
    print(f"  bench took {result.data['bench_wall_s']:.1f} s", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(result.to_json(), indent=2, default=str))


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) if rows else len(str(h)) for i, h in enumerate(headers)]
    line = "  ".join(str(h).rjust(w) for h, w in zip(headers, widths))
    print("  " + line)
    print("  " + "  ".join("-" * w for w in widths))
    for row in rows:
        print("  " + "  ".join(str(v).rjust(w) for v, w in zip(row, widths)), flush=True)


async def bare_round(urls: list[str], cap: int, context: "ssl.SSLContext | None" = None) -> list[float]:
    """The reference every probe is held against: one GET per URL on a fresh connection (TLS with
    `context`), at most `cap` at once, nothing else; request sent -> headers, in ms."""
    import asyncio

    import aiohttp

    sent: dict[int, float] = {}

    async def on_sent(session: object, ctx: object, params: object) -> None:
        sent[id(ctx.trace_request_ctx)] = time.perf_counter()  # type: ignore[attr-defined]

    trace = aiohttp.TraceConfig()
    trace.on_request_headers_sent.append(on_sent)
    limit = asyncio.Semaphore(cap)
    connector = aiohttp.TCPConnector(force_close=True, limit=0, use_dns_cache=False, ssl=context if context is not None else True)
    out: list[float] = []
    async with aiohttp.ClientSession(connector=connector, trace_configs=[trace], trust_env=False) as session:

        async def one(url: str) -> None:
            key = object()
            async with limit:
                async with session.get(url, trace_request_ctx=key) as response:
                    out.append((time.perf_counter() - sent[id(key)]) * 1000)
                    await response.read()

        await asyncio.gather(*(one(u) for u in urls))
    return out
