"""Deeper probes: a streaming chat of either API, required models, Anthropic-style relays.

Every server here is real, on 127.0.0.1, and speaks server-sent events the way
OpenAI's and Anthropic's APIs do, or breaks them in one precise way.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from linepicker.probe.chat import ChatSample, Event, EventStream, chat_once
from linepicker.config import ChatSettings, Line, ProbeSettings, load_config
from linepicker.daemon.live import LiveState
from linepicker.daemon.metrics import registry
from linepicker.probe.phases import Phases
from linepicker.probe.round import probe_round
from linepicker.probe.sample import Sample
from linepicker.probe.timing import make_ssl_context
from linepicker.store import Store
from linepicker.daemon.web import render_page
from servers import ServerThread, head, refused_url, start_raw_server

KEY = "sk-test-chat-0123456789abcdef"
OPENAI_MODELS = {"object": "list", "data": [{"id": "gpt-4.1-mini", "object": "model"}, {"id": "gpt-4o", "object": "model"}]}
ANTHROPIC_MODELS = {
    "data": [{"type": "model", "id": "claude-sonnet-4-5", "display_name": "Claude Sonnet 4.5", "created_at": "2025-09-29T00:00:00Z"}],
    "has_more": False, "first_id": "claude-sonnet-4-5", "last_id": "claude-sonnet-4-5",
}
ANTHROPIC_AUTH = {"type": "error", "error": {"type": "authentication_error", "message": "invalid x-api-key"}}


@dataclass
class Chat:
    """How one line answers a chat; tests change it mid-run."""

    mode: str = "ok"  # see ChatRelay.stream
    first_ms: float = 0.0  # wait before the first token
    gap_ms: float = 0.0  # wait between tokens
    tokens: int = 8
    usage: bool = True
    models: list[str] = field(default_factory=lambda: ["gpt-4.1-mini", "gpt-4o"])
    models_ms: float = 0.0  # wait before answering /v1/models


@dataclass
class ChatRelay:
    """One server playing many lines under /line/<name>, with /v1/models and both chat endpoints."""

    lines: dict[str, Chat] = field(default_factory=lambda: defaultdict(Chat))
    chats: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: defaultdict(list))
    headers: dict[str, list[dict[str, str]]] = field(default_factory=lambda: defaultdict(list))
    base: str = ""

    def url(self, name: str, **chat: Any) -> str:
        self.lines[name] = Chat(**chat)
        return f"{self.base}/line/{name}"

    async def models(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        self.headers[name].append(dict(request.headers))
        chat = self.lines[name]
        await asyncio.sleep(chat.models_ms / 1000)
        if "anthropic-version" in request.headers:
            if request.headers.get("x-api-key") != KEY:
                return web.json_response(ANTHROPIC_AUTH, status=401)
            limit = int(request.query.get("limit", 20))  # Anthropic pages its list, 20 by default
            page = [{"type": "model", "id": m} for m in chat.models[:limit]]
            return web.json_response({**ANTHROPIC_MODELS, "data": page, "has_more": len(chat.models) > limit})
        return web.json_response({"object": "list", "data": [{"id": m, "object": "model"} for m in chat.models]})

    async def chat(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        self.headers[name].append(dict(request.headers))
        self.chats[name].append(await request.json())
        chat = self.lines[name]
        anthropic = request.path.endswith("/v1/messages")
        if chat.mode == "http404":
            return web.json_response({"error": {"message": f"model not found (key {KEY})", "type": "invalid_request_error"}}, status=404)
        if chat.mode == "html":
            return web.Response(text="<html><head><title>Access Denied</title></head></html>", content_type="text/html")
        if chat.mode == "json":
            return web.json_response({"id": "x", "object": "chat.completion", "choices": [{"message": {"content": "1 2 3"}}]})
        if chat.mode == "error200":
            return web.json_response({"error": {"message": "no available channel for model"}})
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        events = anthropic_events(chat) if anthropic else openai_events(chat)
        try:
            for index, raw in enumerate(events):
                if raw == "STALL":
                    await asyncio.sleep(3600)
                if raw == "FOREVER":  # valid chunks that never end
                    while True:
                        await response.write(sse(chunk({"content": "x" * 200})).encode())
                if raw == "ONE LINE":  # one event line that never ends
                    await response.write(b"data: ")
                    while True:
                        await response.write(b"x" * 4000)
                delay = chat.first_ms if index == 1 else chat.gap_ms if index > 1 else 0
                if delay:
                    await asyncio.sleep(delay / 1000)
                await response.write(raw.encode())
        except ConnectionError:
            pass
        return response


def sse(data: Any, event: str | None = None) -> str:
    text = data if isinstance(data, str) else json.dumps(data)
    return (f"event: {event}\n" if event else "") + f"data: {text}\n\n"


def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {"id": "c1", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


def openai_events(chat: Chat) -> list[str]:
    if chat.mode == "garbage":
        return [sse(chunk({"role": "assistant", "content": ""})), "data: {not json at all\n\n"]
    if chat.mode == "deep":
        return [sse(chunk({"role": "assistant", "content": ""})), "data: " + "[" * 5000 + "\n\n"]
    if chat.mode == "nochoices":
        return [sse({"id": "c1", "something": "else"})]
    if chat.mode == "error_event":
        return [sse(chunk({"role": "assistant", "content": ""})), sse(chunk({"content": "1"})), sse({"error": {"message": "upstream overloaded"}})]
    events = [sse(chunk({"role": "assistant", "content": ""}))]
    events += [sse(chunk({"content": f"{i} "})) for i in range(1, chat.tokens + 1)]
    if chat.mode == "stall":
        return events[:3] + ["STALL"]
    if chat.mode == "endless":
        return events[:2] + ["FOREVER"]
    if chat.mode == "longline":
        return events[:2] + ["ONE LINE"]
    if chat.mode == "empty":
        events = events[:1]
    events.append(sse(chunk({}, "length")))
    if chat.usage:
        events.append(sse({"id": "c1", "object": "chat.completion.chunk", "choices": [], "usage": {"prompt_tokens": 15, "completion_tokens": chat.tokens}}))
    if chat.mode == "truncated":
        return events[:4]
    return events + ["data: [DONE]\n\n"]


def anthropic_events(chat: Chat) -> list[str]:
    start = sse({"type": "message_start", "message": {"id": "m1", "type": "message", "role": "assistant", "content": [], "usage": {"input_tokens": 18, "output_tokens": 1}}}, "message_start")
    if chat.mode == "garbage":
        return [start, "event: content_block_delta\ndata: {\"type\": \"content_block_delta\", \"delta\": \n\n"]
    if chat.mode == "deep":
        return [start, "event: content_block_delta\ndata: " + "[" * 5000 + "\n\n"]
    if chat.mode == "nochoices":
        return [start, sse({"index": 0, "delta": {"text": "1"}}, "content_block_delta")]
    if chat.mode == "error_event":
        return [start, sse({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}, "error")]
    events = [start, sse({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}, "content_block_start")]
    events += [sse({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": f"{i} "}}, "content_block_delta") for i in range(1, chat.tokens + 1)]
    if chat.mode == "stall":
        return events[:4] + ["STALL"]
    events += [
        sse({"type": "content_block_stop", "index": 0}, "content_block_stop"),
        sse({"type": "message_delta", "delta": {"stop_reason": "max_tokens"}, "usage": {"output_tokens": chat.tokens}}, "message_delta"),
    ]
    if chat.mode == "truncated":
        return events[:5]
    return events + [": keep-alive comment\n\n", sse({"type": "message_stop"}, "message_stop")]


@pytest.fixture(scope="module")
def chat_relay(server: ServerThread) -> ChatRelay:
    relay = ChatRelay()
    app = web.Application()
    app.router.add_get("/line/{name}/v1/models", relay.models)
    app.router.add_post("/line/{name}/v1/chat/completions", relay.chat)
    app.router.add_post("/line/{name}/v1/messages", relay.chat)
    relay.base = f"http://127.0.0.1:{server.start_app(app)}"
    return relay


def chat(url: str, api: str = "openai", timeout: float = 5.0, key: str | None = KEY, follow: str = "same-origin", **settings: Any) -> tuple[ChatSample, float]:
    chat_settings = ChatSettings(model=settings.pop("model", "gpt-4.1-mini"), timeout=timeout, **settings)
    probe = ProbeSettings(api=api, chat=chat_settings, follow_redirects=follow)
    started = time.perf_counter()
    sample = asyncio.run(chat_once(Line("x", url), probe, key, make_ssl_context(), None))
    return sample, time.perf_counter() - started


# ---------------------------------------------------------------- the stream, measured


def test_an_openai_stream_gives_time_to_first_token_and_tokens_per_second(chat_relay: ChatRelay) -> None:
    sample, _ = chat(chat_relay.url("o", first_ms=150, gap_ms=20, tokens=10), max_tokens=12, prompt="Count.")
    assert sample.outcome == "ok" and sample.success, sample.error
    assert 140 <= sample.ttft_ms < 1500, "the wait before the first text, not before the headers"
    assert sample.phases.ttfb_ms < sample.ttft_ms
    assert sample.tokens == 10 and sample.usage, "the usage chunk's count, asked for with include_usage"
    assert 10 < sample.tokens_per_s <= 55, "9 gaps of 20 ms: at most 50 tokens/s"
    [body] = chat_relay.chats["o"]
    assert body == {
        "model": "gpt-4.1-mini", "max_tokens": 12, "stream": True,
        "messages": [{"role": "user", "content": "Count."}], "stream_options": {"include_usage": True},
    }
    sent = chat_relay.headers["o"][-1]
    assert sent["Authorization"] == f"Bearer {KEY}" and "x-api-key" not in sent


def test_without_a_usage_count_the_text_chunks_are_counted(chat_relay: ChatRelay) -> None:
    sample, _ = chat(chat_relay.url("nousage", tokens=6, usage=False, gap_ms=5))
    assert sample.outcome == "ok" and sample.tokens == 6 and not sample.usage


def test_an_anthropic_stream_is_asked_and_read_the_anthropic_way(chat_relay: ChatRelay) -> None:
    sample, _ = chat(chat_relay.url("a", first_ms=100, gap_ms=10, tokens=5), api="anthropic", model="claude-sonnet-4-5")
    assert sample.outcome == "ok", sample.error
    assert 90 <= sample.ttft_ms < 1500 and sample.tokens == 5 and sample.usage and sample.tokens_per_s
    [body] = chat_relay.chats["a"]
    assert body["model"] == "claude-sonnet-4-5" and body["stream"] is True and "stream_options" not in body
    sent = chat_relay.headers["a"][-1]
    assert sent["x-api-key"] == KEY and sent["anthropic-version"] == "2023-06-01" and "Authorization" not in sent


# ---------------------------------------------------------------- streams that break


@pytest.mark.parametrize("api", ["openai", "anthropic"])
def test_a_stream_that_stalls_mid_answer_ends_at_the_total_deadline(chat_relay: ChatRelay, api: str) -> None:
    sample, elapsed = chat(chat_relay.url(f"stall-{api}", mode="stall"), api=api, timeout=1.0)
    assert sample.outcome == "timeout" and not sample.success
    assert "stalled after" in sample.error
    assert sample.ttft_ms is not None, "the first token did come"
    assert 0.9 <= elapsed < 3.0, "a total deadline, not one per read"


@pytest.mark.parametrize("api", ["openai", "anthropic"])
@pytest.mark.parametrize(
    "mode, outcome, words",
    [
        ("garbage", "protocol", "not JSON"),
        ("deep", "protocol", "not JSON"),
        ("nochoices", "protocol", "malformed event"),
        ("error_event", "model_error", "mid-answer"),
        ("truncated", "protocol", "stream ended before"),
        ("http404", "http_4xx", "model not found"),
        ("html", "not_api", "Access Denied"),
        ("json", "not_api", "not an event stream"),
        ("error200", "model_error", "no available channel"),
    ],
)
def test_a_broken_answer_gets_its_outcome_and_no_crash(chat_relay: ChatRelay, api: str, mode: str, outcome: str, words: str) -> None:
    sample, elapsed = chat(chat_relay.url(f"{mode}-{api}", mode=mode), api=api)
    assert (sample.outcome, sample.success) == (outcome, False), sample.error
    assert words in sample.error
    assert KEY not in sample.error, "the key is redacted even when a relay echoes it"
    assert elapsed < 3.0


def test_an_answer_without_text_is_a_model_error(chat_relay: ChatRelay) -> None:
    sample, _ = chat(chat_relay.url("empty", mode="empty"))
    assert sample.outcome == "model_error" and "without any text" in sample.error


@pytest.mark.parametrize("mode", ["endless", "longline"])
def test_an_endless_stream_is_cut_at_the_cap(chat_relay: ChatRelay, mode: str) -> None:
    sample, elapsed = chat(chat_relay.url(mode, mode=mode), timeout=10)
    assert sample.outcome == "protocol" and "KiB" in sample.error
    assert elapsed < 5


def test_a_line_that_is_not_http_ends_as_protocol(server: ServerThread) -> None:
    sample, _ = chat(start_raw_server(server, _answer(b"\x00\xffnot http\r\n\r\n")))
    assert sample.outcome == "protocol" and not sample.success, sample.error


@pytest.mark.parametrize("split", [1, 3, 7, 1000])
def test_events_are_parsed_across_any_chunk_boundary(split: int) -> None:
    raw = (
        b": comment\r\nevent: first\r\ndata: a\r\ndata: b\r\n\r\n"
        b"data:no space\rid: 1\r\rdata: {\"x\": 1}\n\ndata: cut off at the end"
    )
    stream = EventStream()
    events = [event for i in range(0, len(raw), split) for event in stream.feed(raw[i:i + split])]
    assert events == [Event("first", "a\nb"), Event("message", "no space"), Event("message", '{"x": 1}')]


# ---------------------------------------------------------------- require_models and Anthropic-style lines


def test_a_line_without_a_required_model_is_not_eligible(chat_relay: ChatRelay, write_config, run) -> None:
    config = write_config(
        {"fast": chat_relay.url("rm-fast", models=["gpt-4o"]), "slow": chat_relay.url("rm-slow")},
        probe={"timeout": 2, "samples": 2, "require_models": ["gpt-4.1-mini", "gpt-4o"]},
    )
    result = run("pick", "--config", str(config), "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    lines = {line["name"]: line for line in data["lines"]}
    assert lines["fast"]["outcomes"] == ["missing_model", "missing_model"]
    assert "lacks gpt-4.1-mini" in lines["fast"]["error"] and "gpt-4o," not in lines["fast"]["error"]
    assert data["chosen"]["name"] == "slow"


def test_an_anthropic_line_is_probed_with_its_headers_and_judged_by_its_shapes(chat_relay: ChatRelay, write_config, run, monkeypatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
    config = write_config(
        {"claude": chat_relay.url("an-ok", models=["claude-sonnet-4-5"])},
        key_env="ANTHROPIC_API_KEY", probe={"timeout": 2, "samples": 1, "api": "anthropic", "require_models": ["claude-sonnet-4-5"]},
    )
    data = json.loads(run("pick", "--config", str(config), "--json").stdout)
    assert data["lines"][0]["outcomes"] == ["ok"], data["lines"][0]["error"]
    sent = chat_relay.headers["an-ok"][-1]
    assert sent["x-api-key"] == KEY and sent["anthropic-version"] == "2023-06-01" and "Authorization" not in sent
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-wrong")
    line = json.loads(run("probe", "--config", str(config), "--json").stdout)["lines"][0]
    assert line["outcomes"] == ["auth"], "Anthropic's error shape is the API refusing the key"


def test_a_required_model_past_anthropics_first_page_is_found(chat_relay: ChatRelay, write_config, run, monkeypatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
    models = [f"claude-old-{n}" for n in range(40)] + ["claude-sonnet-4-5"]
    probe = {"timeout": 2, "samples": 1, "api": "anthropic", "require_models": ["claude-sonnet-4-5"]}
    config = write_config({"claude": chat_relay.url("paged", models=models)}, key_env="ANTHROPIC_API_KEY", probe=probe)
    line = json.loads(run("probe", "--config", str(config), "--json").stdout)["lines"][0]
    assert line["outcomes"] == ["ok"], line["error"]
    short = write_config({"claude": chat_relay.url("paged", models=models)}, key_env="ANTHROPIC_API_KEY", probe={**probe, "path": "/v1/models?limit=10"})
    line = json.loads(run("probe", "--config", str(short), "--json").stdout)["lines"][0]
    assert line["outcomes"] == ["missing_model"] and "10 models listed, the first page of a longer list" in line["error"]


def test_an_openai_shaped_object_without_a_model_list_is_not_the_anthropic_api(server: ServerThread) -> None:
    body = json.dumps({"object": "status", "ok": True}).encode()
    url = start_raw_server(server, _answer(head(content_type="application/json", content_length=len(body)) + body))
    settings = ProbeSettings(timeout=2, samples=1, api="anthropic")
    [sample] = asyncio.run(probe_round([Line("x", url)], settings, KEY))[0].samples
    assert sample.outcome == "not_api" and "Anthropic-shaped" in sample.error


def _answer(raw: bytes) -> Any:
    """Read the request head, answer with exactly these bytes, close."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(raw)
        await writer.drain()
        writer.close()

    return handler


@pytest.mark.parametrize("header, other_origin, keeps_key", [("location", False, True), ("location", True, False), ("uri", True, False)])
def test_x_api_key_crosses_a_redirect_only_within_its_origin(server: ServerThread, header: str, other_origin: bool, keeps_key: bool) -> None:
    """Anthropic's x-api-key stays home like Authorization (probe.follow_redirects: any lets it leave at all)."""
    seen: dict[str, list[bytes]] = {"line": [], "other": []}
    route: dict[str, str] = {}
    body = json.dumps(ANTHROPIC_MODELS).encode()
    models = head(content_type="application/json", content_length=len(body)) + body

    def bounce(name: str) -> Any:
        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            request = await reader.readuntil(b"\r\n\r\n")
            seen[name].append(request)
            writer.write(head("302 Found", **{header: route["to"]}, content_length=0) if b" /start/" in request else models)
            await writer.drain()
            writer.close()

        return handler

    line = start_raw_server(server, bounce("line"))
    other = start_raw_server(server, bounce("other"))
    route["to"] = f"{other if other_origin else line}/v1/models"
    settings = ProbeSettings(timeout=2, samples=1, api="anthropic", follow_redirects="any")
    [sample] = asyncio.run(probe_round([Line("x", line + "/start")], settings, KEY))[0].samples
    assert sample.outcome == "ok", sample.error
    landed = seen["other" if other_origin else "line"][-1]
    assert KEY.encode() in seen["line"][0]
    assert (KEY.encode() in landed) is keeps_key, landed


def test_a_chat_redirected_to_another_origin_is_not_followed_by_default(server: ServerThread, chat_relay: ChatRelay) -> None:
    target = chat_relay.url("elsewhere") + "/v1/chat/completions"
    line = start_raw_server(server, _answer(head("307 Temporary Redirect", location=target, content_length=0)))
    sample, _ = chat(line)
    assert sample.outcome == "redirect" and sample.error == f"redirected to {chat_relay.base} (probe.follow_redirects: same-origin)"
    assert not chat_relay.chats["elsewhere"], "nothing, and no key, went there"
    followed, _ = chat(line, follow="any")
    assert followed.outcome == "ok", followed.error
    assert chat_relay.chats["elsewhere"][0]["stream"] is True, "a 307 keeps the method and the body"
    assert "Authorization" not in chat_relay.headers["elsewhere"][-1], "the key stays with the line's origin"


# ---------------------------------------------------------------- chat in a round: eligibility, record, cost


def chat_config(write_config, lines: dict[str, str], **chat: Any) -> Path:
    return write_config(lines, key_env="OPENAI_API_KEY", probe={"timeout": 2, "samples": 2, "chat": {"model": "gpt-4.1-mini", "timeout": 3, **chat}})


def test_a_line_whose_model_calls_fail_is_not_eligible(chat_relay: ChatRelay, write_config, run, db_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    config = chat_config(write_config, {"broken": chat_relay.url("e-broken", mode="http404"), "good": chat_relay.url("e-good", gap_ms=5)})
    result = run("pick", "--config", str(config), "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    lines = {line["name"]: line for line in data["lines"]}
    assert lines["broken"]["outcomes"] == ["ok", "ok"], "its /v1/models answers"
    assert lines["broken"]["healthy"] is False and "model calls fail: http_4xx" in lines["broken"]["why_not"]
    assert lines["good"]["chat"]["outcome"] == "ok" and lines["good"]["chat"]["ttft_ms"] > 0
    assert data["chosen"]["name"] == "good"
    table = run("pick", "--config", str(config))
    assert "ttft" in table.stdout and "tok/s" in table.stdout and "model calls fail" in table.stdout
    status = json.loads(run("status", "--config", str(config), "--json").stdout)
    assert {line["name"]: line["chat"]["outcome"] for line in status["lines"]} == {"broken": "http_4xx", "good": "ok"}
    rows = sqlite3.connect(db_path).execute("select outcome, ttft_ms, tokens from chats order by id").fetchall()
    assert len(rows) == 4 and {row[0] for row in rows} == {"ok", "http_4xx"}
    assert KEY.encode() not in db_path.read_bytes() + Path(str(db_path) + "-wal").read_bytes()

    chat_relay.lines["e-broken"].mode = "ok"  # it recovers: a failed chat is retried the very next round
    data = json.loads(run("pick", "--config", str(config), "--json").stdout)
    assert {line["name"]: line["healthy"] for line in data["lines"]} == {"broken": True, "good": True}


def test_pick_does_not_settle_on_a_fast_line_before_its_model_call_fails(chat_relay: ChatRelay, write_config, run, monkeypatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    lines = {"fast": chat_relay.url("s-fast", mode="http404"), "slow": chat_relay.url("s-slow", models_ms=300)}
    config = chat_config(write_config, lines)
    for _ in range(2):
        result = run("pick", "--config", str(config), "--json")
        assert result.exit_code == 0, result.output
        data = json.loads(result.stdout)
        assert data["chosen"]["name"] == "slow", "the only line whose model calls work"
        outcomes = {line["name"]: line["outcomes"] for line in data["lines"]}
        assert outcomes["slow"] == ["ok", "ok"], "waited for, not cut short as unfinished"


def test_a_recorded_failed_chat_still_counts_when_this_round_sends_none(chat_relay: ChatRelay, write_config, run, monkeypatch) -> None:
    """Without the key no chat is sent; the failure on record stands, and pick must not settle on that line."""
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    config = chat_config(write_config, {"fast": chat_relay.url("r-fast", mode="http404"), "slow": chat_relay.url("r-slow", models_ms=300)})
    assert json.loads(run("pick", "--config", str(config), "--json").stdout)["chosen"]["name"] == "slow"
    monkeypatch.delenv("OPENAI_API_KEY")
    result = run("pick", "--config", str(config), "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["chosen"]["name"] == "slow"
    assert {line["name"]: line["outcomes"] for line in data["lines"]}["slow"] == ["ok", "ok"]


def test_chat_runs_every_nth_round_and_only_when_configured(chat_relay: ChatRelay, write_config, run, monkeypatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    plain = write_config({"p": chat_relay.url("n-plain")}, name="plain.yaml")
    run("pick", "--config", str(plain))
    assert chat_relay.chats["n-plain"] == [], "off by default: it costs tokens"
    config = chat_config(write_config, {"n": chat_relay.url("n-every")}, every=3)
    for _ in range(7):
        assert run("pick", "--config", str(config)).exit_code == 0
    assert len(chat_relay.chats["n-every"]) == 3, "rounds 1, 4 and 7"


def test_without_the_key_no_chat_is_sent_and_the_user_is_told(chat_relay: ChatRelay, write_config, run, monkeypatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    config = chat_config(write_config, {"k": chat_relay.url("no-key")})
    result = run("pick", "--config", str(config), "--json")
    assert result.exit_code == 0, result.output
    assert "OPENAI_API_KEY is not set: probing without a key, and sending no chat" in result.stderr
    assert "no chat" not in run("status", "--config", str(config)).stderr, "only commands that probe say it"
    assert chat_relay.chats["no-key"] == [] and json.loads(result.stdout)["lines"][0]["chat"] is None


def test_a_dead_line_costs_no_tokens(chat_relay: ChatRelay, write_config, run, monkeypatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    config = chat_config(write_config, {"dead": refused_url(), "ok": chat_relay.url("d-ok")})
    data = json.loads(run("pick", "--config", str(config), "--json").stdout)
    assert {line["name"]: line["chat"] is None for line in data["lines"]} == {"dead": True, "ok": False}


def test_the_daemon_judges_model_calls_too(chat_relay: ChatRelay, write_config, run, db_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    config_path = chat_config(write_config, {"m": chat_relay.url("dm", mode="error_event")})
    run("probe", "--config", str(config_path))
    with Store(db_path) as store:
        [stats] = LiveState(load_config(config_path), store).stats()
    assert stats.model_error and "upstream overloaded" in stats.model_error


def test_the_daemon_page_and_metrics_show_the_model_call(chat_relay: ChatRelay, write_config, run, db_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    lines = {"fast": chat_relay.url("pm-fast", gap_ms=5), "broken": chat_relay.url("pm-broken", mode="http404")}
    config_path = chat_config(write_config, lines)
    assert run("probe", "--config", str(config_path)).exit_code == 0
    with Store(db_path) as store:
        live = LiveState(load_config(config_path), store)
        exposition = generate_latest(registry(live)).decode()
        page = render_page(live)
    values = {(s.name, s.labels["line"]): s.value for f in text_string_to_metric_families(exposition) for s in f.samples if "chat" in s.name}
    assert values[("linepicker_line_chat_ok", "fast")] == 1 and values[("linepicker_line_chat_ok", "broken")] == 0
    assert 0 < values[("linepicker_line_chat_ttft_seconds", "fast")] < 3
    assert values[("linepicker_line_chat_tokens_per_second", "fast")] > 0
    assert ("linepicker_line_chat_ttft_seconds", "broken") not in values, "a failed call has no speed to report"
    assert "model call (gpt-4.1-mini" in page and "first token" in page and "tokens/s" in page
    assert "http_4xx" in page and KEY not in page + exposition


@pytest.mark.parametrize(
    "probe, words",
    [
        ({"chat": {"every": 2}}, "probe.chat needs 'model:'"),
        ({"chat": {"model": "m", "every": 0}}, "probe.chat.every must be a whole number from 1"),
        ({"chat": {"model": "m", "max_tokens": 100000}}, "probe.chat.max_tokens"),
        ({"chat": {"model": "m", "stream": True}}, "unknown key 'stream' in probe.chat"),
        ({"api": "gemini"}, "probe.api must be one of openai, anthropic"),
        ({"path": "/health", "require_models": ["x"]}, "probe.require_models is checked against the model list"),
        ({"require_models": []}, "probe.require_models must name a model"),
    ],
)
def test_bad_chat_settings_are_config_errors_with_a_line_number(write_config, run, probe: dict, words: str) -> None:
    config = write_config({"a": "http://127.0.0.1:9"}, probe=probe)
    result = run("probe", "--config", str(config))
    assert result.exit_code == 2 and words in result.stderr, result.stderr
    assert f"{config}:" in result.stderr and "Traceback" not in result.output


def test_a_chat_kept_past_the_hour_keeps_its_round(db_path: Path) -> None:
    """A round can straddle the hour: its samples rolled up, its chat a second later still raw, still in its round."""
    hour = time.time() // 3600 * 3600
    with Store(db_path) as store:
        ids = store.line_ids([Line("a", "http://127.0.0.1:9")])
        round_id = store.start_round("pick")
        store.db.execute("update rounds set started_at = ? where id = ?", [hour - 2, round_id])
        store.add_samples(round_id, ids, [Sample("a", 0, hour - 1, "ok", True, Phases(ttfb_ms=5))])
        store.add_chats(round_id, ids, [ChatSample("a", hour + 1, "gpt-4.1-mini", "ok", True, Phases(ttfb_ms=5), ttft_ms=9)])
        store.roll_up(hour + 60)
        assert store.db["samples"].count == 0 and store.db["chats"].count == 1
        orphans = "select count(*) from chats where round_id not in (select id from rounds)"
        assert store.db.execute(orphans).fetchone()[0] == 0


def test_chats_leave_with_the_raw_samples(chat_relay: ChatRelay, write_config, run, db_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    run("pick", "--config", str(chat_config(write_config, {"r": chat_relay.url("ret")})))
    with Store(db_path) as store:
        assert store.db["chats"].count == 1
        store.roll_up(time.time() + 7200)
        assert store.db["chats"].count == 0 and store.db["samples"].count == 0
