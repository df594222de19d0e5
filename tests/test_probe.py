"""Each way a relay line can fail ends in the outcome a user would name, with honest phases."""

from __future__ import annotations

import asyncio
import time

import pytest
from aiohttp import web

from linepicker.config import Line, ProbeSettings
from linepicker.probe.round import probe_round
from servers import (
    Relay,
    ServerThread,
    head,
    read_request,
    refused_url,
    replies,
    reset_connection,
    send_garbage,
    start_raw_server,
    tls_server_context,
)


def probe(url: str, key: str | None = None, timeout: float = 2.0, samples: int = 1, name: str = "x", proxy: str | None = None, follow: str = "same-origin"):
    settings = ProbeSettings(timeout=timeout, samples=samples, follow_redirects=follow)
    runs = asyncio.run(probe_round([Line(name, url, proxy)], settings, key))
    return runs[0].samples


def test_ok_line_reports_every_phase_it_passes_through(relay: Relay) -> None:
    [sample] = probe(relay.url("fast", delay_ms=60))
    assert sample.outcome == "ok" and sample.success
    assert sample.status == 200
    assert sample.phases.dns_ms is None, "an IP literal needs no lookup, and none is invented"
    assert sample.phases.connect_ms is not None and sample.phases.connect_ms >= 0
    assert sample.phases.tls_ms is None, "plain http has no handshake"
    assert 55 <= sample.phases.ttfb_ms < 1000
    assert sample.phases.total_ms >= sample.phases.ttfb_ms


def test_hostname_is_resolved_and_timed(relay: Relay) -> None:
    url = relay.url("named").replace("127.0.0.1", "localhost")
    [sample] = probe(url)
    assert sample.outcome == "ok"
    assert sample.phases.dns_ms is not None


def test_each_sample_uses_a_fresh_connection(relay: Relay) -> None:
    samples = probe(relay.url("fresh"), samples=3)
    assert [s.outcome for s in samples] == ["ok", "ok", "ok"]
    assert all(s.phases.connect_ms is not None for s in samples), "a reused connection would skip connect"


def test_hanging_line_times_out_at_the_deadline_and_gets_no_more_samples(relay: Relay) -> None:
    started = time.perf_counter()
    samples = probe(relay.url("hang", mode="hang"), timeout=0.5, samples=3)
    elapsed = time.perf_counter() - started
    assert [s.outcome for s in samples] == ["timeout"]
    assert elapsed < 2.0
    assert samples[0].phases.connect_ms is not None, "a failed sample keeps the phases it reached"
    assert samples[0].phases.ttfb_ms is None


@pytest.mark.parametrize(
    "mode, outcome, words",
    [
        ("html502", "http_5xx", "502 Bad Gateway"),
        ("block", "not_api", "Access Denied"),
        ("error503", "http_5xx", "HTTP 503"),
        ("ratelimit", "rate_limited", "429"),
    ],
)
def test_error_pages_are_named(relay: Relay, mode: str, outcome: str, words: str) -> None:
    [sample] = probe(relay.url(mode, mode=mode))
    assert sample.outcome == outcome
    assert words in sample.error


def test_refused_port() -> None:
    [sample] = probe(refused_url())
    assert sample.outcome == "refused" and not sample.success


def test_garbage_bytes_are_a_protocol_error(server: ServerThread) -> None:
    [sample] = probe(server.start_raw(send_garbage))
    assert sample.outcome == "protocol"


@pytest.mark.parametrize("status", ["200 OK", "401 Unauthorized"])
def test_json_nested_past_python_s_limit_is_not_the_api_and_breaks_nothing(server: ServerThread, status: str) -> None:
    body = b"[" * 5000 + b"]" * 5000
    reply = head(status, content_type="application/json", content_length=len(body)) + body
    [sample] = probe(start_raw_server(server, replies(reply)))
    assert sample.outcome == "not_api", sample.error


def test_connection_reset(server: ServerThread) -> None:
    [sample] = probe(server.start_raw(reset_connection))
    assert sample.outcome == "reset"


def test_401_without_a_key_still_proves_the_line_reachable(relay: Relay) -> None:
    [sample] = probe(relay.url("auth", mode="auth", key="sk-right"))
    assert sample.outcome == "auth"
    assert sample.success, "the API answered in its own shape: the line works"


def test_401_with_a_key_means_the_key_is_rejected(relay: Relay) -> None:
    [sample] = probe(relay.url("auth", mode="auth", key="sk-right"), key="sk-wrong-123")
    assert sample.outcome == "auth"
    assert not sample.success
    assert "sk-wrong-123" not in (sample.error or "")


def test_the_right_key_is_sent_as_a_bearer_token(relay: Relay) -> None:
    [sample] = probe(relay.url("auth", mode="auth", key="sk-right"), key="sk-right")
    assert sample.outcome == "ok"
    assert relay.requests["auth"][-1]["Authorization"] == "Bearer sk-right"


def test_flaky_line_mixes_outcomes(relay: Relay) -> None:
    samples = probe(relay.url("flaky", mode="flaky"), samples=4)
    assert [s.outcome for s in samples] == ["ok", "http_5xx", "ok", "http_5xx"]


def test_trusted_tls_measures_the_handshake_apart_from_connect(tls_relay: Relay, trust) -> None:
    [sample] = probe(tls_relay.url("tls-ok"))
    assert sample.outcome == "ok", sample.error
    assert sample.phases.tls_ms is not None and sample.phases.tls_ms > 0
    assert sample.phases.connect_ms is not None


def test_untrusted_certificate_is_a_tls_outcome(tls_relay: Relay, monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    import trustme

    other = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other))
    monkeypatch.setenv("SSL_CERT_FILE", str(other))
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    [sample] = probe(tls_relay.url("tls-bad"))
    assert sample.outcome == "tls"
    assert "certificate" in sample.error
    assert sample.phases.connect_ms is not None and sample.phases.tls_ms is None


def test_redirect_to_another_host_drops_the_key(server: ServerThread, relay: Relay) -> None:
    other = server.start_relay()
    target = other.url("landing").replace("127.0.0.1", "localhost") + "/v1/models"
    url = relay.url("moved", mode="redirect", redirect_to=target)
    [sample] = probe(url, key="sk-secret-1", follow="any")
    assert sample.outcome == "ok"
    assert relay.requests["moved"][-1]["Authorization"] == "Bearer sk-secret-1"
    assert "Authorization" not in other.requests["landing"][-1]


def test_redirect_loop_ends(relay: Relay) -> None:
    url = relay.url("loop", mode="redirect")
    relay.behaviours["loop"].redirect_to = url + "/v1/models"
    [sample] = probe(url)
    assert sample.outcome == "protocol"
    assert "redirects" in sample.error


def test_lines_are_probed_concurrently(relay: Relay) -> None:
    lines = [Line(f"slow{i}", relay.url(f"slow{i}", delay_ms=300)) for i in range(10)]
    started = time.perf_counter()
    runs = asyncio.run(probe_round(lines, ProbeSettings(timeout=5, samples=1), None))
    assert all(run.samples[0].outcome == "ok" for run in runs)
    assert time.perf_counter() - started < 2.0, "ten 300 ms lines one after another would take 3 s"


def test_https_proxy_from_the_environment_is_used_and_no_proxy_bypasses_it(relay: Relay, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTP_PROXY", refused_url())
    [through_proxy] = probe(relay.url("p1"))
    assert through_proxy.outcome == "refused", "the dead proxy was used"
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    [bypassed] = probe(relay.url("p2"))
    assert bypassed.outcome == "ok"
    [line_says_none] = probe(relay.url("p3"), proxy="none")
    assert line_says_none.outcome == "ok"


def test_insecure_line_skips_certificate_checks_only_when_asked(tls_relay: Relay, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", "/nonexistent-ca.pem")
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    settings = ProbeSettings(timeout=2, samples=1)
    lines = [Line("checked", tls_relay.url("checked")), Line("unchecked", tls_relay.url("unchecked"), insecure=True)]
    runs = asyncio.run(probe_round(lines, settings, None))
    assert [run.samples[0].outcome for run in runs] == ["tls", "ok"]
    assert runs[1].samples[0].phases.tls_ms is not None


def test_probe_concurrency_bounds_the_requests_in_flight(server: ServerThread) -> None:
    """Answers that come within the 0.1 s lease keep the bound strict: accuracy depends on a loop that is not crowded."""
    flight = {"now": 0, "most": 0, "served": 0}

    async def models(request: web.Request) -> web.Response:
        flight["now"] += 1
        flight["most"] = max(flight["most"], flight["now"])
        await asyncio.sleep(0.03)
        flight["now"] -= 1
        flight["served"] += 1
        return web.json_response({"object": "list", "data": []})

    app = web.Application()
    app.router.add_get("/{line}/v1/models", models)
    base = f"http://127.0.0.1:{server.start_app(app)}"
    settings = ProbeSettings(timeout=2, samples=2, concurrency=3)
    runs = asyncio.run(probe_round([Line(f"l{n}", f"{base}/l{n}") for n in range(12)], settings, None))
    assert all(s.outcome == "ok" for run in runs for s in run.samples)
    assert flight["served"] == 24 and flight["most"] == 3


@pytest.mark.parametrize("tls", [False, True])
def test_time_to_first_byte_ends_at_the_answer_s_first_bytes(server: ServerThread, ca, trust, tls: bool) -> None:
    """Like curl's time_starttransfer: a status line sent at once and the rest of the head 0.3 s later is a fast first byte.

    Over TLS too, where the first bytes the socket reads after the request may be a session ticket, not the answer.
    """
    body = b'{"object": "list", "data": []}'

    async def slow_head(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\n")
        await writer.drain()
        await asyncio.sleep(0.3)
        writer.write(f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
        await writer.drain()
        writer.close()

    context = tls_server_context(ca.issue_cert("127.0.0.1")) if tls else None
    url = start_raw_server(server, slow_head, ssl_context=context)
    [sample] = probe(url)
    assert sample.outcome == "ok", sample.error
    assert sample.phases.ttfb_ms < 150, sample.phases
    assert sample.phases.transfer_ms >= 250, "the rest of the answer is transfer"
