"""Probe overhead (issue 12, #6): CPU per sample and time to first byte at 500 concurrent TLS lines,
side by side with a bare aiohttp loop doing the same fresh-connection TLS requests.

    python bench/run.py overhead

500 lines at 20 ms on the TLS listeners of two delay servers (their own processes),
one sample each, interleaved and repeated (medians over the repeats):
  * linepicker: probe.round.probe_round as `pick` runs it, default probe.concurrency;
  * bare aiohttp: one session, a fresh connection per request (force_close, no DNS
    cache), the same TLS context, request sent -> response headers timed by aiohttp's
    own trace hook; at the same concurrency cap as linepicker, and with all 500 at once.
CPU per sample = this process's CPU time over the round / samples. A profile of one
linepicker round is printed (the heaviest functions) so an excess can be traced.
Targets: CPU per sample <= 1.2x the bare loop's at the same cap; median ttfb at most
2 ms above the bare loop's (the prober's own overhead; lower is not an overhead).
"""

from __future__ import annotations

import asyncio
import cProfile
import io
import os
import pstats
import ssl
import tempfile
import time
from pathlib import Path
from typing import Any


from common import Result, Servers, bare_round, bench_main, fmt, median, print_table, quantile

from linepicker.config import Line, ProbeSettings
from linepicker.probe.outcomes import OK
from linepicker.probe.round import probe_round

DELAY_MS = 20
LINES = 500
REPEATS = 5


def one_run(kind: str, lines: list[Line], context: ssl.SSLContext, cap: int, profile: cProfile.Profile | None = None) -> dict[str, Any]:
    cpu, wall = time.process_time(), time.perf_counter()
    if kind == "bare aiohttp":
        values = asyncio.run(bare_round([line.url + "/v1/models" for line in lines], cap, context))
    else:
        settings = ProbeSettings(timeout=5, samples=1, concurrency=cap)
        if profile:
            profile.enable()
        runs = asyncio.run(probe_round(lines, settings, None))
        if profile:
            profile.disable()
        values = [s.phases.ttfb_ms for r in runs for s in r.samples if s.outcome == OK and s.phases.ttfb_ms is not None]
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    return {"ok": len(values), "cpu_ms_per_sample": cpu * 1000 / max(1, len(values)), "wall_s": wall,
            "ttfb_p50_ms": median(values), "ttfb_p90_ms": quantile(values, 0.9)}


def run(quick: bool = False) -> Result:
    import trustme

    result = Result("overhead", "python bench/run.py overhead")
    count = 40 if quick else LINES
    cap = ProbeSettings().concurrency
    repeats = 1 if quick else REPEATS
    data: dict[str, list[dict[str, Any]]] = {}
    profile = cProfile.Profile()
    with tempfile.TemporaryDirectory(prefix="lp-overhead-") as tmp:
        ca = trustme.CA()
        leaf = ca.issue_cert("127.0.0.1")
        cert, key, ca_file = Path(tmp) / "cert.pem", Path(tmp) / "key.pem", Path(tmp) / "ca.pem"
        leaf.private_key_pem.write_to_path(str(key))
        cert.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
        ca.cert_pem.write_to_path(str(ca_file))
        os.environ["SSL_CERT_FILE"] = str(ca_file)
        context = ssl.create_default_context(cafile=str(ca_file))
        context.set_alpn_protocols(["http/1.1"])
        with Servers(2, tls=(str(cert), str(key))) as servers:
            lines = [Line(name=f"l{i}", url=servers.tagged_url(f"l{i}", "tls", index=i)) for i in range(count)]
            for i in range(count):
                servers.control(f"l{i}", index=i, delay_ms=DELAY_MS)
            for kind in ("bare aiohttp", "linepicker"):  # warm-up: imports, TLS contexts, the servers' first handshakes
                one_run(kind, lines[:50], context, cap)
            plan = [("bare aiohttp", cap), ("linepicker", cap), ("bare aiohttp", count)]
            for rep in range(repeats):
                for kind, limit in plan:
                    entry = one_run(kind, lines, context, limit, profile if kind == "linepicker" and rep == repeats - 1 else None)
                    data.setdefault(f"{kind} cap {limit}", []).append(entry)
                    print(f"  {rep + 1}/{repeats} {kind} cap {limit}: {entry['cpu_ms_per_sample']:.3f} ms CPU/sample, "
                          f"ttfb p50 {fmt(entry['ttfb_p50_ms'])} ms, {entry['ok']}/{count} ok, {entry['wall_s']:.2f} s", flush=True)
    summary = {key: {k: median(e[k] for e in entries) for k in entries[0]} for key, entries in data.items()}
    print_table(
        ["client", "CPU ms/sample", "ttfb p50 ms", "ttfb p90 ms", "ok", "wall s"],
        [[key, fmt(s["cpu_ms_per_sample"], digits=3), fmt(s["ttfb_p50_ms"]), fmt(s["ttfb_p90_ms"]), f"{s['ok']:.0f}", fmt(s["wall_s"])]
         for key, s in summary.items()],
    )
    text = io.StringIO()
    pstats.Stats(profile, stream=text).sort_stats("tottime").print_stats(15)
    print("\n  linepicker round, heaviest functions by own time:\n" + "\n".join("  " + line for line in text.getvalue().splitlines()[:40]))
    lp, bare, all_at_once = summary[f"linepicker cap {cap}"], summary[f"bare aiohttp cap {cap}"], summary[f"bare aiohttp cap {count}"]
    result.data.update(lines=count, delay_ms=DELAY_MS, cap=cap, repeats=repeats, runs=data, medians=summary)
    ratio = lp["cpu_ms_per_sample"] / bare["cpu_ms_per_sample"]
    result.check(
        f"CPU per sample <= 1.2x a bare aiohttp loop ({count} TLS lines, cap {cap})",
        f"{lp['cpu_ms_per_sample']:.3f} ms = {ratio:.2f}x",
        f"bare aiohttp cap {cap}: {bare['cpu_ms_per_sample']:.3f} ms; all {count} at once: {all_at_once['cpu_ms_per_sample']:.3f} ms",
        ratio <= 1.2,
    )
    gap = lp["ttfb_p50_ms"] - bare["ttfb_p50_ms"]
    result.check(
        f"median ttfb at most 2 ms above the bare loop's ({count} lines at {DELAY_MS} ms)",
        f"{fmt(lp['ttfb_p50_ms'], ' ms')} ({gap:+.2f} ms)",
        f"bare aiohttp cap {cap}: {fmt(bare['ttfb_p50_ms'], ' ms')}; all {count} at once: {fmt(all_at_once['ttfb_p50_ms'], ' ms')}",
        gap <= 2.0,
    )
    return result


if __name__ == "__main__":
    bench_main("overhead", run)
