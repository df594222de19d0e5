"""Decisions (issue 12): for each scenario, what each line costs a client, what linepicker chose over N runs, and the switches.

    python bench/run.py decision          # or python bench/decision.py [--quick] [--json FILE]

Every line is a route of bench/delay_server.py (its own process), over TLS with a
trustme CA unless said otherwise. Per scenario, in the same run:
  * the reference: a fresh-connection client (aiohttp, a new TCP connection and TLS
    handshake per request, as a client whose keep-alive expired starts over) asks
    every line REFERENCE times, interleaved; its wait from request start to the
    answer's headers gives p50, p90 and mean, and its failures the failure share.
    A line's cost to a client = mean wait + failure share x 500 ms (the default
    policy.failure_penalty_ms); the right line is the cheapest (a near tie has two);
  * linepicker: N runs, each on a fresh database, of a sequence of rounds as `pick`
    runs them (picker.run_round, in this process, a pause between rounds scaled to
    the policy's half-life the way 60 s rounds are to the default 2 min), or of the
    daemon (in this process, on a fast schedule) for the watch and recovery scenarios.
    The choice after the last round is compared with the right line; switches are
    changes of choice after the first one.
Targets: the right line in >= 95% of runs of each scenario; 0 switches in a near
tie (3 ms apart, +-5 ms jitter, 30 rounds); a dead chosen line replaced within
fall x watch_interval + timeout; a recovered, clearly better line taken back within
rise + 2 rounds. And, from the earlier decision-time bench: `pick` over 20 lines of
which 5 hang, timeout 10 s, <= 1.5 s wall, process start to exit.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import ssl
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from common import Result, Servers, bench_main, fmt, linepicker_exe, median, print_table, quantile, timed_run
from configs import isolated_env, write_config

REFERENCE = 40
REFERENCE_SEED = 1000  # the reference client meets other random draws than the runs do
PENALTY_MS = 500.0  # the default policy.failure_penalty_ms: what the cost column charges per failure
PERIOD_S = 1.0  # between the starts of a pick sequence's rounds, as probe.interval is between a daemon's
PICK_POLICY = {"half_life": "2s", "window": "15s"}
DAEMON = {"timeout": 1, "samples": 3, "interval": 1, "down_interval": 0.2, "watch_interval": 0.2}
DAEMON_POLICY = {"half_life": "2s", "window": "15s", "fall": 3, "rise": 2}


@dataclass
class Scenario:
    name: str
    what: str
    lines: dict[str, tuple[str, dict[str, Any]]]  # name -> (listener, behaviour)
    right: tuple[str, ...]
    rounds: int = 1
    runs: int = 20
    changes: dict[int, dict[str, dict[str, Any]]] = field(default_factory=dict)  # before round i: line -> behaviour
    kind: str = "pick"  # or "dead", "recovery": daemon scenarios
    policy: dict[str, Any] = field(default_factory=dict)
    final: dict[str, dict[str, Any]] = field(default_factory=dict)  # how lines behave at the end, when changes do not say

    def at_end(self) -> dict[str, dict[str, Any]]:
        """Each line's behaviour once every change is made: what the right line is judged on."""
        behaviour = {name: dict(b) for name, (_, b) in self.lines.items()}
        for changes in [*self.changes.values(), self.final]:
            for name, change in changes.items():
                behaviour[name].update(change)
        return behaviour


SCENARIOS = [
    Scenario("held-tls", "TLS handshake held back 120 ms on a line that answers 50 ms sooner once connected",
             {"held": ("held", {"delay_ms": 10}), "plain": ("tls", {"delay_ms": 60})}, ("plain",)),
    Scenario("lost-syn", "one fresh connection in five waits 1 s more (as a lost SYN costs); the other line is 60 ms slower",
             {"spiky": ("tls", {"delay_ms": 40, "spike_rate": 0.2, "spike_ms": 1000}), "steady": ("tls", {"delay_ms": 100})},
             ("steady",), rounds=10),
    Scenario("flaky", "one request in three fails at random on a line twice as fast",
             {"flaky": ("tls", {"delay_ms": 30, "fail_rate": 1 / 3}), "steady": ("tls", {"delay_ms": 70})}, ("steady",), rounds=6),
    Scenario("slow-and-hang", "lines at 40, 120 and 250 ms and one that hangs (timeout 5 s)",
             {"l40": ("tls", {"delay_ms": 40}), "l120": ("tls", {"delay_ms": 120}), "l250": ("tls", {"delay_ms": 250}),
              "hang": ("tls", {"hang": True})}, ("l40",)),
    Scenario("turns-slow", "the chosen line goes from 40 to 250 ms after round 4; the other stays at 90 ms",
             {"a": ("tls", {"delay_ms": 40}), "b": ("tls", {"delay_ms": 90})}, ("b",), rounds=10,
             changes={4: {"a": {"delay_ms": 250}}}),
    Scenario("near-tie", "3 ms apart with +-5 ms of jitter each, 30 rounds",
             {"a": ("tls", {"delay_ms": 50, "jitter_ms": 5}), "b": ("tls", {"delay_ms": 53, "jitter_ms": 5})}, ("a", "b"),
             rounds=30, runs=5),
    Scenario("dead", "daemon: the chosen line starts hanging (timeout 1 s, watch 0.2 s, fall 3)",
             {"a": ("tls", {"delay_ms": 20}), "b": ("tls", {"delay_ms": 60})}, ("b",), runs=5, kind="dead", final={"a": {"hang": True}}),
    Scenario("recovery", "daemon: a line 130 ms better fails for 3 s, then recovers (rise 2)",
             {"a": ("tls", {"delay_ms": 20}), "b": ("tls", {"delay_ms": 150})}, ("a",), runs=5, kind="recovery"),
]


@dataclass
class Cost:
    p50: float | None
    p90: float | None
    mean: float | None
    failed: float

    @property
    def total(self) -> float:
        return float("inf") if self.mean is None else self.mean + self.failed * PENALTY_MS


async def reference(urls: dict[str, str], context: ssl.SSLContext, count: int) -> dict[str, Cost]:
    """The fresh-connection client: one request at a time, lines interleaved, a new connection every time."""
    waits: dict[str, list[float]] = {name: [] for name in urls}
    failures = dict.fromkeys(urls, 0)
    for _ in range(count):
        for name, url in urls.items():
            started = time.perf_counter()
            try:
                connector = aiohttp.TCPConnector(force_close=True, ssl=context, use_dns_cache=False)
                async with aiohttp.ClientSession(connector=connector) as session:
                    async with session.get(url + "/v1/models", timeout=aiohttp.ClientTimeout(total=2)) as response:
                        wait = (time.perf_counter() - started) * 1000
                        await response.read()
                        ok = response.status == 200
            except (aiohttp.ClientError, asyncio.TimeoutError):
                ok = False
            if ok:
                waits[name].append(wait)
            else:
                failures[name] += 1
    return {
        name: Cost(quantile(values, 0.5), quantile(values, 0.9), statistics.fmean(values) if values else None, failures[name] / count)
        for name, values in waits.items()
    }


def set_lines(servers: Servers, scenario: Scenario, run: int, changes: dict[str, dict[str, Any]] | None = None) -> None:
    for name, (_, behaviour) in scenario.lines.items():
        if changes is None or name in changes:
            servers.control(f"{scenario.name}-{name}", **{**behaviour, **((changes or {}).get(name, {})), "seed": run})


def set_final(servers: Servers, scenario: Scenario) -> None:
    for name, behaviour in scenario.at_end().items():
        servers.control(f"{scenario.name}-{name}", **{**behaviour, "seed": REFERENCE_SEED})


def urls_of(servers: Servers, scenario: Scenario) -> dict[str, str]:
    return {name: servers.tagged_url(f"{scenario.name}-{name}", listener) for name, (listener, _) in scenario.lines.items()}


def decisions(db: Path) -> list[tuple[str, float]]:
    with sqlite3.connect(db) as conn:
        return conn.execute("select name, decided_at from decisions order by id").fetchall()


def pick_run(servers: Servers, scenario: Scenario, run: int, tmp: Path) -> dict[str, Any]:
    from linepicker import picker
    from linepicker.config import load_config
    from linepicker.store import Store

    set_lines(servers, scenario, run)
    config_path = write_config(tmp / f"{scenario.name}-{run}.yaml", urls_of(servers, scenario), policy={**PICK_POLICY, **scenario.policy}, timeout=5, samples=3)
    config, db = load_config(config_path), tmp / f"{scenario.name}-{run}.db"
    walls, measured, choices = [], [], []
    with Store(db) as store:
        for number in range(scenario.rounds):
            if number in scenario.changes:
                set_lines(servers, scenario, run, scenario.changes[number])
            if number:
                time.sleep(max(0.0, PERIOD_S - walls[-1]))
            started = time.perf_counter()
            result = asyncio.run(picker.run_round(config, store, "pick"))
            walls.append(time.perf_counter() - started)
            measured.append(sum(report.measured for report in result.lines))
            choices.append(result.chosen.name if result.chosen else None)
    made = decisions(db)
    return {"chosen": choices[-1], "switches": max(0, len(made) - 1), "walls": walls, "measured": measured, "choices": choices}


def daemon_run(servers: Servers, scenario: Scenario, run: int, tmp: Path) -> dict[str, Any]:
    from linepicker.config import load_config
    from linepicker.daemon.runner import Daemon
    from linepicker.store import Store

    set_lines(servers, scenario, run)
    config_path = write_config(tmp / f"{scenario.name}-{run}.yaml", urls_of(servers, scenario), policy=DAEMON_POLICY, **DAEMON)
    db = tmp / f"{scenario.name}-{run}.db"
    daemon = Daemon(load_config(config_path), Store(db), None)
    figures: dict[str, Any] = {}

    def chosen() -> str | None:
        choice = daemon.store.choice()
        return choice.name if choice else None

    async def until(condition: Any, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.01)
        return True

    async def body() -> None:
        await until(lambda: chosen() == "a", 10)
        await asyncio.sleep(1.5)
        if scenario.kind == "dead":
            set_lines(servers, scenario, run, {"a": {"hang": True}})
            died = time.monotonic()
            if await until(lambda: chosen() == "b", 15):
                figures["replaced_s"] = time.monotonic() - died
            return
        set_lines(servers, scenario, run, {"a": {"fail_rate": 1.0}})
        await until(lambda: chosen() == "b", 15)
        await asyncio.sleep(3.0)
        set_lines(servers, scenario, run, {"a": {"fail_rate": 0.0}})
        figures["recovered_at"] = time.time()
        await until(lambda: chosen() == "a", 20)

    async def main() -> None:
        task = asyncio.ensure_future(daemon.serve())
        try:
            await body()
        finally:
            daemon.stop("bench over")
            await asyncio.wait_for(task, 10)
            daemon.store.close()

    asyncio.run(main())
    made = decisions(db)
    if "recovered_at" in figures and made and made[-1][0] == "a":
        with sqlite3.connect(db) as conn:
            figures["rounds_to_return"] = conn.execute(
                "select count(distinct s.round_id) from samples s join lines l on l.id = s.line_id "
                "where l.name = 'a' and s.started_at >= ? and s.started_at <= ?",
                [figures["recovered_at"], made[-1][1]],
            ).fetchone()[0]
    return {"chosen": made[-1][0] if made else None, "switches": max(0, len(made) - 1), **figures}


def run_scenario(servers: Servers, scenario: Scenario, context: ssl.SSLContext, tmp: Path, quick: bool) -> dict[str, Any]:
    print(f"\n  {scenario.name}: {scenario.what}", flush=True)
    set_final(servers, scenario)
    reference_lines = {name: url for name, url in urls_of(servers, scenario).items() if not scenario.at_end()[name].get("hang")}
    costs = asyncio.run(reference(reference_lines, context, 4 if quick else REFERENCE))
    runs = 2 if quick else scenario.runs
    if quick and scenario.rounds > 3:
        scenario = Scenario(**{**vars(scenario), "rounds": 3})
    outcomes = [(daemon_run if scenario.kind != "pick" else pick_run)(servers, scenario, run, tmp) for run in range(runs)]
    chosen = [o["chosen"] for o in outcomes]
    rows = []
    for name in scenario.lines:
        cost = costs.get(name)
        rows.append([
            name, fmt(cost.p50, digits=1) if cost else "-", fmt(cost.p90, digits=1) if cost else "-", fmt(cost.mean, digits=1) if cost else "-",
            f"{cost.failed:.0%}" if cost else "no answer", fmt(cost.total, digits=1) if cost else "inf",
            f"{chosen.count(name)}/{runs}" + (" right" if name in scenario.right else ""),
        ])
    print_table(["line", "client p50 ms", "p90 ms", "mean ms", "failed", "cost ms", "chosen (end)"], rows)
    right = sum(c in scenario.right for c in chosen)
    switches = [o["switches"] for o in outcomes]
    summary = {"name": scenario.name, "what": scenario.what, "runs": runs, "rounds": scenario.rounds, "right": right,
               "switches": switches, "costs": {n: vars(c) for n, c in costs.items()}, "outcomes": outcomes}
    print(f"  right line in {right}/{runs} runs; switches per run: {switches}", flush=True)
    return summary


def pick_wall_time(result: Result, quick: bool) -> None:
    """The real `linepicker pick --json` as a subprocess, fresh database each run: 15 lines at 20-250 ms and 5 that hang."""
    delays = [20, 30, 40, 50, 60, 70, 80, 90, 100, 120, 140, 160, 180, 200, 250]
    repeats = 1 if quick else 5
    exe = linepicker_exe()
    with Servers(1) as servers, tempfile.TemporaryDirectory(prefix="lp-bench-") as tmp:
        urls = {f"d{d}": servers.line_url(d, tag=f"d{d}") for d in delays} | {f"hang{i}": servers.hang_url(tag=f"h{i}") for i in range(5)}
        config = write_config(Path(tmp) / "lines.yaml", urls, timeout=10, samples=3)
        env = isolated_env(Path(tmp) / "home")
        walls, starts, chosen, measured = [], [], set(), []
        for i in range(repeats):
            wall, proc = timed_run([exe, "pick", "--json", "--config", str(config), "--db", str(Path(tmp) / f"run{i}.db")], env=env)
            if proc.returncode != 0:
                raise RuntimeError(f"pick exited {proc.returncode}: {proc.stderr[:500]}")
            document = json.loads(proc.stdout)
            chosen.add(document["chosen"]["name"])
            measured.append(sum(line["healthy"] is not None for line in document["lines"]))
            walls.append(wall)
            starts.append(timed_run([exe, "--version"], env=env)[0])
            print(f"  pick over 20 lines, 5 hang: run {i + 1}/{repeats}: {wall:.3f} s, {measured[-1]} lines measured", flush=True)
    result.data["pick_wall"] = {"walls_s": walls, "version_walls_s": starts, "chosen": sorted(chosen), "measured": measured}
    result.check(
        "pick over 20 lines (5 hang, timeout 10 s) <= 1.5 s wall",
        f"median {fmt(median(walls), ' s', 3)} over {repeats} runs (max {fmt(max(walls), ' s', 3)}), chose {', '.join(sorted(chosen))}, "
        f"{min(measured)}-{max(measured)} of 20 lines measured",
        f"`linepicker --version` {fmt(median(starts), ' s', 3)}; waiting for a hanging line would be 10 s",
        max(walls) <= 1.5,
    )


def run(quick: bool = False) -> Result:
    import trustme

    result = Result("decision", "python bench/run.py decision")
    with tempfile.TemporaryDirectory(prefix="lp-decision-") as tmp_name:
        tmp = Path(tmp_name)
        ca = trustme.CA()
        leaf = ca.issue_cert("127.0.0.1")
        cert, key, ca_file = tmp / "cert.pem", tmp / "key.pem", tmp / "ca.pem"
        leaf.private_key_pem.write_to_path(str(key))
        cert.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
        ca.cert_pem.write_to_path(str(ca_file))
        os.environ["SSL_CERT_FILE"] = str(ca_file)  # linepicker trusts the bench CA the way a user would make it
        context = ssl.create_default_context(cafile=str(ca_file))
        chosen = os.environ.get("LINEPICKER_BENCH_SCENARIOS")  # a comma-separated choice of them, to re-run some
        scenarios = [s for s in SCENARIOS if s.name in chosen.split(",")] if chosen else SCENARIOS
        if quick:
            scenarios = [s for s in scenarios if s.name in ("held-tls", "slow-and-hang", "dead")]
        with Servers(1, tls=(str(cert), str(key)), held_ms=120) as servers:
            summaries = [run_scenario(servers, scenario, context, tmp, quick) for scenario in scenarios]
    result.data["scenarios"] = summaries
    report(result, summaries)
    pick_wall_time(result, quick)
    return result


def report(result: Result, summaries: list[dict[str, Any]]) -> None:
    print("\n  summary:")
    rows = []
    for s in summaries:
        extra = ""
        outcomes = s["outcomes"]
        if s["name"] == "dead":
            times = [o.get("replaced_s") for o in outcomes]
            extra = "replaced after " + ", ".join(fmt(t, " s") for t in times)
        elif s["name"] == "recovery":
            extra = "taken back after " + ", ".join(str(o.get("rounds_to_return", "never")) for o in outcomes) + " rounds of a"
        elif s["name"] == "turns-slow":
            change = min(SCENARIOS[4].changes)
            left = [next((i - change + 1 for i, c in enumerate(o["choices"]) if i >= change and c == "b"), None) for o in outcomes]
            extra = "left a within " + ", ".join(str(n) for n in left) + " rounds of it turning slow"
        elif s["name"] == "slow-and-hang":
            extra = f"lines measured {min(m for o in outcomes for m in o['measured'])}-{max(m for o in outcomes for m in o['measured'])} of 4; pick {fmt(median(w for o in outcomes for w in o['walls']), ' s', 2)} median"
        rows.append([s["name"], f"{s['right']}/{s['runs']}", sum(s["switches"]), extra])
        result.check(f"{s['name']}: the right line in >= 95% of runs", f"{s['right']}/{s['runs']}", s["what"], s["right"] >= 0.95 * s["runs"])
    print_table(["scenario", "right", "switches", ""], rows)
    by_name = {s["name"]: s for s in summaries}
    if "near-tie" in by_name:
        tie = by_name["near-tie"]
        result.check("near tie (3 ms apart, +-5 ms jitter, 30 rounds): 0 switches", f"{sum(tie['switches'])} switches over {tie['runs']} runs", "", sum(tie["switches"]) == 0)
    if "dead" in by_name:
        times = [o.get("replaced_s") for o in by_name["dead"]["outcomes"]]
        allowed = DAEMON_POLICY["fall"] * DAEMON["watch_interval"] + DAEMON["timeout"]
        result.check(
            f"dead chosen line replaced within fall x watch_interval + timeout = {allowed:g} s",
            ", ".join(fmt(t, " s") for t in times), "the time from the line starting to hang to the switch",
            all(t is not None and t <= allowed for t in times),
        )
    if "recovery" in by_name:
        counts = [o.get("rounds_to_return") for o in by_name["recovery"]["outcomes"]]
        limit = DAEMON_POLICY["rise"] + 2
        result.check(
            f"recovered, clearly better line taken back within rise + 2 = {limit} rounds",
            ", ".join(str(c) for c in counts) + " rounds of the recovered line", "rounds that probed it from its recovery to the switch",
            all(c is not None and c <= limit for c in counts),
        )


if __name__ == "__main__":
    bench_main("decision", run)
