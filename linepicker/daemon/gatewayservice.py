"""The daemon's side of the gateway: it runs it, hands its URL out while it lives, and learns from its traffic.

The gateway core (gateway.py) only forwards; this module gives it the lines in
the policy's order, records every attempt as evidence (in batches, so a burst
of requests costs one write a second, not one each), counts it for /metrics,
and asks the daemon to re-check at once a line that fails real requests.
While it serves, it holds the lease that makes `env` and the targets name the
gateway; when it stops, it lets go of the lease first and points the targets
back at the chosen line, so nothing is left pointing at a closed port.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Callable

from .. import targets
from ..config import Config, GatewaySettings
from ..errors import ConfigError, LinepickerError
from ..gatewaylease import GatewayLease, lease_path
from ..store import Store
from ..traffic import Attempt
from .gateway import Gateway
from .live import LiveState
from .metrics import GatewayMetrics

log = logging.getLogger("linepicker")

FLUSH_S = 1.0  # attempts wait at most this long in memory before they are written


class GatewayService:
    def __init__(self, live: LiveState, store: Store, settings: GatewaySettings, recheck: Callable[[str], None], metrics: GatewayMetrics):
        self.live = live
        self.store = store  # the relay's view of the database: its choice, its lines, its lease
        self.settings = settings
        self.recheck = recheck
        self.metrics = metrics  # shared by every relay's gateway
        self.gateway = Gateway(settings, lambda: live.order, self.on_attempt)
        self.url: str | None = None
        self._lease: GatewayLease | None = None
        self._pending: list[Attempt] = []
        self._flush: asyncio.TimerHandle | None = None
        self._line_ids: dict[str, int] | None = None

    async def start(self) -> str:
        """Listen, take the lease, and point the targets at the gateway."""
        listen = self.settings.listen
        choice = self.store.choice()
        self.live.set_order(choice.name if choice else None)
        try:
            self.url = await self.gateway.start()
        except OSError as exc:
            raise ConfigError(f"gateway.listen {listen.host}:{listen.port}: cannot bind: {exc.strerror or exc}") from None
        self.live.breakers = self.gateway.breakers
        try:
            self._lease = GatewayLease(str(self.store.path), self.url, self.store.relay).__enter__()
        except OSError as exc:
            await self.gateway.close()
            raise ConfigError(f"{lease_path(str(self.store.path), self.store.relay)}: cannot hold the gateway's lease: {exc.strerror or exc}") from None
        if choice is not None:
            hand_out(self.live.config, choice.name, self.url)
        log.info("gateway on %s: clients get OPENAI_BASE_URL=%s/v1 and ANTHROPIC_BASE_URL=%s", self.url, self.url, self.url)
        return self.url

    async def stop(self) -> None:
        """Give up the lease, point the targets back at the chosen line, then close (requests in flight get a short grace)."""
        if self._lease is not None:
            self._lease.__exit__(None, None, None)
            self._lease = None
            choice = self.store.choice()
            if choice is not None:
                hand_out(self.live.config, choice.name, choice.url)
                log.info("gateway stopping: clients are handed %s (%s) again", choice.name, choice.url)
        await self.gateway.close()
        self.flush()
        self.live.breakers = None

    def reconfigure(self, config: Config) -> None:
        """Lines and their order follow a reload; the gateway's own settings need a restart."""
        self._line_ids = None
        if config.gateway != self.settings:
            log.warning("the gateway: block changed: restart the daemon to apply it (the gateway keeps %s meanwhile)", self.url)

    def on_attempt(self, attempt: Attempt) -> None:
        self.metrics.observe(self.live.config.relay, attempt)
        self._pending.append(attempt)
        if self._flush is None:
            self._flush = asyncio.get_running_loop().call_later(FLUSH_S, self.flush)
        if attempt.tripped:
            self.recheck(attempt.line)

    def flush(self) -> None:
        """Write the attempts gathered so far; a database that refuses them costs the evidence, never a request."""
        if self._flush is not None:
            self._flush.cancel()
            self._flush = None
        batch, self._pending = self._pending, []
        if not batch:
            return
        try:
            if self._line_ids is None:
                self._line_ids = self.store.line_ids(self.live.config.active_lines)
            self.store.add_traffic(self._line_ids, batch)
        except LinepickerError as exc:
            log.error("gateway: %d requests not recorded: %s", len(batch), exc)


def hand_out(config: Config, name: str, url: str, prefix: str = "") -> list[targets.TargetResult]:
    """Write the relay's targets for `name` at `url` (the gateway's or the line's), saying what changed
    (after `prefix`, which names the relay once there are several); the files written."""
    results, errors = targets.write_targets(config.targets, name, url, config.exports)
    for result in results:
        if result.changed:
            log.info("%supdated %s", prefix, result.path)
    for message in errors:
        log.error("%starget not updated: %s", prefix, message)
    return results
