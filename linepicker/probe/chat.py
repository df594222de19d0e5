"""The streaming chat probe: ask the model a tiny question and time the answer as a client feels it.

/v1/models can answer while the model calls behind it fail (an upstream
channel down, a model not routed, a key without quota), so a line is only as
good as a real completion. This probe sends one streaming request, OpenAI's
POST /v1/chat/completions or Anthropic's POST /v1/messages, and measures the
time to the first token and the rate of tokens after it. It costs tokens, so
it is opt-in (probe.chat) and runs on every `every`-th round of a line.

The stream is parsed here, bounded in bytes and ended by a total deadline,
so a relay that stalls mid-answer or sends garbage costs one timeout and
yields an outcome, never a hang or a crash.
"""

from __future__ import annotations

import json
import ssl
import time
from dataclasses import dataclass
from typing import Any, Iterator

from ..config import ChatSettings, Line, ProbeSettings
from ..words import counted
from .outcomes import (
    API_NAMES,
    LOCAL,
    MODEL_ERROR,
    NOT_API,
    OK,
    PROTOCOL,
    TIMEOUT,
    classify_exception,
    classify_response,
    is_success,
    page_hint,
    redact,
    relay_text,
)
from .phases import Phases
from .round import FollowUp, Limits, LineRun
from .timing import Stamps, api_headers, read_capped, span_ms, timed_request

STREAM_CAP = 512 * 1024  # a 20-token answer is a few KiB; more is a relay streaming something else
PATHS = {"openai": "/v1/chat/completions", "anthropic": "/v1/messages"}


@dataclass(frozen=True)
class ChatSample:
    line: str
    started_at: float  # unix time
    model: str
    outcome: str
    success: bool
    phases: Phases  # ttfb: request sent → the answer's first bytes; total: the whole answer
    ttft_ms: float | None = None  # request sent → first text of the answer
    tokens: int | None = None  # output tokens: the API's usage when it gives one, else text chunks counted
    tokens_per_s: float | None = None  # from the first to the last text chunk
    usage: bool = False  # tokens come from the API's own count
    status: int | None = None
    error: str | None = None
    key_sent: bool = False


class StreamError(Exception):
    """The stream broke the API's rules; carries the outcome a user reads."""

    def __init__(self, outcome: str, message: str):
        super().__init__(message)
        self.outcome = outcome


@dataclass(frozen=True)
class Event:
    name: str  # the SSE `event:` field, "message" when absent
    data: str


class EventStream:
    """Server-sent events from bytes as they arrive (the WHATWG rules: CR, LF or CRLF ends a line,
    a blank line ends an event, `:` starts a comment, data lines join with LF). An event the stream
    ends in the middle of is dropped, as the spec says."""

    def __init__(self) -> None:
        self._buffer = b""
        self._name = ""
        self._data: list[str] = []

    def feed(self, chunk: bytes) -> Iterator[Event]:
        self._buffer += chunk
        while True:
            cut = min((i for i in (self._buffer.find(b"\r"), self._buffer.find(b"\n")) if i >= 0), default=-1)
            if cut < 0 or (self._buffer[cut:cut + 1] == b"\r" and cut + 1 == len(self._buffer)):
                return  # no whole line yet (a lone CR at the end may be the first half of CRLF)
            raw = self._buffer[:cut]
            step = 2 if self._buffer[cut:cut + 2] == b"\r\n" else 1
            self._buffer = self._buffer[cut + step:]
            event = self._line(raw.decode("utf-8", "replace"))
            if event is not None:
                yield event

    def _line(self, line: str) -> Event | None:
        if not line:
            if not self._data and not self._name:
                return None
            event = Event(self._name or "message", "\n".join(self._data))
            self._name, self._data = "", []
            return event
        if line.startswith(":"):
            return None
        field, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if field == "data":
            self._data.append(value)
        elif field == "event":
            self._name = value
        return None


class Answer:
    """One API's stream, judged event by event: the text chunks, the usage, whether it finished."""

    def __init__(self, secret: str | None = None) -> None:
        self.secret = secret  # masked in any piece of the stream quoted in an error
        self.text_chunks = 0
        self.usage_tokens: int | None = None
        self.finished = False  # the answer is complete
        self.closed = False  # the API's last event came: nothing more to read

    def text(self, event: Event) -> str:
        """The answer text this event adds ('' for none); raises StreamError for an error or a malformed event."""
        raise NotImplementedError

    def quote(self, data: str) -> str:
        """A piece of the stream for an error message: masked, then cut."""
        return repr(relay_text(data, self.secret, 80))

    def payload(self, event: Event) -> dict[str, Any]:
        try:
            data = json.loads(event.data)
        except (ValueError, RecursionError):  # RecursionError: nested past Python's limit, a relay can send that
            raise StreamError(PROTOCOL, f"malformed event: data is not JSON: {self.quote(event.data)}") from None
        if not isinstance(data, dict):
            raise StreamError(PROTOCOL, f"malformed event: data is not a JSON object: {self.quote(event.data)}")
        if "error" in data:
            raise StreamError(MODEL_ERROR, f"the API reported an error mid-answer: {error_text(data, self.secret)}")
        return data


class OpenAIAnswer(Answer):
    """chat.completion.chunk events, then `data: [DONE]`; usage in a last chunk with stream_options.include_usage."""

    def text(self, event: Event) -> str:
        if event.data.strip() == "[DONE]":
            self.finished = self.closed = True
            return ""
        data = self.payload(event)
        choices = data.get("choices")
        if not isinstance(choices, list):
            raise StreamError(PROTOCOL, f"malformed event: a chunk without choices: {self.quote(event.data)}")
        usage = data.get("usage")
        if isinstance(usage, dict) and isinstance(usage.get("completion_tokens"), int):
            self.usage_tokens = usage["completion_tokens"]
        text = ""
        for choice in choices:
            delta = choice.get("delta") if isinstance(choice, dict) else None
            if not isinstance(delta, dict):
                raise StreamError(PROTOCOL, f"malformed event: a choice without a delta: {self.quote(event.data)}")
            for key in ("content", "reasoning_content"):  # reasoning text is a token the user waits for too
                if isinstance(delta.get(key), str):
                    text += delta[key]
            if choice.get("finish_reason"):
                self.finished = True  # some relays end the stream here without [DONE]
        return text


class AnthropicAnswer(Answer):
    """message_start, content_block_* and message_delta events, then message_stop; `error` events on failure."""

    def text(self, event: Event) -> str:
        data = self.payload(event)
        kind = data.get("type")
        if not isinstance(kind, str):
            raise StreamError(PROTOCOL, f"malformed event: no type: {self.quote(event.data)}")
        if kind == "message_stop":
            self.finished = self.closed = True
        elif kind == "message_delta":
            usage = data.get("usage")
            if isinstance(usage, dict) and isinstance(usage.get("output_tokens"), int):
                self.usage_tokens = usage["output_tokens"]
        elif kind == "content_block_delta":
            delta = data.get("delta")
            if not isinstance(delta, dict):
                raise StreamError(PROTOCOL, f"malformed event: a content_block_delta without a delta: {self.quote(event.data)}")
            for key in ("text", "thinking"):
                if isinstance(delta.get(key), str):
                    return delta[key]
        return ""


ANSWERS: dict[str, type[Answer]] = {"openai": OpenAIAnswer, "anthropic": AnthropicAnswer}


def request_body(api: str, chat: ChatSettings) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": chat.model,
        "max_tokens": chat.max_tokens,
        "stream": True,
        "messages": [{"role": "user", "content": chat.prompt}],
    }
    if api == "openai":
        body["stream_options"] = {"include_usage": True}
    return body


async def chat_once(
    line: Line, settings: ProbeSettings, key: str | None, ssl_context: ssl.SSLContext, proxy: str | None
) -> ChatSample:
    """One streaming completion on a fresh connection, ended by chat.timeout however the stream misbehaves."""
    chat = settings.chat
    assert chat is not None
    stamps = Stamps(start=time.perf_counter())
    started_at = time.time()
    status = None
    answer = ANSWERS[settings.api](key)
    first = last = None
    headers = api_headers(settings.api, key, accept="text/event-stream")
    try:
        async with timed_request(
            "POST", line.url + PATHS[settings.api], stamps, ssl_context, chat.timeout, headers, proxy,
            follow=settings.follow_redirects, nameservers=settings.nameservers, json=request_body(settings.api, chat),
        ) as response:
            status = response.status
            if not 200 <= status < 300 or not _is_event_stream(response):
                outcome, error = await _not_a_stream(response, settings.api, key)
            else:
                events = EventStream()
                size = 0
                async for chunk in response.content.iter_any():
                    size += len(chunk)
                    if size > STREAM_CAP:
                        raise StreamError(PROTOCOL, f"the answer went on past {STREAM_CAP // 1024} KiB")
                    for event in events.feed(chunk):
                        if answer.text(event):
                            last = time.perf_counter()
                            first = first or last
                            answer.text_chunks += 1
                    if answer.closed:
                        break
                stamps.body_end = time.perf_counter()
                outcome, error = _judge(answer, settings.api)
    except StreamError as exc:
        outcome, error = exc.outcome, str(exc)
    except Exception as exc:
        outcome, error = classify_exception(exc, chat.timeout, key)
        if outcome == TIMEOUT:
            error += f" ({_progress(answer, first, stamps)})"
    tokens = answer.usage_tokens if answer.usage_tokens is not None else (answer.text_chunks or None)
    return ChatSample(
        line=line.name,
        started_at=started_at,
        model=chat.model,
        outcome=outcome,
        success=is_success(outcome, bool(key)),
        phases=stamps.phases(),
        ttft_ms=span_ms(stamps.request_sent, first),
        tokens=tokens,
        tokens_per_s=token_rate(tokens, first, last) if outcome == OK else None,
        usage=answer.usage_tokens is not None,
        status=status,
        error=redact(error, key) if error else None,
        key_sent=bool(key),
    )


def _is_event_stream(response: Any) -> bool:
    return "event-stream" in response.content_type


async def _not_a_stream(response: Any, api: str, secret: str | None) -> tuple[str, str]:
    """An error status, or a 200 that is not a stream: say what came back instead, with the API's own message."""
    body, complete = await read_capped(response)
    if not 200 <= response.status < 300:
        outcome, error = classify_response(response.status, response.content_type, body, complete, api, secret=secret)
        detail = error_text(_json(body), secret)
        return outcome, f"{error}: {detail}" if detail and detail not in (error or "") else (error or f"HTTP {response.status}")
    data = _json(body)
    if "error" in data:
        return MODEL_ERROR, f"HTTP {response.status} with an error instead of a stream: {error_text(data, secret)}"
    if "html" in response.content_type or body.lstrip()[:1] == b"<":
        return NOT_API, f"HTTP {response.status} but an HTML page instead of a stream" + page_hint(response.content_type, body, secret)
    shown = relay_text(response.content_type, secret, 80) or "no content type"
    return NOT_API, f"HTTP {response.status} but not an event stream of the {API_NAMES[api]} API ({shown})"


def _judge(answer: Answer, api: str) -> tuple[str, str | None]:
    if not answer.finished:
        end = "[DONE]" if api == "openai" else "message_stop"
        return PROTOCOL, f"the stream ended before {end} ({counted(answer.text_chunks, 'text chunk')})"
    if not answer.text_chunks:
        return MODEL_ERROR, "the answer finished without any text"
    return OK, None


def _json(body: bytes) -> dict[str, Any]:
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return {}
    return data if isinstance(data, dict) else {}


def error_text(data: dict[str, Any], secret: str | None = None) -> str:
    """The message of an OpenAI ({"error": {...}}) or Anthropic ({"type": "error", "error": {...}}) error."""
    error = data.get("error")
    if isinstance(error, dict):
        error = error.get("message") or error.get("type") or error.get("code")
    return relay_text(str(error), secret, 200) if error else ""


def _progress(answer: Answer, first: float | None, stamps: Stamps) -> str:
    """How far a stalled answer got, so a stall mid-stream reads differently from a silent line."""
    if stamps.headers is None:
        return "no response headers"
    if first is None:
        return "headers, but no text"
    return f"stalled after {counted(answer.text_chunks, 'text chunk')}"


def token_rate(tokens: int | None, first: float | None, last: float | None) -> float | None:
    """Tokens after the first one over the time they took: the decoding speed, without the wait for the first."""
    if not tokens or tokens < 2 or first is None or last is None or last <= first:
        return None
    return round((tokens - 1) / (last - first), 2)


def answered(run: LineRun) -> bool:
    """A chat only tells something about a line that answered this round; a dead one needs no tokens spent."""
    return any(sample.success for sample in run.samples)


def follow_up(settings: ProbeSettings, key: str | None, due: set[str]) -> FollowUp:
    """The round's follow-up that chats with each due line as soon as its samples are in."""

    async def chat(run: LineRun, ssl_context: ssl.SSLContext, proxy: str | None, limits: Limits) -> None:
        if run.line.name in due and answered(run):
            async with limits.place():
                sample = await chat_once(run.line, settings, key, ssl_context, proxy)
            if sample.outcome != LOCAL:  # this machine's failure is no verdict on the line's model calls
                run.chat = sample

    return chat
