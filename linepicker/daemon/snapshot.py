"""Answers of the HTTP side rendered once per change of the daemon's state, and never while a round probes.

The page, /api/status and /metrics are rendered on the event loop the probes
time their requests on. The page costs about 100 ms of CPU (10 lines, a day of
samples), and while it renders every answer in flight waits unread: 8 clients
reloading it moved a 50 ms line's measured time to first byte to 789 ms. So
each answer is rendered once for each version of the relays' live states (a
round recorded, a config reloaded), one render at a time, and only while no
relay's round is probing; a request that comes while one is, when the last
rendering is older than the last round, waits up to STALE_WAIT_S for the
rounds to end and the new rendering, and else takes the older one. An answer
is also rendered anew once it is `max_age_s` old (the page's "updated" time
and "3 min ago" texts, the gateway's counters).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Callable

from .live import LiveState

STALE_WAIT_S = 1.0  # how long a request waits for the rounds in progress to end before it takes the older rendering


class Snapshot:
    """One answer's bytes, rendered at most once per version of the live states, between rounds."""

    def __init__(self, lives: list[LiveState], render: Callable[[], bytes], max_age_s: float | None = None):
        self.lives = lives  # the daemon's own list, changed in place when a reload adds or removes relays
        self.render = render
        self.max_age_s = max_age_s
        self.body: bytes | None = None
        self.version: tuple[tuple[int, int], ...] = ()
        self.rendered_at = 0.0
        self.lock = asyncio.Lock()  # one render at a time; whoever waits gets that render's result
        self.refreshing: asyncio.Future[None] | None = None  # a render waiting for the rounds in progress to end

    @property
    def probing(self) -> bool:
        return any(live.probing for live in self.lives)

    def current(self) -> tuple[tuple[int, int], ...]:
        return tuple((id(live), live.version) for live in self.lives)

    def fresh(self) -> bool:
        if self.body is None:
            return False
        if self.probing:
            return True  # older beats a render that would delay the answers a round is timing
        aged = self.max_age_s is not None and time.monotonic() - self.rendered_at > self.max_age_s
        return self.version == self.current() and not aged

    async def get(self) -> bytes:
        if not self.fresh():
            await self.refresh()  # the first render waits for the rounds to end: there is nothing to serve meanwhile
        elif self.probing and self.version != self.current():
            self.refreshing = self.refreshing or asyncio.ensure_future(self.refresh())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self.refreshing), STALE_WAIT_S)
        return self.body  # type: ignore[return-value]

    async def refresh(self) -> None:
        async with self.lock:
            while self.probing:
                for live in list(self.lives):
                    await live.between_rounds()
            if self.version != self.current() or not self.fresh():
                self.version, self.body, self.rendered_at = self.current(), self.render(), time.monotonic()
        self.refreshing = None
