"""Accuracy: linepicker's p50 time to first byte against the injected delay, next to curl's.

Lines with server-side delays of 20..300 ms (bench/delay_server.py, its own process).
In interleaved blocks, the same lines are measured by
  * linepicker.probe.round.probe_round, as `pick` runs it: all lines at once, samples one after another;
  * curl, one process per sample, one sample at a time:
    time_starttransfer - time_pretransfer (request sent -> first byte), the reference;
  * curl with the lines at once (a thread per line, its samples one after another), the
    same load on the server and the CPU as linepicker's round: what concurrency itself costs;
  * probe_round with concurrency=1 (diagnostic: the probe's own overhead without other lines).
Per line: error = p50 - injected delay. Targets (issue 5, #1): median |error| <= 2 ms,
and never more than 1 ms worse than curl on the same line.

    python bench/run.py accuracy
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor

from common import Result, Servers, bench_main, clean_env, fmt, median, merged_lateness, print_table

from linepicker.config import Line, ProbeSettings
from linepicker.probe.outcomes import OK
from linepicker.probe.round import probe_round

DELAYS = [20, 30, 50, 75, 100, 150, 200, 250, 300]
SAMPLES = 3  # per line per block, as the default `samples: 3`
BLOCKS = 8


def curl_ttfb(url: str) -> float | None:
    proc = subprocess.run(
        ["curl", "-s", "-o", "/dev/null", "--noproxy", "*", "--max-time", "10",
         "-w", "%{time_pretransfer} %{time_starttransfer} %{http_code}", url],
        capture_output=True, text=True, env=clean_env(),
    )
    try:
        pre, start, code = proc.stdout.split()
    except ValueError:
        return None
    if code != "200":
        return None
    return (float(start) - float(pre)) * 1000


def curl_at_once(lines: list[Line]) -> dict[str, list[float]]:
    def one_line(line: Line) -> list[float]:
        values = (curl_ttfb(line.url + "/v1/models") for _ in range(SAMPLES))
        return [value for value in values if value is not None]

    with ThreadPoolExecutor(len(lines)) as pool:
        return dict(zip((line.name for line in lines), pool.map(one_line, lines)))


def lp_block(lines: list[Line], concurrency: int) -> dict[str, list[float]]:
    settings = ProbeSettings(timeout=5, samples=SAMPLES, concurrency=concurrency)
    runs = asyncio.run(probe_round(lines, settings, None))
    out: dict[str, list[float]] = {}
    for run in runs:
        out[run.line.name] = [s.phases.ttfb_ms for s in run.samples if s.outcome == OK and s.phases.ttfb_ms is not None]
    return out


def run(quick: bool = False) -> Result:
    result = Result("accuracy", "python bench/run.py accuracy")
    delays = [20, 50] if quick else DELAYS
    blocks = 1 if quick else BLOCKS
    have_curl = shutil.which("curl") is not None
    if not have_curl:
        result.note("curl is not installed: the curl reference is missing (apt-get install curl)")

    with Servers(1) as servers:
        lines = [Line(name=f"d{d}", url=servers.line_url(d, tag=f"line{d}")) for d in delays]
        by_delay = {line.name: d for line, d in zip(lines, delays)}
        lp: dict[str, list[float]] = {l.name: [] for l in lines}
        seq: dict[str, list[float]] = {l.name: [] for l in lines}
        curl: dict[str, list[float]] = {l.name: [] for l in lines}
        para: dict[str, list[float]] = {l.name: [] for l in lines}
        late = {"lp": [], "curl": [], "para": [], "seq": []}
        # Warm-up: first connections, first imports inside aiohttp, the server's first requests.
        lp_block(lines[:2], 64)
        servers.stats(reset=True)
        for block in range(blocks):
            print(f"  block {block + 1}/{blocks}: linepicker (all lines at once)", flush=True)
            for name, values in lp_block(lines, 64).items():
                lp[name] += values
            late["lp"].append(merged_lateness(servers.stats()))
            if have_curl:
                print(f"  block {block + 1}/{blocks}: curl (one sample at a time)", flush=True)
                for _ in range(SAMPLES):
                    for line in lines:
                        value = curl_ttfb(line.url + "/v1/models")
                        if value is not None:
                            curl[line.name].append(value)
                late["curl"].append(merged_lateness(servers.stats()))
                print(f"  block {block + 1}/{blocks}: curl (all lines at once)", flush=True)
                for name, values in curl_at_once(lines).items():
                    para[name] += values
                late["para"].append(merged_lateness(servers.stats()))
            print(f"  block {block + 1}/{blocks}: linepicker, concurrency=1 (diagnostic)", flush=True)
            for name, values in lp_block(lines, 1).items():
                seq[name] += values
            late["seq"].append(merged_lateness(servers.stats()))

    rows = []
    lp_abs, curl_abs, seq_abs, worse = [], [], [], []
    for line in lines:
        d = by_delay[line.name]
        e_lp = median(lp[line.name]) - d if lp[line.name] else None
        e_curl = median(curl[line.name]) - d if curl[line.name] else None
        e_seq = median(seq[line.name]) - d if seq[line.name] else None
        e_para = median(para[line.name]) - d if para[line.name] else None
        if e_lp is not None:
            lp_abs.append(abs(e_lp))
        if e_curl is not None:
            curl_abs.append(abs(e_curl))
        if e_seq is not None:
            seq_abs.append(abs(e_seq))
        diff = abs(e_lp) - abs(e_curl) if e_lp is not None and e_curl is not None else None
        if diff is not None:
            worse.append(diff)
        rows.append([f"{d} ms", len(lp[line.name]), fmt(e_lp), fmt(e_curl), fmt(diff), fmt(e_para), fmt(e_seq)])
    print()
    print_table(["delay", "n", "linepicker err ms", "curl err ms", "|lp|-|curl| ms", "curl at once err ms", "lp conc=1 err ms"], rows)
    server_late = {k: median(v) for k, v in late.items()}
    print(f"  server-side sleep lateness (median, part of every error): "
          f"during linepicker {fmt(server_late['lp'], ' ms', 3)}, during curl {fmt(server_late['curl'], ' ms', 3)}, "
          f"during curl at once {fmt(server_late['para'], ' ms', 3)}, "
          f"during conc=1 {fmt(server_late['seq'], ' ms', 3)}")

    med_lp, med_curl, med_seq = median(lp_abs), median(curl_abs), median(seq_abs)
    worst = max(worse) if worse else None
    result.data.update(
        delays=delays, samples_per_line=SAMPLES * blocks,
        median_abs_err_lp_ms=med_lp, median_abs_err_curl_ms=med_curl, median_abs_err_lp_conc1_ms=med_seq,
        worst_lp_minus_curl_ms=worst, median_lp_minus_curl_ms=median(worse),
        per_line=[dict(zip(["delay", "n", "lp_err", "curl_err", "lp_minus_curl", "curl_at_once_err", "lp_conc1_err"], r)) for r in rows],
        server_lateness_ms=server_late,
    )
    result.check(
        "median |p50 TTFB - injected delay| <= 2 ms",
        f"linepicker {fmt(med_lp, ' ms')} (probe alone, concurrency=1: {fmt(med_seq, ' ms')})",
        f"curl {fmt(med_curl, ' ms')}",
        med_lp is not None and med_lp <= 2.0,
    )
    result.check(
        "never more than 1 ms worse than curl (per line, |lp err| - |curl err|)",
        f"worst line {fmt(worst, ' ms')}, median over lines {fmt(median(worse), ' ms')}",
        "curl time_starttransfer - time_pretransfer, same lines, same run",
        worst is not None and worst <= 1.0,
    )
    return result


if __name__ == "__main__":
    bench_main("accuracy", run)
