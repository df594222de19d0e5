"""The gateway core with the real OpenAI and Anthropic SDKs, through it to loopback lines that answer or fail.

The user's promise: a client pointed at the gateway once sees no error when the
chosen line dies before answering, and sees a broken answer (never a clean,
short one) when a line dies mid-way.
"""

from __future__ import annotations

import asyncio
import http.client
import socket
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import anthropic
import httpx2
import openai
import pytest

from linepicker.config import GatewaySettings, Line, Listen
from linepicker.daemon.gateway import Breakers, Gateway
from linepicker.traffic import Attempt
from servers import (
    ApiRelay,
    ServerThread,
    head,
    read_request,
    refused_url,
    send_garbage,
    start_api_relay,
    start_raw_server,
)

KEY = "sk-gw-test-0123456789abcdefXYZ"


@dataclass
class Running:
    gateway: Gateway
    url: str
    attempts: list[Attempt]
    order: list[Line] = field(default_factory=list)

    def openai(self, **options: Any) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=KEY, max_retries=0, timeout=10, **options)

    def anthropic(self) -> anthropic.Anthropic:
        return anthropic.Anthropic(base_url=self.url, api_key=KEY, max_retries=0, timeout=10)

    def settled(self, count: int, timeout: float = 5.0) -> list[Attempt]:
        """The attempts once `count` are in: the last one is recorded just after the client's last byte."""
        deadline = time.monotonic() + timeout
        while len(self.attempts) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(self.attempts)} attempts recorded, expected {count}: {self.attempts}")
            time.sleep(0.01)
        return list(self.attempts)


@pytest.fixture
def api(server: ServerThread) -> ApiRelay:
    return start_api_relay(server)


@pytest.fixture
def gateway(server: ServerThread) -> Iterator[Callable[..., Running]]:
    started: list[Gateway] = []

    def start(lines: dict[str, str], **settings: Any) -> Running:
        attempts: list[Attempt] = []
        order = [Line(name, url) for name, url in lines.items()]
        gw = Gateway(GatewaySettings(listen=Listen("127.0.0.1", 0), **settings), lambda: order, attempts.append)
        url = server.run(gw.start())
        started.append(gw)
        return Running(gw, url, attempts, order)

    yield start
    for gw in started:
        server.run(gw.close())


def chat_text(client: openai.OpenAI, stream: bool) -> tuple[str, str | None]:
    """The answer's text and the line that served it, as the user's program sees them."""
    messages = [{"role": "user", "content": "hi"}]
    if not stream:
        raw = client.chat.completions.with_raw_response.create(model="gpt-x", messages=messages)
        return raw.parse().choices[0].message.content or "", raw.headers.get("x-linepicker-line")
    with client.chat.completions.with_streaming_response.create(model="gpt-x", messages=messages, stream=True,
                                                                 stream_options={"include_usage": True}) as raw:
        text = "".join(chunk.choices[0].delta.content or "" for chunk in raw.parse() if chunk.choices)
        return text, raw.headers.get("x-linepicker-line")


def responses_text(client: openai.OpenAI) -> tuple[str, str | None]:
    with client.responses.with_streaming_response.create(model="gpt-x", input="hi", stream=True) as raw:
        text = "".join(event.delta for event in raw.parse() if event.type == "response.output_text.delta")
        return text, raw.headers.get("x-linepicker-line")


def messages_text(client: anthropic.Anthropic) -> tuple[str, str | None]:
    with client.messages.with_streaming_response.create(model="claude-x", max_tokens=50, messages=[{"role": "user", "content": "hi"}], stream=True) as raw:
        text = "".join(event.delta.text for event in raw.parse() if event.type == "content_block_delta")
        return text, raw.headers.get("x-linepicker-line")


CALLS: dict[str, Callable[[Running], tuple[str, str | None]]] = {
    "chat": lambda gw: chat_text(gw.openai(), stream=False),
    "chat stream": lambda gw: chat_text(gw.openai(), stream=True),
    "responses stream": lambda gw: responses_text(gw.openai()),
    "messages stream": lambda gw: messages_text(gw.anthropic()),
}


@pytest.mark.parametrize("call", CALLS)
def test_each_api_goes_through_to_the_chosen_line_with_the_key_untouched(api: ApiRelay, gateway: Callable[..., Running], call: str) -> None:
    gw = gateway({"a": api.url("a"), "b": api.url("b")})
    text, line = CALLS[call](gw)
    assert text.split() == [f"a{i}" for i in range(5)]
    assert line == "a"
    assert not api.requests["b"]
    sent = api.requests["a"][0]["headers"]
    assert sent.get("Authorization") == f"Bearer {KEY}" or sent.get("X-Api-Key") == KEY
    assert sent["Host"] == api.base.removeprefix("http://"), "Host is the line's, not the gateway's"
    [attempt] = gw.settled(1)
    assert (attempt.line, attempt.outcome, attempt.success, attempt.status) == ("a", "ok", True, 200)
    assert attempt.request_bytes == len(api.requests["a"][0]["body"]) > 0
    if "stream" in call:
        assert attempt.stream and attempt.ttft_ms is not None and attempt.ttft_ms >= attempt.ttfb_ms
        assert attempt.tokens == 5, "the usage the stream carried"


FAILURES = {
    "refuses": lambda api: refused_url(),
    "answers an HTML 502": lambda api: api.url("a", "html502"),
    "answers a 403 block page": lambda api: api.url("a", "block"),
    "opens its stream with an error event": lambda api: api.url("a", "error_event"),
}


@pytest.mark.parametrize("failure", FAILURES)
@pytest.mark.parametrize("call", ["chat stream", "responses stream", "messages stream"])
def test_a_chosen_line_failing_before_its_answer_costs_the_client_nothing(
    api: ApiRelay, gateway: Callable[..., Running], failure: str, call: str
) -> None:
    gw = gateway({"a": FAILURES[failure](api), "b": api.url("b")})
    text, line = CALLS[call](gw)
    assert (text.split(), line) == ([f"b{i}" for i in range(5)], "b"), "served by the next line, with no error"
    first, second = gw.settled(2)
    assert (first.line, first.success, first.failover) == ("a", False, True)
    assert first.outcome == {"refuses": "refused", "answers an HTML 502": "http_5xx", "answers a 403 block page": "not_api",
                             "opens its stream with an error event": "model_error"}[failure]
    assert (second.line, second.outcome, second.previous) == ("b", "ok", "a")


def test_a_non_streaming_call_fails_over_too(api: ApiRelay, gateway: Callable[..., Running]) -> None:
    gw = gateway({"a": api.url("a", "html502"), "b": refused_url(), "c": api.url("c")})
    assert chat_text(gw.openai(), stream=False) == ("c0 c1 c2 c3 c4", "c")
    assert [(a.line, a.outcome) for a in gw.settled(3)] == [("a", "http_5xx"), ("b", "refused"), ("c", "ok")]


@pytest.mark.parametrize("call", ["chat stream", "responses stream", "messages stream"])
def test_a_stream_cut_mid_way_makes_the_sdk_raise(api: ApiRelay, gateway: Callable[..., Running], call: str) -> None:
    gw = gateway({"a": api.url("a", "cut"), "b": api.url("b")})
    with pytest.raises((httpx2.HTTPError, openai.APIError, anthropic.APIError)):
        CALLS[call](gw)
    [attempt] = gw.settled(1)
    assert attempt.success is False and not attempt.failover, "bytes had reached the client: no failover"
    assert attempt.outcome in ("reset", "protocol") and "cut mid-answer" in (attempt.error or "")
    assert not api.requests["b"]


@pytest.mark.parametrize(
    "mode, error",
    [("auth", openai.AuthenticationError), ("ratelimit", openai.RateLimitError), ("json503", openai.InternalServerError)],
)
def test_the_apis_own_answers_pass_through_as_they_are(api: ApiRelay, gateway: Callable[..., Running], mode: str, error: type) -> None:
    gw = gateway({"a": api.url("a", mode), "b": api.url("b")})
    with pytest.raises(error) as raised:
        chat_text(gw.openai(), stream=True)
    assert raised.value.response.headers["x-linepicker-line"] == "a"
    assert not api.requests["b"], "the same account and key stand behind every line"
    [attempt] = gw.settled(1)
    assert attempt.success is True and not attempt.failover


def test_the_last_attempt_passes_its_answer_on_as_it_is(api: ApiRelay, gateway: Callable[..., Running]) -> None:
    gw = gateway({"a": refused_url(), "b": api.url("b", "html502"), "c": api.url("c", "html502"), "d": api.url("d")}, max_attempts=3)
    with pytest.raises(openai.InternalServerError) as raised:
        chat_text(gw.openai(), stream=False)
    assert raised.value.status_code == 502 and raised.value.response.headers["x-linepicker-line"] == "c"
    assert "502 Bad Gateway" in raised.value.response.text, "the line's own page"
    assert not api.requests["d"], "max_attempts lines at most"


def test_no_line_answering_is_one_json_error_naming_the_lines(gateway: Callable[..., Running]) -> None:
    gw = gateway({"a": refused_url(), "b": refused_url()})
    with pytest.raises(openai.APIStatusError) as raised:
        chat_text(gw.openai(), stream=False)
    assert raised.value.status_code == 502
    assert "no line answered (tried a, b)" in raised.value.message


def test_a_body_larger_than_max_replay_bytes_streams_to_one_line_without_failover(api: ApiRelay, gateway: Callable[..., Running]) -> None:
    gw = gateway({"a": api.url("a"), "b": api.url("b")}, max_replay_bytes=1024)
    big = "x" * 200_000
    client = gw.openai()
    answer = client.chat.completions.create(model="gpt-x", messages=[{"role": "user", "content": big}])
    assert answer.choices[0].message.content.startswith("a0")
    assert big.encode() in api.requests["a"][0]["body"], "the whole body arrived"
    api.modes["a"] = "html502"
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model="gpt-x", messages=[{"role": "user", "content": big}])
    assert not api.requests["b"], "a body that was not kept cannot be sent again"
    small = client.chat.completions.create(model="gpt-x", messages=[{"role": "user", "content": "hi"}])
    assert small.choices[0].message.content.startswith("b0"), "a small body still fails over"


def test_a_body_past_max_body_bytes_is_refused(api: ApiRelay, gateway: Callable[..., Running]) -> None:
    gw = gateway({"a": api.url("a")}, max_body_bytes=2048, max_replay_bytes=1024)
    with pytest.raises(openai.APIStatusError) as raised:
        gw.openai().chat.completions.create(model="gpt-x", messages=[{"role": "user", "content": "x" * 5000}])
    assert raised.value.status_code == 413 and "max_body_bytes" in raised.value.message


def request(url: str, method: str = "GET", path: str = "/v1/models", headers: dict[str, str] | None = None,
            body: bytes | None = None) -> tuple[int, dict[str, str], bytes]:
    """A plain HTTP request with exactly these headers (http.client adds Host only when not given)."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        connection.putrequest(method, path, skip_host="Host" in (headers or {}), skip_accept_encoding=True)
        for name, value in (headers or {}).items():
            connection.putheader(name, value)
        if body is not None:
            connection.putheader("Content-Length", str(len(body)))
        connection.endheaders(body)
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


@pytest.mark.parametrize(
    "headers, allowed",
    [
        ({}, True),
        ({"Host": "localhost:{port}"}, True),
        ({"Host": "[::1]:{port}"}, True),
        ({"Host": "evil.example:{port}"}, False),
        ({"Host": "127.0.0.1:1"}, False),
        ({"Origin": "http://localhost:5173"}, True),
        ({"Origin": "http://127.0.0.1:8080"}, True),
        ({"Origin": "https://evil.example"}, False),
        ({"Origin": "null"}, False),
    ],
)
def test_only_local_clients_are_served(api: ApiRelay, gateway: Callable[..., Running], headers: dict[str, str], allowed: bool) -> None:
    gw = gateway({"a": api.url("a")})
    port = gw.url.rsplit(":", 1)[1]
    status, answer, body = request(gw.url, headers={name: value.format(port=port) for name, value in headers.items()})
    if allowed:
        assert status == 200 and answer["x-linepicker-line"] == "a"
    else:
        assert status == 403 and b"linepicker gateway" in body
        assert not api.requests["a"], "a refused request reaches no line"


def test_hop_by_hop_headers_stay_on_their_hop(api: ApiRelay, gateway: Callable[..., Running]) -> None:
    gw = gateway({"a": api.url("a")})
    status, _, _ = request(gw.url, "POST", "/v1/chat/completions?beta=true", body=b'{"model": "m"}', headers={
        "Connection": "keep-alive, X-Private-Hop", "X-Private-Hop": "1", "Keep-Alive": "timeout=5", "TE": "trailers",
        "Proxy-Authorization": "Basic abc", "x-api-key": KEY, "anthropic-version": "2023-06-01", "Content-Type": "application/json",
    })
    assert status == 200
    seen = api.requests["a"][0]
    sent = {name.lower() for name in seen["headers"]}
    assert not sent & {"x-private-hop", "keep-alive", "te", "proxy-authorization"}
    assert seen["headers"]["x-api-key"] == KEY and seen["headers"]["anthropic-version"] == "2023-06-01"
    assert (seen["path"], seen["query"], seen["body"]) == ("v1/chat/completions", "beta=true", b'{"model": "m"}')
    assert "accept-encoding" not in sent and "user-agent" not in sent, "nothing the client did not send"


def test_claude_codes_head_request_is_answered_by_the_chosen_line(api: ApiRelay, gateway: Callable[..., Running]) -> None:
    gw = gateway({"a": api.url("a"), "b": api.url("b")})
    status, answer, body = request(gw.url, "HEAD", "/")
    assert (status, answer["x-linepicker-line"], body) == (200, "a", b"")
    assert not api.requests["b"], "a relay's HTML home page is not a failure"


def test_a_header_past_the_cap_is_refused(api: ApiRelay, gateway: Callable[..., Running]) -> None:
    gw = gateway({"a": api.url("a")}, max_header_bytes=2048)
    status, _, _ = request(gw.url, headers={"X-Big": "a" * 4096})
    assert status in (400, 431)
    assert not api.requests["a"]


def test_a_client_that_never_finishes_its_head_is_cut_off(api: ApiRelay, gateway: Callable[..., Running]) -> None:
    gw = gateway({"a": api.url("a")}, header_timeout=0.3)
    host, port = gw.url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(b"GET /v1/models HTTP/1.1\r\nHost: x\r\n")
        started = time.monotonic()
        assert sock.recv(100) == b"", "closed without an answer"
        assert time.monotonic() - started < 2
    status, _, _ = request(gw.url)
    assert status == 200, "other clients are served meanwhile"


def test_the_key_never_reaches_the_evidence_even_when_a_line_echoes_it(api: ApiRelay, gateway: Callable[..., Running]) -> None:
    gw = gateway({"a": api.url("a", "echo_key_page"), "b": api.url("b")})
    assert chat_text(gw.openai(), stream=False)[1] == "b"
    first, _ = gw.settled(2)
    assert first.error and "Denied" in first.error
    text = repr(gw.settled(2))
    for start in range(len(KEY) - 6):
        assert KEY[start:start + 6] not in text, f"a piece of the key is in {first.error!r}"


def test_a_line_failing_real_requests_is_skipped_then_tried_again(api: ApiRelay, gateway: Callable[..., Running]) -> None:
    gw = gateway({"a": api.url("a", "html502"), "b": api.url("b")}, breaker_failures=2, breaker_cooldown=0.5)
    client = gw.openai()
    for _ in range(4):
        assert chat_text(client, stream=False)[1] == "b"
    assert len(api.requests["a"]) == 2, "skipped once it failed twice"
    assert [a.tripped for a in gw.settled(6) if a.line == "a"] == [False, True]
    assert gw.gateway.breakers.state("a") == "open"
    time.sleep(0.6)
    api.modes["a"] = "ok"
    assert chat_text(client, stream=False)[1] == "a", "half-open: one request tries it, and it works again"
    gw.settled(7)
    assert gw.gateway.breakers.state("a") == "closed"


def test_breakers_back_off_while_a_line_keeps_failing() -> None:
    now = [0.0]
    breakers = Breakers(failures=1, cooldown=10, clock=lambda: now[0])
    assert breakers.record("a", ok=False) and breakers.state("a") == "open"
    now[0] = 10.5
    assert breakers.claim("a") and not breakers.claim("a"), "one trial at a time"
    assert breakers.record("a", ok=False) and breakers.reopens_in("a") == 20, "a failed trial doubles the wait"
    now[0] = 31
    breakers.claim("a")
    breakers.release("a")
    assert breakers.claim("a"), "a trial given back is free again"
    assert not breakers.record("a", ok=True) and breakers.state("a") == "closed"


def test_a_kept_alive_connection_the_line_closed_is_retried_not_failed_over(server: ServerThread, api: ApiRelay, gateway: Callable[..., Running]) -> None:
    """Relays close idle connections on their own schedule; a request racing that close is not the line's failure."""
    answer = head(content_type="application/json", content_length=len(b'{"object": "list", "data": []}')) + b'{"object": "list", "data": []}'

    async def one_answer_per_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(answer)  # says keep-alive (HTTP/1.1, no Connection: close)...
        await writer.drain()
        await read_request(reader)  # ...but drops the connection at the next request, unanswered
        writer.close()

    gw = gateway({"a": start_raw_server(server, one_answer_per_connection), "b": api.url("b")})
    for _ in range(3):
        status, answer_headers, _ = request(gw.url)
        assert (status, answer_headers["x-linepicker-line"]) == (200, "a")
    assert not api.requests["b"]
    assert all(a.line == "a" and a.success for a in gw.settled(3))


def events_every(interval: float) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Any]:
    """A line whose stream never ends: one event per interval until the client leaves."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        event = b'data: {"choices": [{"index": 0, "delta": {"content": "x"}}]}\n\n'
        try:
            writer.write(head(content_type="text/event-stream", transfer_encoding="chunked"))
            while True:
                writer.write(f"{len(event):x}\r\n".encode() + event + b"\r\n")
                await writer.drain()
                await asyncio.sleep(interval)
        except ConnectionError:
            pass
        finally:
            writer.close()

    return handler


def test_a_hostile_line_neither_crashes_the_gateway_nor_holds_up_other_requests(
    server: ServerThread, api: ApiRelay, gateway: Callable[..., Running]
) -> None:
    gw = gateway({"garbage": start_raw_server(server, send_garbage), "b": api.url("b")})
    assert chat_text(gw.openai(), stream=False)[1] == "b", "garbage is not an answer: next line"
    gw.order[:] = [Line("endless", start_raw_server(server, events_every(0.05)))]
    endless = gw.openai().chat.completions.create(model="gpt-x", messages=[{"role": "user", "content": "hi"}], stream=True)
    received = iter(endless)
    next(received)
    gw.order[:] = [Line("b", api.url("b"))]
    started = time.monotonic()
    assert chat_text(gw.openai(), stream=True)[1] == "b"
    assert time.monotonic() - started < 2
    assert next(received).choices[0].delta.content == "x", "the endless answer is still passed on, on its own"
    endless.close()


def test_a_client_leaving_mid_stream_closes_the_lines_answer(api: ApiRelay, gateway: Callable[..., Running]) -> None:
    api.words = 2000
    gw = gateway({"a": api.url("a")})
    with gw.openai().chat.completions.create(model="gpt-x", messages=[{"role": "user", "content": "hi"}], stream=True) as stream:
        next(iter(stream))
    [attempt] = gw.settled(1)
    assert (attempt.outcome, attempt.success) == ("unfinished", None), "the line did nothing wrong"


def test_first_byte_timeout_moves_a_silent_line_on(api: ApiRelay, gateway: Callable[..., Running]) -> None:
    gw = gateway({"a": api.url("a", "hang"), "b": api.url("b")}, first_byte_timeout=0.3)
    assert chat_text(gw.openai(), stream=True) == ("b0 b1 b2 b3 b4 ", "b")
    first = gw.settled(2)[0]
    assert first.outcome == "timeout" and "first_byte_timeout" in (first.error or "")


def test_a_chunked_body_past_max_body_bytes_is_refused_mid_upload(api: ApiRelay, gateway: Callable[..., Running]) -> None:
    gw = gateway({"a": api.url("a")}, max_body_bytes=4096, max_replay_bytes=1024)

    def slow_chunks() -> Iterator[bytes]:
        for _ in range(10):
            yield b"x" * 1000
            time.sleep(0.02)  # so the gateway is streaming to the line when the cap is passed

    host, port = gw.url.removeprefix("http://").rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    connection.request("POST", "/v1/chat/completions", body=slow_chunks(), headers={"Transfer-Encoding": "chunked"}, encode_chunked=True)
    response = connection.getresponse()
    assert response.status == 413 and b"max_body_bytes" in response.read()
    connection.close()
    assert len(api.requests["a"]) == 0, "the line never saw a complete request"


GATEWAY_CONFIG_ERRORS = [
    ("gateway: {listen: '0.0.0.0:9138'}", "gateway.listen '0.0.0.0:9138' is not a loopback address"),
    ("gateway: {listen: 'localhost:99999'}", "expected HOST:PORT"),
    ("gateway: {listen: '::1:9138'}", "IPv6 address in brackets"),
    ("gateway: {connect_timeout: 0}", "gateway.connect_timeout must be a positive duration up to 10m"),
    ("gateway: {first_byte_timeout: 2d}", "gateway.first_byte_timeout must be a positive duration up to 1d"),
    ("gateway: {max_attempts: 0}", "gateway.max_attempts must be a whole number from 1 to 10"),
    ("gateway: {max_replay_bytes: lots}", "gateway.max_replay_bytes must be a size"),
    ("gateway: {max_body_bytes: 1 MiB}", "gateway.max_replay_bytes is larger than gateway.max_body_bytes"),
    ("gateway: {allow_remote: maybe}", "gateway.allow_remote must be true or false"),
    ("gateway: {listne: 1}", "unknown key 'listne' in gateway"),
    ("gateway: [127.0.0.1:9138]", "gateway must be a mapping"),
]


@pytest.mark.parametrize("text, words", GATEWAY_CONFIG_ERRORS)
def test_a_wrong_gateway_block_is_one_line_naming_its_line(tmp_path: Any, text: str, words: str) -> None:
    from linepicker.config import parse_config
    from linepicker.errors import ConfigError

    path = tmp_path / "lines.yaml"
    with pytest.raises(ConfigError) as raised:
        parse_config(f"lines:\n  - {{name: a, url: 'https://a.example'}}\n{text}\n", path)
    message = str(raised.value)
    assert message.startswith(f"{path}:3: ") and words in message and "\n" not in message, message


def test_the_gateway_block_turns_it_on_with_documented_defaults(tmp_path: Any) -> None:
    from linepicker.config import parse_config

    lines = "lines:\n  - {name: a, url: 'https://a.example'}\n"
    assert parse_config(lines, tmp_path / "l.yaml").gateway is None
    on = parse_config(lines + "gateway:\n", tmp_path / "l.yaml").gateway
    assert on == GatewaySettings() and on.url == "http://127.0.0.1:9138"
    assert (on.connect_timeout, on.max_replay_bytes, on.max_attempts, on.allow_remote, on.first_byte_timeout) == (5.0, 32 * 2**20, 3, False, None)
    tuned = parse_config(lines + "gateway: {listen: '[::1]:8000', max_replay_bytes: 512 KiB, connect_timeout: 2s, first_byte_timeout: 2m}\n",
                         tmp_path / "l.yaml").gateway
    assert (tuned.url, tuned.max_replay_bytes, tuned.connect_timeout, tuned.first_byte_timeout) == ("http://[::1]:8000", 512 * 1024, 2.0, 120.0)
    remote = parse_config(lines + "gateway: {listen: '0.0.0.0:9138', allow_remote: true}\n", tmp_path / "l.yaml")
    assert remote.gateway.url == "http://127.0.0.1:9138" and "allow_remote is true" in remote.warnings[0]


def test_an_idle_client_connection_is_closed_after_idle_timeout(api: ApiRelay, gateway: Callable[..., Running]) -> None:
    gw = gateway({"a": api.url("a")}, idle_timeout=0.5, header_timeout=5)
    host, port = gw.url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(f"GET /v1/models HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
        answer = sock.recv(65536)
        assert answer.startswith(b"HTTP/1.1 200")
        started = time.monotonic()
        while sock.recv(65536):  # the rest of the answer, then the close
            pass
        assert 0.3 < time.monotonic() - started < 3, "a kept-alive connection with no request is closed after idle_timeout"
