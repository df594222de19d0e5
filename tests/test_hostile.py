"""Hostile networks: every misbehaving server ends in a recorded outcome, within the deadline, in bounded memory.

Each server here is a real socket on 127.0.0.1 that misbehaves in exactly one way
(tests/servers.py). The bounds on time are generous because other test runs
share the machine; what they rule out is a per-read timeout (which a drip
defeats) or an unbounded read (which a 4 GiB body would turn into gigabytes).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import gzip
import json
import os
import sqlite3
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import pytest
import trustme
import yaml

from linepicker.config import Line, ProbeSettings
from linepicker.probe.round import probe_round
from linepicker.probe.sample import Sample
from servers import (
    MODELS_BODY,
    ServerThread,
    drips,
    head,
    head_then_drips,
    never_accepting_url,
    never_answers,
    read_request,
    recording,
    redirects,
    replies,
    resets_after,
    start_raw_server,
    streams_forever,
    tls_server_context,
)

TIMEOUT = 1.0
SLACK = 1.5  # scheduling noise on a busy 2-core machine; a per-read timeout would overrun by far more
KEY = "sk-test-SECRET-hostile-7f3a9c"
JSON_HEAD = head(content_length=len(MODELS_BODY), content_type="application/json")
FOUR_GIB = 4 * 2**30


def probe(url: str, timeout: float = TIMEOUT, key: str | None = None, insecure: bool = False, follow: str = "same-origin") -> tuple[Sample, float]:
    """One sample of one line, and how long the round took."""
    started = time.perf_counter()
    settings = ProbeSettings(timeout=timeout, samples=1, follow_redirects=follow)
    runs = asyncio.run(probe_round([Line("x", url, insecure=insecure)], settings, key))
    return runs[0].samples[0], time.perf_counter() - started


# ---------------------------------------------------------------- servers that never finish


@pytest.mark.parametrize(
    "case",
    [
        "accepts in the kernel, never by the app",
        "reads the request, never answers",
        "sends headers, then hangs",
        "drips the whole answer, 1 byte per 0.2 s",
        "drips the body, 1 byte per 0.2 s",
        "TLS: TCP accepted, no handshake",
        "TLS: handshake done, never answers",
    ],
)
def test_a_server_that_never_finishes_ends_at_the_total_deadline(server: ServerThread, ca: trustme.CA, trust: Path, case: str) -> None:
    urls = {
        "accepts in the kernel, never by the app": lambda: never_accepting_url(server),
        "reads the request, never answers": lambda: start_raw_server(server, never_answers),
        "sends headers, then hangs": lambda: start_raw_server(server, replies(JSON_HEAD + MODELS_BODY[:10], close="hold")),
        "drips the whole answer, 1 byte per 0.2 s": lambda: start_raw_server(server, drips(JSON_HEAD + MODELS_BODY, 0.2)),
        "drips the body, 1 byte per 0.2 s": lambda: start_raw_server(server, head_then_drips(JSON_HEAD, MODELS_BODY, 0.2)),
        "TLS: TCP accepted, no handshake": lambda: start_raw_server(server, never_answers).replace("http:", "https:"),
        "TLS: handshake done, never answers": lambda: start_raw_server(
            server, never_answers, tls_server_context(ca.issue_cert("127.0.0.1"))
        ),
    }
    sample, elapsed = probe(urls[case]())
    assert sample.outcome == "timeout", sample.error
    assert sample.error == "no complete answer within 1s"
    assert TIMEOUT * 0.9 <= elapsed < TIMEOUT + SLACK, f"{case}: verdict after {elapsed:.2f}s with a {TIMEOUT}s deadline"


def test_headers_then_a_hang_keeps_the_phases_it_reached(server: ServerThread) -> None:
    sample, _ = probe(start_raw_server(server, replies(JSON_HEAD + MODELS_BODY[:10], close="hold")))
    assert sample.outcome == "timeout" and sample.status == 200
    assert sample.phases.ttfb_ms is not None, "the headers did arrive"
    assert sample.phases.transfer_ms is None, "the body never finished"


# ---------------------------------------------------------------- endless and huge bodies


@pytest.mark.parametrize(
    "case, handler, outcome",
    [
        ("announces 4 GiB of bytes", streams_forever(head(content_length=FOUR_GIB), b"x" * 65536), "not_api"),
        ("announces 4 GiB of JSON that looks like the API", streams_forever(
            head(content_length=FOUR_GIB, content_type="application/json") + b'{"object": "list", "data": [',
            b'{"id": "m", "object": "model"},' * 2000,
        ), "ok"),
        ("streams chunks without end", streams_forever(head(transfer_encoding="chunked"), b"y" * 65536, chunked=True), "not_api"),
        ("streams a close-delimited body without end", streams_forever(head(connection="close"), b"z" * 65536), "not_api"),
        ("sends headers without end", streams_forever(b"HTTP/1.1 200 OK\r\n", b"X-Flood: " + b"a" * 100 + b"\r\n"), "protocol"),
        ("sends one header line without end", streams_forever(b"HTTP/1.1 200 OK\r\nX-Big: ", b"a" * 65536), "protocol"),
    ],
)
def test_an_endless_answer_is_cut_off_with_bounded_memory(server: ServerThread, case: str, handler, outcome: str) -> None:
    url = start_raw_server(server, handler)
    tracemalloc.start()
    try:
        sample, elapsed = probe(url, timeout=5)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert sample.outcome == outcome, sample.error
    assert elapsed < 3, f"{case}: read until the deadline instead of stopping at the cap"
    assert peak < 8 * 2**20, f"{case}: {peak / 2**20:.1f} MiB allocated while reading"


def test_a_compression_bomb_is_inflated_no_further_than_the_cap(server: ServerThread) -> None:
    bomb = gzip.compress(b"\0" * (256 * 2**20))
    url = start_raw_server(server, replies(head(content_length=len(bomb), content_encoding="gzip", content_type="application/json") + bomb))
    tracemalloc.start()
    try:
        sample, _ = probe(url, timeout=5)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert sample.outcome == "not_api"
    assert peak < 16 * 2**20, f"{peak / 2**20:.1f} MiB for a 256 MiB bomb"


# ---------------------------------------------------------------- answers that are not (quite) HTTP


@pytest.mark.parametrize(
    "case, raw, outcome, words",
    [
        ("garbage bytes", b"\x00\xff\x13\x37 not HTTP at all\r\n\r\n", "protocol", "not an HTTP answer"),
        ("HTTP/0.9-style body without a status line", MODELS_BODY, "protocol", "not an HTTP answer"),
        ("empty reply, then FIN", b"", "reset", "closed the connection"),
        ("close-delimited body (HTTP/1.1)", head(content_type="application/json", connection="close") + MODELS_BODY, "ok", None),
        ("close-delimited body (HTTP/1.0)", head(version="HTTP/1.0", content_type="application/json") + MODELS_BODY, "ok", None),
        ("body shorter than its Content-Length", head(content_length=5000, content_type="application/json") + MODELS_BODY[:20], "protocol", "received 20 of 5000 bytes"),
        ("bad chunk size", head(transfer_encoding="chunked") + b"zz\r\nabc\r\n0\r\n\r\n", "protocol", "chunk"),
        ("status code out of range", head("999 Weird", content_length=2) + b"{}", "http_5xx", "999"),
    ],
)
def test_malformed_answers_get_their_outcome(server: ServerThread, case: str, raw: bytes, outcome: str, words: str | None) -> None:
    sample, elapsed = probe(start_raw_server(server, replies(raw)))
    assert sample.outcome == outcome, f"{case}: {sample.error}"
    assert words is None or words in (sample.error or ""), sample.error
    assert "\n" not in (sample.error or ""), "errors are one line in the table"
    assert elapsed < TIMEOUT, f"{case}: a broken answer is known at once, not at the deadline"


@pytest.mark.parametrize(
    "framing",
    [
        head(content_length=5000, content_type="application/json"),
        head(transfer_encoding="chunked", content_type="application/json") + b"400\r\n",
    ],
    ids=["content-length", "chunked"],
)
def test_a_reset_mid_body_is_a_reset(server: ServerThread, framing: bytes) -> None:
    sample, _ = probe(start_raw_server(server, resets_after(framing + MODELS_BODY[:20])))
    assert sample.outcome == "reset", sample.error
    assert sample.error == "connection reset while reading the body"
    assert sample.status == 200 and sample.phases.ttfb_ms is not None


# ---------------------------------------------------------------- TLS


def _tls_case(ca: trustme.CA, case: str) -> trustme.LeafCert:
    now = dt.datetime.now(dt.timezone.utc)
    return {
        "untrusted CA": lambda: trustme.CA().issue_cert("127.0.0.1"),
        "expired": lambda: ca.issue_cert("127.0.0.1", not_before=now - dt.timedelta(days=30), not_after=now - dt.timedelta(days=1)),
        "not yet valid": lambda: ca.issue_cert("127.0.0.1", not_before=now + dt.timedelta(days=1), not_after=now + dt.timedelta(days=30)),
        "wrong host name": lambda: ca.issue_cert("relay.example"),
    }[case]()


@pytest.mark.parametrize(
    "case, reason",
    [
        ("untrusted CA", "unable to get local issuer certificate"),
        ("expired", "certificate has expired"),
        ("not yet valid", "certificate is not yet valid"),
        ("wrong host name", "certificate is not valid for '127.0.0.1'"),
    ],
)
def test_bad_certificates_are_a_tls_outcome_with_the_reason(server: ServerThread, ca: trustme.CA, trust: Path, case: str, reason: str) -> None:
    handler = replies(JSON_HEAD + MODELS_BODY)
    url = start_raw_server(server, handler, tls_server_context(_tls_case(ca, case)))
    sample, elapsed = probe(url)
    assert sample.outcome == "tls" and not sample.success
    assert reason in sample.error, sample.error
    assert elapsed < TIMEOUT
    checked_anyway, _ = probe(url, insecure=True)
    assert checked_anyway.outcome == "ok", "only a line marked insecure: true skips the check"


def test_wrong_host_name_is_named_for_a_dns_name_too(server: ServerThread, ca: trustme.CA, trust: Path) -> None:
    url = start_raw_server(server, replies(JSON_HEAD + MODELS_BODY), tls_server_context(ca.issue_cert("relay.example")))
    sample, _ = probe(url.replace("127.0.0.1", "localhost"))
    assert sample.outcome == "tls"
    assert "Hostname mismatch" in sample.error and "localhost" in sample.error


def test_certificate_checks_are_on_without_any_configuration(server: ServerThread, ca: trustme.CA) -> None:
    """No SSL_CERT_FILE: the test CA is unknown to the system store, so the line must fail, not pass."""
    url = start_raw_server(server, replies(JSON_HEAD + MODELS_BODY), tls_server_context(ca.issue_cert("127.0.0.1")))
    sample, _ = probe(url)
    assert sample.outcome == "tls"


def test_insecure_lines_are_loud_in_the_output(server: ServerThread, ca: trustme.CA, write_config, run) -> None:
    url = start_raw_server(server, replies(JSON_HEAD + MODELS_BODY), tls_server_context(_tls_case(ca, "expired")))
    config = write_config([{"name": "risky", "url": url, "insecure": True}, {"name": "checked", "url": url}])
    table = run("pick", "--config", str(config))
    assert "insecure: true" in table.stderr and "NOT checked" in table.stderr
    assert "risky: certificate NOT checked (insecure: true)" in table.stdout, "a narrow table may cut its mark short"
    status = run("status", "--config", str(config))
    assert "risky: certificate NOT checked (insecure: true)" in status.stdout
    assert "checked: certificate NOT" not in table.stdout + status.stdout
    as_json = run("pick", "--config", str(config), "--json")
    lines = {line["name"]: line for line in json.loads(as_json.stdout)["lines"]}
    assert lines["risky"]["insecure"] is True and lines["risky"]["outcomes"][0] == "ok"
    assert lines["checked"]["insecure"] is False and lines["checked"]["outcomes"][0] == "tls"
    status_lines = json.loads(run("status", "--config", str(config), "--json").stdout)["lines"]
    assert [line["insecure"] for line in status_lines] == [True, False]


# ---------------------------------------------------------------- redirects


def _bounce(route: dict[str, str]) -> object:
    """Redirect /start/ to route["to"] (set once every port is known), answer the API everywhere else."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await read_request(reader)
        if b" /start/" in request:
            writer.write(head("302 Found", location=route["to"], content_length=0))
        else:
            writer.write(JSON_HEAD + MODELS_BODY)
        await writer.drain()
        writer.close()

    return handler


def _authorization_sent(request: bytes) -> bool:
    return b"\r\nauthorization:" in request.lower()


@pytest.mark.parametrize(
    "case, target, lands, keeps_key",
    [
        ("same origin, another path", "{line}/v1/models", "line", True),
        ("another host name, same port (127.0.0.1 -> localhost)", "{line_by_name}/v1/models", "line", False),
        ("same host, another port", "{other}/v1/models", "other", False),
    ],
)
def test_a_redirect_carries_the_key_only_within_its_origin(server: ServerThread, case: str, target: str, lands: str, keeps_key: bool) -> None:
    """As httpx (the OpenAI SDK) does: Authorization is dropped when scheme, host or port change (probe.follow_redirects: any)."""
    seen: dict[str, list[bytes]] = {"line": [], "other": []}
    route: dict[str, str] = {}
    line = start_raw_server(server, recording(seen["line"], _bounce(route)))
    other = start_raw_server(server, recording(seen["other"], _bounce(route)))
    route["to"] = target.format(line=line, line_by_name=line.replace("127.0.0.1", "localhost"), other=other)
    sample, _ = probe(line + "/start", key=KEY, follow="any")
    assert sample.outcome == "ok", sample.error
    first = seen["line"].pop(0)
    assert _authorization_sent(first) and KEY.encode() in first, "the key goes to the line itself"
    assert len(seen[lands]) == 1, f"{case}: the redirect was not followed to where expected"
    assert _authorization_sent(seen[lands][0]) is keeps_key, f"{case}: {seen[lands][0]!r}"


@pytest.mark.parametrize(
    "follow, target, outcome, lands",
    [
        ("same-origin", "{line}/v1/models", "ok", "line"),
        ("same-origin", "{line_by_name}/v1/models", "redirect", None),
        ("same-origin", "{other}/v1/models", "redirect", None),
        ("none", "{line}/v1/models", "redirect", None),
        ("any", "{other}/v1/models", "ok", "other"),
    ],
)
def test_redirects_are_followed_as_probe_follow_redirects_says(server: ServerThread, follow: str, target: str, outcome: str, lands: str | None) -> None:
    """Issue 11 item 22: a redirect to a LAN address had its page title recorded and shown as the line's answer."""
    seen: dict[str, list[bytes]] = {"line": [], "other": []}
    route: dict[str, str] = {}
    line = start_raw_server(server, recording(seen["line"], _bounce(route)))
    other = start_raw_server(server, recording(seen["other"], _bounce(route)))
    route["to"] = target.format(line=line, line_by_name=line.replace("127.0.0.1", "localhost"), other=other)
    sample, _ = probe(line + "/start", key=KEY, follow=follow)
    assert sample.outcome == outcome, sample.error
    assert len(seen["line"]) == (2 if lands == "line" else 1)
    assert len(seen["other"]) == (1 if lands == "other" else 0), "a redirect not followed sends nothing there"
    if outcome == "redirect":
        where = route["to"].removesuffix("/v1/models")
        assert sample.error == f"redirected to {where} (probe.follow_redirects: {follow})"
        assert sample.success is False


def test_a_line_redirected_elsewhere_is_shown_as_such(server: ServerThread, write_config, run) -> None:
    route: dict[str, str] = {}
    lan: list[bytes] = []
    line = start_raw_server(server, _bounce(route))
    portal = b"<html><head><title>Router login</title></head></html>"
    elsewhere = start_raw_server(server, recording(lan, replies(head(content_type="text/html", content_length=len(portal)) + portal)))
    route["to"] = elsewhere + "/portal"  # plays a LAN page: it must not be asked, nor its title shown as the line's
    config = write_config({"moved": line + "/start", "good": start_raw_server(server, replies(JSON_HEAD + MODELS_BODY))})
    result = run("pick", "--config", str(config), "--json")
    lines = {entry["name"]: entry for entry in json.loads(result.stdout)["lines"]}
    assert lines["moved"]["outcomes"] == ["redirect"] * 3
    assert lines["moved"]["error"] == f"redirected to {elsewhere} (probe.follow_redirects: same-origin)"
    assert json.loads(result.stdout)["chosen"]["name"] == "good"
    assert not lan, "the page elsewhere was never requested"
    status = run("status", "--config", str(config)).stdout
    assert f"redirected to {elsewhere}" in status and "Router login" not in status


def test_a_redirect_loop_ends_at_once(server: ServerThread) -> None:
    sample, elapsed = probe(start_raw_server(server, redirects(302, "/v1/models")))
    assert sample.outcome == "protocol" and "redirects" in sample.error
    assert elapsed < TIMEOUT


@pytest.mark.parametrize("location", ["file:///etc/passwd", "http://[::1", "ftp://127.0.0.1/x"])
def test_a_redirect_to_something_that_is_not_http_is_a_protocol_error(server: ServerThread, location: str) -> None:
    sample, _ = probe(start_raw_server(server, redirects(302, location)))
    assert sample.outcome == "protocol", sample.error
    assert location in sample.error


def _redirect_raw(location: bytes) -> bytes:
    return b"HTTP/1.1 302 Found\r\nLocation: " + location + b"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


HOSTILE_LOCATIONS = {
    "an empty label": b"http://evil..example/v1/models",
    "a lone dot": b"http://./",
    "a 300-character label": b"http://" + b"a" * 300 + b".example/",
    "non-ASCII host bytes": b"http://\xff\xfe.example/",
    "an IPv4 address cut short": b"http://127.1/",
    "an empty host": b"http:///v1/models",
}


@pytest.mark.parametrize("follow", ["same-origin", "any"])
def test_a_hostile_redirect_fails_its_own_sample_and_the_round_records_every_line(server: ServerThread, follow: str) -> None:
    """Issue 11 item 14: these crashed the whole round for every line (aiohttp and the IDNA codec raise what classify did not know)."""
    route: dict[str, str] = {}
    seen: list[bytes] = []
    home = start_raw_server(server, recording(seen, _bounce(route)))
    route["to"] = home.replace("http://", "http://user:pass@") + "/landed/v1/models"  # same origin, with credentials
    lines = [Line("good", start_raw_server(server, replies(JSON_HEAD + MODELS_BODY))), Line("userinfo", home + "/start")]
    lines += [Line(f"bad{n}", start_raw_server(server, replies(_redirect_raw(location)))) for n, location in enumerate(HOSTILE_LOCATIONS.values())]
    settings = ProbeSettings(timeout=TIMEOUT, samples=2, follow_redirects=follow)
    runs = asyncio.run(probe_round(lines, settings, KEY))
    samples = {run.line.name: run.samples for run in runs}
    assert [sample.outcome for sample in samples["good"]] == ["ok", "ok"]
    assert [sample.outcome for sample in samples["userinfo"]] == ["ok", "ok"], samples["userinfo"][0].error
    landed = [request for request in seen if b"/landed/" in request]
    assert landed and all(f"Bearer {KEY}".encode() in request and b"Basic" not in request for request in landed), "the relay's credentials are never sent"
    for name, location in zip((f"bad{n}" for n in range(len(HOSTILE_LOCATIONS))), HOSTILE_LOCATIONS):
        outcomes = {sample.outcome for sample in samples[name]}
        assert outcomes <= {"protocol", "redirect"} and len(samples[name]) == 2, (location, samples[name])
        assert all(sample.error and "\n" not in sample.error for sample in samples[name])


def test_the_daemon_keeps_every_round_when_a_line_redirects_with_credentials(server: ServerThread, tmp_path: Path) -> None:
    """The daemon logged "round failed" every round and recorded nothing, for every line."""
    route: dict[str, str] = {}
    home = start_raw_server(server, _bounce(route))
    route["to"] = home.replace("http://", "http://user:pass@") + "/landed/v1/models"
    lines = [{"name": "good", "url": start_raw_server(server, replies(JSON_HEAD + MODELS_BODY))}, {"name": "userinfo", "url": home + "/start"}]
    lines += [{"name": f"bad{n}", "url": start_raw_server(server, replies(_redirect_raw(location)))} for n, location in enumerate(HOSTILE_LOCATIONS.values())]
    config = tmp_path / "lines.yaml"
    config.write_text(yaml.safe_dump({"key_env": "OPENAI_API_KEY", "probe": {"timeout": 1, "samples": 1, "interval": 0.2, "follow_redirects": "any"}, "lines": lines}))
    db = tmp_path / "lp.db"
    env = {k: v for k, v in os.environ.items() if "PROXY" not in k.upper()} | {"OPENAI_API_KEY": KEY}
    daemon = subprocess.Popen([sys.executable, "-m", "linepicker", "daemon", "--config", str(config), "--db", str(db), "--listen", "off"], stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 20
        recorded = 0
        while recorded < 3 and time.monotonic() < deadline and daemon.poll() is None:
            time.sleep(0.1)
            with contextlib.suppress(sqlite3.Error), contextlib.closing(sqlite3.connect(db)) as conn:
                recorded = conn.execute("select count(*) from rounds r where (select count(distinct line_id) from samples s where s.round_id = r.id) = ?", [len(lines)]).fetchone()[0]
        assert daemon.poll() is None, "the daemon keeps running"
    finally:
        daemon.terminate()
        _, log = daemon.communicate(timeout=15)
    assert recorded >= 3, f"rounds recording all {len(lines)} lines: {recorded}\n{log}"
    assert "round failed" not in log and "Traceback" not in log, log


# ---------------------------------------------------------------- scale


def test_a_thousand_lines_a_third_dead_finish_within_one_timeout(server: ServerThread, write_config, run) -> None:
    """With default probe settings apart from the timeout: dead lines must not queue behind each other."""
    ok = start_raw_server(server, replies(JSON_HEAD + MODELS_BODY), backlog=1024)
    dead = start_raw_server(server, never_answers, backlog=1024)
    lines = [{"name": f"l{i}", "url": f"{dead}/d{i}" if i % 3 == 0 else f"{ok}/l{i}"} for i in range(1000)]
    timeout = 3
    config = write_config(lines, probe={"timeout": timeout})
    started = time.perf_counter()
    result = run("probe", "--config", str(config), "--json")
    elapsed = time.perf_counter() - started
    assert result.exit_code == 0, result.output
    outcomes = [line["outcomes"] for line in json.loads(result.stdout)["lines"]]
    assert sum(o == ["timeout"] for o in outcomes) == 334
    assert sum(o == ["ok"] * 3 for o in outcomes) == 666
    assert elapsed < timeout + 3, f"1,000 lines took {elapsed:.1f}s with a {timeout}s timeout"


FD_CHILD = r"""
import asyncio, collections, json, resource, sys
from linepicker.config import Line, ProbeSettings
from linepicker.probe.round import probe_round
resource.setrlimit(resource.RLIMIT_NOFILE, (int(sys.argv[2]), resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
lines = [Line(f"l{i}", f"{sys.argv[1]}/l{i}") for i in range(300)]
runs = asyncio.run(probe_round(lines, ProbeSettings(timeout=10, samples=1), None))
print(json.dumps(collections.Counter(s.error or s.outcome for run in runs for s in run.samples)))
"""


def test_a_low_open_file_limit_is_not_blamed_on_the_lines(server: ServerThread) -> None:
    """300 lines at once under a 128-file limit: the probes wait for sockets rather than fail with EMFILE."""
    slow = start_raw_server(server, head_then_drips(JSON_HEAD, MODELS_BODY, 0.001), backlog=1024)
    child = subprocess.run([sys.executable, "-c", FD_CHILD, slow, "128"], capture_output=True, text=True, timeout=60)
    assert child.returncode == 0, child.stderr
    assert json.loads(child.stdout) == {"ok": 300}
