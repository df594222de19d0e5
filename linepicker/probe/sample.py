"""One sample: a single request to probe.path on a fresh connection, timed and judged.

The unit every statistic is built from: exactly one request on the wire, its
phases from probe.timing and its outcome from probe.outcomes.
"""

from __future__ import annotations

import ssl
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..config import Line, ProbeSettings
from .outcomes import classify_exception, classify_response, judged, redact
from .phases import Phases
from .timing import BODY_CAP, MODELS_CAP, Stamps, api_headers, read_capped, timed_request

if TYPE_CHECKING:
    import aiohttp

ANTHROPIC_MODELS_PAGE = 1000  # the most /v1/models returns at once


@dataclass(frozen=True)
class Sample:
    line: str
    seq: int
    started_at: float  # unix time
    outcome: str
    success: bool | None  # None: unfinished, or a local failure; counts neither way
    phases: Phases
    status: int | None = None
    error: str | None = None
    key_sent: bool = False


async def probe_once(
    line: Line,
    seq: int,
    settings: ProbeSettings,
    key: str | None,
    ssl_context: ssl.SSLContext,
    proxy: str | None,
    stamps: Stamps | None = None,
    session: aiohttp.ClientSession | None = None,
) -> Sample:
    """One request on a fresh connection, ended by a total deadline however the server misbehaves.

    `stamps` may be handed in by a caller that watches the request while it waits; `session`
    (timing.fresh_session) by a round that shares one among its requests."""
    url = line.url + request_path(settings)
    headers = api_headers(settings.api, key)
    stamps = stamps or Stamps()
    stamps.start = time.perf_counter()
    started_at = time.time()
    status = None
    try:
        async with timed_request(
            "GET", url, stamps, ssl_context, settings.timeout, headers, proxy, session, settings.follow_redirects, settings.nameservers
        ) as response:
            status = response.status
            body, complete = await read_capped(response, MODELS_CAP if settings.require_models else BODY_CAP)
            stamps.body_end = time.perf_counter()
            outcome, error = classify_response(
                response.status, response.content_type, body, complete, settings.api, settings.require_models, key
            )
    except Exception as exc:
        outcome, error = classify_exception(exc, settings.timeout, key)
    return Sample(
        line=line.name,
        seq=seq,
        started_at=started_at,
        outcome=outcome,
        success=judged(outcome, bool(key)),
        phases=stamps.phases(),
        status=status,
        error=redact(error, key) if error else None,
        key_sent=bool(key),
    )


def request_path(settings: ProbeSettings) -> str:
    """probe.path, asking Anthropic for its longest page when require_models needs the whole list (its default page is 20)."""
    if settings.api == "anthropic" and settings.require_models and "?" not in settings.path:
        return settings.path + f"?limit={ANTHROPIC_MODELS_PAGE}"
    return settings.path


