"""Accuracy under load: one round over 1,000 lines (50 ms each, one sample), and what the concurrency cap costs.

Side by side in one run, against the same delay servers (own processes), interleaved
and repeated (medians over the repeats):
  * linepicker.probe.round.probe_round, as `pick` runs it, at several `probe.concurrency` caps,
    the default among them;
  * a bare aiohttp loop (fresh connection per request, cap 100, request sent -> headers
    timed by aiohttp's own trace hook): the reference for what this machine can do.
Then the other side of the trade: 1,000 lines of which a third never answer, at the
default cap, against the ideal of one timeout.
Targets (issue 5, #2): wall <= 2 s, median |ttfb - 50 ms| <= 5 ms, at the default cap.

    python bench/run.py load
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Awaitable, Callable


from common import Result, Servers, bare_round, bench_main, fmt, median, merged_lateness, print_table, quantile

from linepicker.config import Line, ProbeSettings
from linepicker.probe.outcomes import OK
from linepicker.probe.round import LEASE_S, probe_round

DELAY_MS = 50
CAPS = [25, 50, 100, 200, 500]
BARE_CAP = 100
REPEATS = 3
DEAD_TIMEOUT_S = 2.0


def timed(coro_factory: Callable[[], Awaitable[Any]]) -> tuple[float, Any]:
    start = time.perf_counter()
    value = asyncio.run(coro_factory())
    return time.perf_counter() - start, value


def one_run(servers: Servers, lines: list[Line], kind: str, cap: int) -> dict[str, Any]:
    if kind == "bare aiohttp":
        wall, values = timed(lambda: bare_round([line.url + "/v1/models" for line in lines], cap))
    else:
        settings = ProbeSettings(timeout=5, samples=1, concurrency=cap)
        wall, line_runs = timed(lambda: probe_round(lines, settings, None))
        values = [s.phases.ttfb_ms for r in line_runs for s in r.samples if s.outcome == OK and s.phases.ttfb_ms is not None]
    errors = [v - DELAY_MS for v in values]
    return {"wall_s": wall, "ok": len(values), "median_err_ms": median(errors), "p95_err_ms": quantile(errors, 0.95),
            "server_late_ms": merged_lateness(servers.stats())}


def dead_lines_wall(servers: Servers, count: int, timeout: float) -> tuple[float, int]:
    """A round where every third line never answers: how long the live ones wait behind the dead."""
    lines = [Line(name=f"x{i}", url=servers.hang_url(tag=f"x{i}", index=i) if i % 3 == 0 else servers.line_url(DELAY_MS, tag=f"x{i}", index=i))
             for i in range(count)]
    wall, runs = timed(lambda: probe_round(lines, ProbeSettings(timeout=timeout, samples=1), None))
    return wall, sum(1 for r in runs for s in r.samples if s.outcome == OK)


def run(quick: bool = False) -> Result:
    result = Result("load", "python bench/run.py load")
    count = 60 if quick else 1000
    default_cap = ProbeSettings().concurrency
    caps = sorted({10, default_cap} if quick else {*CAPS, default_cap})
    repeats = 1 if quick else REPEATS
    data: dict[str, list[dict[str, Any]]] = {}
    with Servers(2) as servers:
        lines = [Line(name=f"l{i}", url=servers.line_url(DELAY_MS, tag=f"l{i}", index=i)) for i in range(count)]
        asyncio.run(bare_round([line.url + "/v1/models" for line in lines[:20]], 20))  # warm-up
        servers.stats()
        for rep in range(repeats):
            for kind, cap in [("bare aiohttp", BARE_CAP)] + [("linepicker", cap) for cap in caps]:
                entry = one_run(servers, lines, kind, cap)
                data.setdefault(f"{kind} cap {cap}", []).append(entry)
                print(f"  {rep + 1}/{repeats} {kind} cap {cap}: {entry['wall_s']:.3f} s, median err {fmt(entry['median_err_ms'])} ms", flush=True)
        dead_timeout = 0.5 if quick else DEAD_TIMEOUT_S
        dead_wall, dead_ok = dead_lines_wall(servers, count, dead_timeout)
        print(f"  a third dead, timeout {dead_timeout:g} s, cap {default_cap}: {dead_wall:.3f} s", flush=True)

    summary = {key: {k: median(e[k] for e in entries) for k in entries[0]} for key, entries in data.items()}
    rows = [[key.rsplit(" cap ", 1)[0] + (" (default)" if key == f"linepicker cap {default_cap}" else ""), key.rsplit(" ", 1)[1],
             f"{s['wall_s']:.3f}", f"{s['ok']:.0f}/{count}", fmt(s["median_err_ms"]), fmt(s["p95_err_ms"]), fmt(s["server_late_ms"], digits=3)]
            for key, s in summary.items()]
    print(f"\n  medians over {repeats} interleaved repeats:")
    print_table(["client", "cap", "wall s", "ok", "median err ms", "p95 err ms", "server late ms"], rows)
    result.data.update(lines=count, delay_ms=DELAY_MS, repeats=repeats, default_cap=default_cap, runs=data, medians=summary,
                       dead_third={"timeout_s": dead_timeout, "wall_s": dead_wall, "ok": dead_ok, "live": count - len(range(0, count, 3))})
    chosen, bare = summary[f"linepicker cap {default_cap}"], summary[f"bare aiohttp cap {BARE_CAP}"]
    result.check(
        f"one round over {count} lines, one sample, <= 2 s wall (default cap {default_cap})",
        f"{chosen['wall_s']:.3f} s",
        f"bare aiohttp cap {BARE_CAP}: {bare['wall_s']:.3f} s",
        chosen["wall_s"] <= 2.0 and chosen["ok"] == count,
    )
    result.check(
        f"median |ttfb - {DELAY_MS} ms| <= 5 ms (default cap {default_cap})",
        f"{fmt(chosen['median_err_ms'], ' ms')} (p95 {fmt(chosen['p95_err_ms'], ' ms')})",
        f"bare aiohttp cap {BARE_CAP}: {fmt(bare['median_err_ms'], ' ms')} (p95 {fmt(bare['p95_err_ms'], ' ms')})",
        chosen["median_err_ms"] is not None and abs(chosen["median_err_ms"]) <= 5.0,
    )
    result.check(
        f"{count} lines, a third never answer, timeout {dead_timeout:g} s (default cap {default_cap})",
        f"{dead_wall:.3f} s, {dead_ok} live lines ok",
        f"one timeout, {dead_timeout:g} s: dead lines give their place back after {LEASE_S:g} s",
        None,
    )
    return result


if __name__ == "__main__":
    bench_main("load", run)
