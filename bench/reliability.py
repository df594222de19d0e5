"""Measure the reliability matrix of docs/reliability.md: outcome, time to verdict and peak memory per hostile case.

    python bench/reliability.py            # prints the Markdown tables of docs/reliability.md

Every network case is one probe (one sample, probe.timeout 2 s) run in a child
process of its own against a misbehaving server in this process. Memory is the
child's VmHWM (Linux, /proc/self/status): the peak RSS of its own address
space, which unlike getrusage's ru_maxrss is not inherited from this parent
across fork and exec. "+RSS" is how far the peak rose above the child's RSS
just before probing (after imports). The CLI cases run the real `linepicker`
CLI, timed from spawn to exit, peak RSS its VmHWM at exit.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import random
import resource
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path
from typing import Callable

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE))

import trustme  # noqa: E402
import yaml  # noqa: E402
from children import KILLED_WRITER  # noqa: E402
from common import MEASURED_CLI  # noqa: E402

import hardening_files  # noqa: E402  (bench/ is on sys.path when run as a script)
import hardening_net  # noqa: E402
from servers import (  # noqa: E402
    MODELS_BODY,
    ServerThread,
    drips,
    head,
    head_then_drips,
    never_accepting_url,
    never_answers,
    redirects,
    replies,
    resets_after,
    start_raw_server,
    streams_forever,
    tls_server_context,
)

TIMEOUT = 2.0
FOUR_GIB = 4 * 2**30
JSON_HEAD = head(content_length=len(MODELS_BODY), content_type="application/json")
PYTHON = sys.executable

PROBE_CHILD = r"""
import asyncio, json, sys, time
import aiohttp  # probe imports it on first use; its import belongs to the baseline, not to the probe
from linepicker.config import Line, ProbeSettings
from linepicker.probe.round import probe_round
def kib(field):
    with open("/proc/self/status") as status:
        return int(next(line.split()[1] for line in status if line.startswith(field + ":")))
url, timeout, insecure = sys.argv[1], float(sys.argv[2]), sys.argv[3] == "1"
asyncio.run(asyncio.sleep(0))  # the loop's own memory belongs to the baseline
base = kib("VmRSS")
started = time.perf_counter()
runs = asyncio.run(probe_round([Line("x", url, insecure=insecure)], ProbeSettings(timeout=timeout, samples=1), "sk-bench"))
elapsed = time.perf_counter() - started
peak = kib("VmHWM")
s = runs[0].samples[0]
print(json.dumps({"outcome": s.outcome, "error": s.error, "s": elapsed, "peak_kib": peak, "grew_kib": max(0, peak - base)}))
"""


def probe_case(url: str, insecure: bool = False, env: dict[str, str] | None = None) -> dict:
    out = subprocess.run([PYTHON, "-c", PROBE_CHILD, url, str(TIMEOUT), "1" if insecure else "0"], capture_output=True, text=True, env=env, timeout=120)
    if out.returncode:
        raise RuntimeError(out.stderr)
    return json.loads(out.stdout)


def run_cli(argv: list[str]) -> tuple[int, float, float, str]:
    """Exit code, seconds from spawn to exit, peak RSS in MiB, stderr."""
    with tempfile.NamedTemporaryFile("r") as hwm:
        started = time.perf_counter()
        child = subprocess.run(
            [PYTHON, "-c", MEASURED_CLI, *argv], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env={**os.environ, "BENCH_HWM_FILE": hwm.name}
        )
        took = time.perf_counter() - started
        peak = int(hwm.read() or 0) / 1024
    return child.returncode, took, peak, child.stderr


def mib(kib: float) -> str:
    return f"{kib / 1024:.1f}"


def _gzip_of_zeros(size: int) -> bytes:
    """Compressed piecewise, so this process never holds the 256 MiB it unpacks to."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    chunk = bytes(2**20)
    return b"".join(packer.compress(chunk) for _ in range(size // len(chunk))) + packer.flush()


def network_cases(server: ServerThread, ca: trustme.CA, ca_file: str) -> list[tuple[str, Callable[[], dict]]]:
    now = dt.datetime.now(dt.timezone.utc)
    good_cert = tls_server_context(ca.issue_cert("127.0.0.1"))
    trusted = {**os.environ, "SSL_CERT_FILE": ca_file}

    def tls(cert: trustme.LeafCert) -> str:
        return start_raw_server(server, replies(JSON_HEAD + MODELS_BODY), tls_server_context(cert))

    bomb = _gzip_of_zeros(256 * 2**20)
    raw = lambda handler: lambda: probe_case(start_raw_server(server, handler))  # noqa: E731
    return [
        ("accepts (kernel backlog), never reads", lambda: probe_case(never_accepting_url(server))),
        ("reads the request, never answers", raw(never_answers)),
        ("headers, then hangs", raw(replies(JSON_HEAD + MODELS_BODY[:10], close="hold"))),
        ("drips the whole answer, 1 byte/s", raw(drips(JSON_HEAD + MODELS_BODY, 1.0))),
        ("headers, then drips the body 1 byte/s", raw(head_then_drips(JSON_HEAD, MODELS_BODY, 1.0))),
        ("TLS: TCP accepted, no handshake", lambda: probe_case(start_raw_server(server, never_answers).replace("http:", "https:"))),
        ("announces a 4 GiB body, streams it", raw(streams_forever(head(content_length=FOUR_GIB), b"x" * 65536))),
        ("announces 4 GiB of API-looking JSON", raw(streams_forever(
            head(content_length=FOUR_GIB, content_type="application/json") + b'{"object": "list", "data": [', b'{"id": "m"},' * 5000))),
        ("chunked body without end", raw(streams_forever(head(transfer_encoding="chunked"), b"y" * 65536, chunked=True))),
        ("close-delimited body without end", raw(streams_forever(head(connection="close"), b"z" * 65536))),
        ("headers without end", raw(streams_forever(b"HTTP/1.1 200 OK\r\n", b"X-Flood: " + b"a" * 100 + b"\r\n"))),
        ("gzip bomb (256 MiB of zeros in 256 KiB)", raw(replies(head(content_length=len(bomb), content_encoding="gzip", content_type="application/json") + bomb))),
        ("garbage bytes", raw(replies(b"\x00\xff\x13\x37 not HTTP\r\n\r\n"))),
        ("HTTP/0.9-style body, no status line", raw(replies(MODELS_BODY))),
        ("empty reply, FIN", raw(replies(b""))),
        ("close-delimited body, HTTP/1.0", raw(replies(head(version="HTTP/1.0", content_type="application/json") + MODELS_BODY))),
        ("body shorter than Content-Length, FIN", raw(replies(head(content_length=5000) + MODELS_BODY[:20]))),
        ("reset mid-body (Content-Length)", raw(resets_after(head(content_length=5000) + MODELS_BODY[:20]))),
        ("reset mid-body (chunked)", raw(resets_after(head(transfer_encoding="chunked") + b"400\r\n" + MODELS_BODY[:20]))),
        ("redirect loop", raw(redirects(302, "/v1/models"))),
        ("redirect to file://", raw(redirects(302, "file:///etc/passwd"))),
        ("TLS: certificate from an untrusted CA", lambda: probe_case(tls(trustme.CA().issue_cert("127.0.0.1")), env=trusted)),
        ("TLS: expired certificate", lambda: probe_case(tls(ca.issue_cert("127.0.0.1", not_before=now - dt.timedelta(days=30), not_after=now - dt.timedelta(days=1))), env=trusted)),
        ("TLS: wrong host name", lambda: probe_case(tls(ca.issue_cert("relay.example")), env=trusted)),
        ("TLS: expired, line has insecure: true", lambda: probe_case(tls(ca.issue_cert("127.0.0.1", not_before=now - dt.timedelta(days=30), not_after=now - dt.timedelta(days=1))), insecure=True, env=trusted)),
        ("TLS: handshake done, never answers", lambda: probe_case(start_raw_server(server, never_answers, good_cert), env=trusted)),
    ]


def network_table(server: ServerThread, ca: trustme.CA, ca_file: str) -> list[str]:
    rows = ["| case | outcome | error (as recorded) | time to verdict | peak RSS | +RSS while probing |", "| --- | --- | --- | ---: | ---: | ---: |"]
    for name, case in network_cases(server, ca, ca_file):
        r = case()
        error = (r["error"] or "").replace("|", "\\|")
        rows.append(f"| {name} | `{r['outcome']}` | {error[:90]} | {r['s']:.2f} s | {mib(r['peak_kib'])} MiB | {mib(r['grew_kib'])} MiB |")
        print(rows[-1], file=sys.stderr)
    return rows


def scale_table(server: ServerThread, work: Path) -> list[str]:
    ok = start_raw_server(server, replies(JSON_HEAD + MODELS_BODY), backlog=1024)
    dead = start_raw_server(server, never_answers, backlog=1024)
    lines = [{"name": f"l{i}", "url": f"{dead}/d{i}" if i % 3 == 0 else f"{ok}/l{i}"} for i in range(1000)]
    rows = ["| case | result | wall time | peak RSS |", "| --- | --- | ---: | ---: |"]
    for concurrency in (None, 64):
        config = work / f"thousand-{concurrency}.yaml"
        probe = {"timeout": TIMEOUT, "samples": 3} | ({"concurrency": concurrency} if concurrency else {})
        config.write_text(yaml.safe_dump({"probe": probe, "lines": lines}))
        for command in ("probe", "pick"):
            code, took, rss, err = run_cli([command, "--config", str(config), "--db", str(work / f"t{concurrency}.db")])
            label = f"`{command}`, 1,000 lines, 334 dead, " + (f"concurrency: {concurrency}" if concurrency else "default concurrency")
            rows.append(f"| {label} | exit {code} | {took:.2f} s | {rss:.0f} MiB |")
            print(rows[-1], file=sys.stderr)
    return rows


def database_table(server: ServerThread, work: Path) -> list[str]:
    ok = start_raw_server(server, replies(JSON_HEAD + MODELS_BODY))
    config = work / "one.yaml"
    config.write_text(yaml.safe_dump({"lines": [{"name": "a", "url": ok}]}))
    rows = ["| case | exit | message (last stderr line) | time to verdict | file unchanged |", "| --- | ---: | --- | ---: | --- |"]

    def case(name: str, db: Path, prepare: Callable[[], None] | None = None) -> None:
        if prepare:
            prepare()
        before = db.read_bytes() if db.is_file() else None
        code, took, _, err = run_cli(["pick", "--config", str(config), "--db", str(db)])
        after = db.read_bytes() if db.is_file() else None
        last = err.strip().splitlines()[-1] if err.strip() else ""
        last = last.replace(str(work), "…").replace("|", "\\|")
        rows.append(f"| {name} | {code} | {last} | {took:.2f} s | {'yes' if before == after else 'NO'} |")
        print(rows[-1], file=sys.stderr)

    good = work / "good.db"
    run_cli(["pick", "--config", str(config), "--db", str(good)])
    data = good.read_bytes()
    text = work / "notes.db"
    text.write_text("my notes\n" * 100)
    case("not a SQLite file", text)
    smashed = work / "header.db"
    smashed.write_bytes(data[:16] + bytes(84) + data[100:])
    case("corrupt header", smashed)
    half = work / "half.db"
    half.write_bytes(data[: len(data) // 2 // 4096 * 4096])
    case("cut in half", half)
    other = work / "other.db"
    with sqlite3.connect(other) as conn:
        conn.execute("create table notes (body text)")
    conn.close()
    case("another program's SQLite database", other)
    locked = work / "locked.db"
    shutil.copy(good, locked)
    holder = sqlite3.connect(locked, isolation_level=None)
    holder.execute("begin exclusive")
    case("locked by another process for longer than the busy timeout", locked)
    holder.execute("rollback")
    holder.close()
    if os.geteuid() != 0 or shutil.which("chattr"):
        ro = work / "ro.db"
        shutil.copy(good, ro)
        lock = (lambda: subprocess.run(["chattr", "+i", str(ro)], check=True)) if os.geteuid() == 0 else (lambda: ro.chmod(0o444))
        case("file not writable", ro, lock)
        if os.geteuid() == 0:
            subprocess.run(["chattr", "-i", str(ro)], check=True)
    return rows


def kill_table(work: Path, kills: int = 200) -> list[str]:
    from linepicker.clientenv import client_env
    from linepicker.targets import render_dotenv, update_claude_settings, update_dotenv

    work.mkdir()
    urls = ("https://a.example", "https://b.example")
    base = {"model": "opus", "permissions": {"allow": [f"Bash(tool-{n}:*)" for n in range(20_000)]}}
    dotenv, settings = work / ".env", work / "settings.json"
    template = "# mine\nexport TOKEN='abc'\nOPENAI_BASE_URL=\"x\"\n"
    dotenv.write_text(render_dotenv(template, client_env(urls[0])))
    settings.write_text(json.dumps({**base, "env": {"ANTHROPIC_BASE_URL": urls[0]}}))
    dotenv.chmod(0o640)
    settings.chmod(0o604)
    rng = random.Random(4)
    counts = {"old or new, whole": 0, "torn": 0, "mode changed": 0}
    seen = set()
    started = time.perf_counter()
    for _ in range(kills):
        child = subprocess.Popen([PYTHON, "-c", KILLED_WRITER, str(dotenv), str(settings), *urls], stdout=subprocess.PIPE)
        child.stdout.readline()  # type: ignore[union-attr]
        time.sleep(rng.uniform(0, 0.03))
        child.send_signal(signal.SIGKILL)
        child.wait()
        try:
            data = json.loads(settings.read_text())
            whole = dotenv.read_text() in {render_dotenv(template, client_env(u)) for u in urls} and {k: v for k, v in data.items() if k != "env"} == base
            seen.add(data["env"]["ANTHROPIC_BASE_URL"])
        except ValueError:
            whole = False
        counts["old or new, whole" if whole else "torn"] += 1
        if (dotenv.stat().st_mode & 0o777, settings.stat().st_mode & 0o777) != (0o640, 0o604):
            counts["mode changed"] += 1
    took = time.perf_counter() - started
    temps = [p for p in work.iterdir() if p.name.endswith(".tmp")]
    for temp in temps:  # as if the next write came a few minutes later
        os.utime(temp, (time.time() - 300, time.time() - 300))
    for url in urls:  # one of them is a real write whatever the kills left
        update_claude_settings(settings, url)
        update_dotenv(dotenv, url)
    remaining = len([p for p in work.iterdir() if p.name.endswith(".tmp")])
    return [
        "| kills | whole, old or new | torn | mode changed | both versions seen | temp files left by the kills | left after the next write, a minute on | wall time |",
        "| ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: |",
        f"| {kills} | {counts['old or new, whole']} | {counts['torn']} | {counts['mode changed']} | {'yes' if len(seen) == 2 else 'no'} | {len(temps)} | {remaining} | {took:.1f} s |",
    ]


def main() -> None:
    server = ServerThread()
    ca = trustme.CA()
    work = Path(tempfile.mkdtemp(prefix="linepicker-reliability-"))
    ca_file = str(work / "ca.pem")
    ca.cert_pem.write_to_path(ca_file)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    print(f"<!-- {dt.datetime.now():%Y-%m-%d %H:%M}, Python {sys.version.split()[0]}, {os.cpu_count()} CPUs, open-file limit {soft} -->\n")
    sections = [
        ("Network (one sample, probe.timeout 2 s)", lambda: network_table(server, ca, ca_file)),
        ("Scale", lambda: scale_table(server, work)),
        ("Database (via `linepicker pick`)", lambda: database_table(server, work)),
        ("SIGKILL during target writes", lambda: kill_table(work / "kill")),
        ("Files, database and input (issue 11)", lambda: hardening_files.table(work / "files")),
        ("Network, key and daemon (issue 11)", lambda: hardening_net.table(work / "net")),
    ]
    for title, build in sections:
        print(f"### {title}\n")
        print("\n".join(build()))
        print()
    shutil.rmtree(work, ignore_errors=True)
    server.stop()


if __name__ == "__main__":
    main()
