"""Daemon: memory and CPU over many fast rounds, driven in-process as tests/test_daemon.py does.

20 loopback lines with no delay (bench/delay_server.py, its own process, so its
CPU is not counted), probe.samples=1, `await daemon.full_round()` back to back, in
a child process of its own (RSS is a high-water mark: an earlier bench in the same
process would hide any growth). The policy window is 1 s, about 15 rounds as in a
real daemon (15 minutes at one round a minute); with the default 15 minutes every
round would read every round before it. RSS (VmRSS) is read after round 100 and
then every 500 rounds; CPU is the child's user+system time per round. Target
(issue 5, #6): RSS after 10,000 rounds within 10% of RSS after 100. When 10,000
rounds do not fit in the time budget (LINEPICKER_BENCH_DAEMON_S, default 240 s),
the RSS slope per 1,000 rounds is extrapolated, and the bench says so.

    python bench/run.py daemon
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import Result, Servers, bench_main, rss_kib, scrub_proxies
from configs import write_config

from linepicker.config import load_config
from linepicker.daemon.runner import Daemon
from linepicker.store import Store

LINES = 20
TARGET_ROUNDS = 10_000
WINDOW_S = 1


async def drive(daemon: Daemon, rounds: int, budget_s: float, marks: list[tuple[int, int, float, float]]) -> int:
    """Rounds back to back; marks are (round, rss KiB, cpu s, wall s) from round 100 on."""
    start = time.perf_counter()

    def mark(done: int) -> None:
        times = os.times()
        marks.append((done, rss_kib(), times.user + times.system, time.perf_counter() - start))
        print(f"  round {done}: rss {marks[-1][1]} KiB, {marks[-1][3]:.0f} s", file=sys.stderr, flush=True)

    for done in range(1, rounds + 1):
        await daemon.full_round()
        if done == 100 or (done > 100 and done % 500 == 0):
            mark(done)
        if done > 100 and (done == rounds or time.perf_counter() - start > budget_s):
            if marks[-1][0] != done:
                mark(done)
            return done
    return rounds


def measure(rounds: int, budget_s: float) -> dict[str, object]:
    """The rounds themselves, in a process of their own: RSS is a high-water mark, so no other bench may have raised it."""
    logging.getLogger("linepicker").setLevel(logging.WARNING)
    marks: list[tuple[int, int, float, float]] = []
    with Servers(1) as servers, tempfile.TemporaryDirectory(prefix="lp-bench-daemon-") as tmp:
        urls = {f"l{i}": servers.line_url(0, tag=f"l{i}") for i in range(LINES)}
        # Back to back, a 15-minute window would hold every round ever run; a real daemon's holds
        # 15 rounds (interval 60 s), so the window here is scaled to about as many rounds.
        config = write_config(Path(tmp) / "lines.yaml", urls, policy={"window": WINDOW_S}, timeout=2, samples=1)

        async def main() -> int:
            daemon = Daemon(load_config(config), Store(Path(tmp) / "daemon.db"), None)
            try:
                return await drive(daemon, rounds, budget_s, marks)
            finally:
                daemon.store.close()

        done = asyncio.run(main())
        return {"done": done, "marks": marks, "db_bytes": (Path(tmp) / "daemon.db").stat().st_size}


def run(quick: bool = False) -> Result:
    result = Result("daemon", "python bench/run.py daemon")
    rounds = 120 if quick else TARGET_ROUNDS
    budget = 30.0 if quick else float(os.environ.get("LINEPICKER_BENCH_DAEMON_S", "240"))
    child = subprocess.run([sys.executable, __file__, "--child", str(rounds), str(budget)],
                           stdout=subprocess.PIPE, text=True, check=True)
    measured = json.loads(child.stdout.strip().splitlines()[-1])
    done, marks, db_bytes = measured["done"], measured["marks"], measured["db_bytes"]
    first, last = marks[0], marks[-1]
    slope = (last[1] - first[1]) / max(1, last[0] - first[0]) * 1000  # KiB per 1,000 rounds
    at_target = last[1] + slope * (TARGET_ROUNDS - last[0]) / 1000 if done < TARGET_ROUNDS else last[1]
    growth = at_target / first[1] - 1
    cpu_ms = (last[2] - first[2]) / max(1, last[0] - first[0]) * 1000
    wall_ms = (last[3] - first[3]) / max(1, last[0] - first[0]) * 1000
    result.data.update(rounds=done, marks=marks, rss_slope_kib_per_1000=round(slope, 1), cpu_ms_per_round=round(cpu_ms, 2),
                       wall_ms_per_round=round(wall_ms, 2), db_bytes=db_bytes)
    measured = "measured" if done >= TARGET_ROUNDS else f"extrapolated from {done:,} rounds at {slope:+.0f} KiB per 1,000"
    result.check(
        f"RSS after {TARGET_ROUNDS:,} rounds within 10% of RSS after 100",
        f"{at_target / 1024:.1f} MiB ({growth:+.1%}, {measured})",
        f"RSS after round 100: {first[1] / 1024:.1f} MiB" + "".join(
            f"; after round {m[0]:,}: {m[1] / 1024:.2f} MiB" for m in marks if m[0] == 1000),
        abs(growth) <= 0.10,
    )
    result.check(
        "CPU time per round (20 lines, 1 sample, 0 ms delay)",
        f"{cpu_ms:.1f} ms CPU, {wall_ms:.1f} ms wall per round",
        f"rounds 100..{done:,}; database grew to {db_bytes / 1e6:.1f} MB",
        None,
    )
    return result


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        scrub_proxies()
        print(json.dumps(measure(int(sys.argv[2]), float(sys.argv[3]))), flush=True)
    else:
        bench_main("daemon", run)
