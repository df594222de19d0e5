"""A round: every line probed concurrently within the machine's limits, stopped early once settled.

Apart from the single sample because a round is about sharing: sockets under
the open-file limit, a concurrency cap that keeps the event loop on time, and
a `settled` callback through which the policy (not this module) says when the
remaining lines can no longer change the choice.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
import urllib.request
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, AsyncIterator, Awaitable, Callable

from ..config import Line, ProbeSettings
from .outcomes import TIMEOUT, UNFINISHED
from .phases import Phases
from .sample import Sample, probe_once
from .timing import Stamps, fresh_session, make_ssl_context, proxy_for, resolver

if TYPE_CHECKING:
    import aiohttp

    from .chat import ChatSample


@dataclass
class LineRun:
    """One line's progress through a round, readable while the round is running."""

    line: Line
    samples: list[Sample] = field(default_factory=list)
    inflight: Stamps | None = None  # the sample in flight: how far it got, and since when
    sampled: bool = False  # every sample taken; a follow-up may still run
    done: bool = False
    chat: ChatSample | None = None  # the streaming chat probe, when one ran this round


# Probes a line further once its samples are in (the chat probe), before the line
# counts as done, so a round never settles on a line it has not fully judged. It
# gets the line's TLS context and proxy, and takes its places from the round's
# Limits like a sample does.
FollowUp = Callable[[LineRun, ssl.SSLContext, "str | None", "Limits"], Awaitable[None]]


async def probe_line(
    run: LineRun,
    settings: ProbeSettings,
    key: str | None,
    ssl_context: ssl.SSLContext,
    proxy: str | None,
    limits: Limits,
    on_sample: Callable[[Sample], None] | None = None,
    follow_up: FollowUp | None = None,
    session: aiohttp.ClientSession | None = None,
) -> None:
    """Samples of one line go one after another, so they never compete with each other.

    Each sample queues for its places anew: every line's first sample goes
    before any line's second, so a dead line starts its timeout early instead
    of waiting behind the repeat samples of lines that answer.
    """
    for seq in range(settings.samples):
        async with limits.place():
            run.inflight = Stamps()
            sample = await probe_once(run.line, seq, settings, key, ssl_context, proxy, run.inflight, session)
        run.samples.append(sample)
        run.inflight = None
        if on_sample:
            on_sample(sample)
        if sample.outcome == TIMEOUT:
            # Another sample would only cost another full timeout.
            break
    run.sampled = True
    if follow_up is not None:
        await follow_up(run, ssl_context, proxy, limits)
    run.done = True


Settled = Callable[[list[LineRun]], bool]

LEASE_S = 0.1


@dataclass
class Limits:
    """How much of a round runs at once.

    `sockets` keeps the open connections within the open-file limit. `busy` is
    probe.concurrency: every request in flight costs the one event loop CPU,
    and an answer that arrives while the loop is busy waits unread, which
    inflates the time measured (docs/benchmarks.md). A request still waiting
    after LEASE_S gives its busy place back: waiting costs the loop nothing, and
    a dead line must not hold a place for a whole timeout.
    """

    sockets: asyncio.Semaphore
    busy: asyncio.Semaphore

    @contextlib.asynccontextmanager
    async def place(self) -> AsyncIterator[None]:
        """The places one request takes: a socket for as long as it runs, a busy place under lease."""
        async with self.sockets:
            async with self._busy_place():
                yield

    @contextlib.asynccontextmanager
    async def _busy_place(self) -> AsyncIterator[None]:
        await self.busy.acquire()
        given_back = False

        def give_back() -> None:
            nonlocal given_back
            if not given_back:
                given_back = True
                self.busy.release()

        lease = asyncio.get_running_loop().call_later(LEASE_S, give_back)
        try:
            yield
        finally:
            lease.cancel()
            give_back()


def socket_budget() -> int:
    """How many probes may hold a socket at once: half the open-file limit, the rest left to the database and the daemon.

    Past the limit connect() fails with EMFILE, and that local shortage would be
    recorded against the line as if the line had failed.
    """
    try:
        import resource
    except ImportError:  # Windows: sockets are not bounded by a per-process file limit
        return 10_000
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 10_000
    return max(1, soft // 2)


async def probe_round(
    lines: tuple[Line, ...] | list[Line],
    settings: ProbeSettings,
    key: str | None,
    settled: Settled | None = None,
    on_sample: Callable[[Sample], None] | None = None,
    follow_up: FollowUp | None = None,
    tick: float = 0.02,
) -> list[LineRun]:
    """Probe every line concurrently; stop early once `settled` says the rest cannot matter.

    Lines cut short in their samples get one 'unfinished' sample so the record
    shows they were not waited for, rather than pretending they failed.
    """
    contexts = {verify: make_ssl_context(verify) for verify in {not line.insecure for line in lines}}
    limits = Limits(sockets=asyncio.Semaphore(socket_budget()), busy=asyncio.Semaphore(settings.concurrency))
    environment = urllib.request.getproxies_environment()
    runs = [LineRun(line) for line in lines]
    async with fresh_session(dns=resolver(settings.nameservers, settings.timeout)) as session:
        tasks = {
            asyncio.ensure_future(
                probe_line(
                    run, settings, key, contexts[not run.line.insecure],
                    proxy_for(run.line, run.line.url + settings.path, environment), limits, on_sample, follow_up, session,
                )
            ): run
            for run in runs
        }
        pending = set(tasks)
        try:
            while pending:
                done, pending = await asyncio.wait(pending, timeout=tick if settled else None, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    task.result()
                if pending and settled and settled(runs):
                    break
        finally:
            stopped = time.perf_counter()
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)
    for run in (tasks[task] for task in pending if not tasks[task].sampled):
        run.samples.append(_unfinished(run, stopped, key))
    return runs


def _unfinished(run: LineRun, now: float, key: str | None) -> Sample:
    """The record of a sample the round stopped waiting for: the phases it reached and how long it
    waited, a lower bound the policy keeps counting, never a failure."""
    stamps = run.inflight
    phases = stamps.unanswered(now) if stamps is not None else Phases()
    waited = f"no answer within {phases.total_ms:.0f} ms; " if phases.total_ms is not None else ""
    return Sample(
        line=run.line.name,
        seq=len(run.samples),
        started_at=time.time() - (phases.total_ms or 0) / 1000,
        outcome=UNFINISHED,
        success=None,
        phases=phases,
        error=f"{waited}not waited for: the choice was already settled",
        key_sent=bool(key),
    )
