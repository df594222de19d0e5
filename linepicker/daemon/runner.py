"""`linepicker daemon`: keep measuring, switch only when the policy says so, serve what it sees.

Everything shares one asyncio loop: APScheduler's AsyncIOScheduler fires the
jobs, the aiohttp probes run in them, and aiohttp.web answers the page and
/metrics. Rounds never overlap (one lock), so rise/fall counts each round
exactly once and every decision sees a finished round.

Schedule: a full round every probe.interval (plus up to 10% jitter, at most
5 s, so many vantage points do not probe in lockstep), the first one at
start; every probe.down_interval the lines that are not fully healthy
(down, or up with failures pending, or skipped by the gateway) are re-probed
on their own, as HAProxy does with fastinter/downinter; retention runs at
start and hourly. With a `gateway:` block it serves the gateway on the same
loop, and a line failing real requests is re-checked at once.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import signal
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Awaitable, Callable, Iterator

from .. import picker
from ..config import Config, Line, Listen, RetentionSettings, load_config
from ..doctor import client_checks
from ..errors import ExitStatus, LinepickerError
from ..policy import Verdict
from ..store import Decision, RollUp, Store, resolve_db_path
from ..words import counted
from . import web
from .gatewayservice import GatewayService, hand_out
from .live import FULL, RECHECK, LiveState

if TYPE_CHECKING:
    from apscheduler.events import JobEvent
    from apscheduler.schedulers.asyncio import AsyncIOScheduler

log = logging.getLogger("linepicker")

STOP_GRACE_S = 2.0  # how long a running round may go on after SIGTERM before it is cancelled
HOOK_TIMEOUT_S = 60.0
RETENTION_EVERY_S = 3600.0
DEBUG_SCHEDULER = "LINEPICKER_DEBUG_SCHEDULER"  # set: APScheduler's own log at debug level, for its bugs


class DaemonRunning(LinepickerError):
    exit_code = ExitStatus.FAILURE


@dataclass(frozen=True)
class Options:
    config_path: str | None
    db_path: str | None
    listen: Listen | None
    log_level: str = "info"


def run(options: Options) -> None:
    """The CLI entry point: load, lock the database, serve until SIGTERM or SIGINT."""
    configure_logging(options.log_level)
    config = load_config(options.config_path)
    db = resolve_db_path(options.db_path)
    with database_lock(db), Store(db) as store:
        asyncio.run(_serve_with_signals(Daemon(config, store, options.listen)))


async def _serve_with_signals(daemon: "Daemon") -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, daemon.stop, sig.name)
    loop.add_signal_handler(signal.SIGHUP, daemon.request_reload)
    await daemon.serve()


def configure_logging(level: str) -> None:
    """One line per event on stderr; aiohttp's access log only speaks up at debug level.

    APScheduler's own log is kept to its errors even at debug: it says "executed successfully"
    for every job and names an overlap by an internal function, so SchedulerLog says what
    matters in linepicker's words. LINEPICKER_DEBUG_SCHEDULER=1 lets it all through.
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("aiohttp.access").setLevel(logging.DEBUG if level == "debug" else logging.WARNING)
    logging.getLogger("apscheduler").setLevel(logging.DEBUG if os.environ.get(DEBUG_SCHEDULER) else logging.ERROR)


class SchedulerLog:
    """APScheduler's events about runs that did not happen, said in linepicker's words, once per streak.

    A round slower than probe.interval makes every following run collide with it, and a
    recheck of a hanging line collides with the next recheck: the first skip of a job is
    said, and the next one only after CALM_S without any, with how many went unsaid.
    """

    CALM_S = 600.0

    def __init__(self) -> None:
        self.last_skip: dict[str, float] = {}  # job id → monotonic time of its latest skipped run
        self.unsaid: dict[str, int] = {}  # job id → skipped runs since the warning was last given

    def __call__(self, event: JobEvent) -> None:
        from apscheduler.events import EVENT_JOB_MAX_INSTANCES

        job, now = event.job_id, time.monotonic()
        previous = self.last_skip.get(job)
        self.last_skip[job] = now
        if previous is not None and now - previous < self.CALM_S:
            self.unsaid[job] = self.unsaid.get(job, 0) + 1
            return
        unsaid = self.unsaid.pop(job, 0)
        since = f"; {counted(unsaid, 'more run')} skipped after this was last said" if unsaid else ""
        if event.code == EVENT_JOB_MAX_INSTANCES:
            why = "the previous one is still running"
        else:
            why = f"it was due at {_clock(event)} and could not start in time"
        log.warning("%s skipped: %s (said again only after %gs without a skip%s)", job, why, self.CALM_S, since)


def _clock(event: JobEvent) -> str:
    when = getattr(event, "scheduled_run_time", None)
    return when.astimezone(dt.timezone.utc).strftime("%H:%M:%S UTC") if when else "its time"


@contextmanager
def database_lock(db: Path) -> Iterator[None]:
    """One daemon per database: two would double the probes and fight over the choice.

    An OS lock (flock) rather than a pid file, so a crashed daemon never leaves
    a stale lock behind. The file holds the owner's pid for the error message.
    It sits beside the real file, symlinks resolved, as SQLite follows them:
    two paths to one database are one daemon's.
    """
    import fcntl

    real = Path(os.path.realpath(db))
    path = real.with_name(real.name + ".lock")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise DaemonRunning(f"{path}: cannot create the daemon lock: {exc.strerror or exc}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode("ascii", "replace").strip()
            who = f" (pid {holder})" if holder.isdigit() else ""
            raise DaemonRunning(f"another linepicker daemon{who} is already running on {db}") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        os.close(fd)


def retain(store: Store, settings: RetentionSettings, now: float) -> tuple[RollUp, int]:
    """Roll raw samples past retention.raw into hourly rows, and drop hourly rows past retention.hourly."""
    return store.roll_up(now - settings.raw), store.prune_hourly(now - settings.hourly)


class Daemon:
    def __init__(self, config: Config, store: Store, listen: Listen | None):
        self.live = LiveState(config, store)
        self.store = store
        self.listen = listen
        self.url: str | None = None  # where the page is served, once it is
        self._round_lock = asyncio.Lock()
        self._hook_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping = asyncio.Event()
        self._scheduler: AsyncIOScheduler | None = None
        self._none_eligible = False
        self.gateway = GatewayService(self.live, store, config.gateway, self.recheck_soon) if config.gateway else None

    async def serve(self) -> None:
        """Run until stop(); then let a running round finish briefly, cancel what is left, and return."""
        from apscheduler.events import EVENT_JOB_MAX_INSTANCES, EVENT_JOB_MISSED
        from apscheduler.schedulers.asyncio import AsyncIOScheduler

        config = self.live.config
        for warning in config.warnings:
            log.warning("config: %s", warning)
        for text in config.notes:
            log.info("config: %s", text)
        if missing := config.missing_key():
            log.warning("%s", missing)
        self.store.finish_abandoned_rounds([FULL, RECHECK], "interrupted: an earlier daemon stopped mid-round")
        gateway = self.gateway
        if gateway is not None:
            await gateway.start()
        try:
            runner = await web.start(self.live, self.listen, gateway.metrics if gateway else None) if self.listen else None
        except BaseException:
            if gateway is not None:
                await gateway.stop()
            raise
        self.url = web.page_url(runner) if runner else None
        scheduler = AsyncIOScheduler(timezone=dt.timezone.utc)
        scheduler.add_listener(SchedulerLog(), EVENT_JOB_MAX_INSTANCES | EVENT_JOB_MISSED)
        self._scheduler = scheduler
        now = dt.datetime.now(dt.timezone.utc)
        self._schedule(scheduler, config, first_full=now)
        scheduler.add_job(self._job("retention", self.retention), "interval", seconds=RETENTION_EVERY_S, id="retention", next_run_time=now, **_JOB)
        scheduler.start()
        log.info(
            "daemon started: %s from %s, db %s, round every %gs, recheck every %gs%s",
            counted(len(config.active_lines), "line"), config.source, self.store.path, config.probe.interval, config.probe.down_interval,
            f", status page {self.url}" if self.url else "",
        )
        try:
            await self._stopping.wait()
        finally:
            if gateway is not None:
                await gateway.stop()  # first, so no client is handed a gateway about to close
            scheduler.pause()
            await self._drain()
            scheduler.shutdown(wait=False)
            if runner:
                await runner.cleanup()
            self.store.finish_abandoned_rounds([FULL, RECHECK], "cancelled: the daemon was stopping")
            log.info("daemon stopped")

    def stop(self, why: str = "stop") -> None:
        if not self._stopping.is_set():
            log.info("stopping (%s)", why)
            self._stopping.set()

    def request_reload(self) -> None:
        self._spawn(self._job("reload", self.reload)())

    async def reload(self) -> None:
        """SIGHUP: a config that does not load is reported and the running one kept."""
        source = self.live.config.source
        try:
            config = load_config(source)
        except LinepickerError as exc:
            log.error("config reload failed, keeping the running config: %s", exc)
            return
        async with self._round_lock:
            old = self.live.config
            self.live.reconfigure(config)
            choice = self.store.choice()
            self.live.set_order(choice.name if choice else None)
            if self.gateway is not None:
                self.gateway.reconfigure(config)
            if (old.probe.interval, old.probe.down_interval) != (config.probe.interval, config.probe.down_interval):
                assert self._scheduler is not None
                self._schedule(self._scheduler, config, first_full=None)
        for warning in config.warnings:
            log.warning("config: %s", warning)
        for text in config.notes:
            if text not in old.notes:  # the others were said at start or at an earlier reload
                log.info("config: %s", text)
        log.info("config reloaded from %s: %s", source, counted(len(config.active_lines), "line"))

    def _schedule(self, scheduler: AsyncIOScheduler, config: Config, first_full: dt.datetime | None) -> None:
        full = dict(seconds=config.probe.interval, jitter=min(config.probe.interval * 0.1, 5.0))
        fast = dict(seconds=config.probe.down_interval, jitter=min(config.probe.down_interval * 0.1, 1.0))
        extra = {"next_run_time": first_full} if first_full else {}
        scheduler.add_job(self._job("round", self.full_round), "interval", id="round", replace_existing=True, **full, **extra, **_JOB)
        scheduler.add_job(self._job("recheck", self.recheck), "interval", id="recheck", replace_existing=True, **fast, **_JOB)

    async def full_round(self) -> None:
        async with self._round_lock:
            await self._round(FULL, self.live.config.active_lines)

    async def recheck(self) -> None:
        """Re-probe the lines that are down or failing, so a return or a fall is seen within seconds."""
        if self._round_lock.locked():
            return  # the round in progress probes these lines too
        async with self._round_lock:
            lines = self.live.unsteady_lines()
            if lines:
                await self._round(RECHECK, lines)

    def recheck_soon(self, name: str) -> None:
        """A line failing real requests is re-probed at once, not at the next round."""
        self._spawn(self._job("recheck", lambda: self._recheck_line(name))())

    async def _recheck_line(self, name: str) -> None:
        line = next((line for line in self.live.config.active_lines if line.name == name), None)
        if line is None or self._round_lock.locked():
            return  # gone from the config, or a round in progress probes it
        async with self._round_lock:
            await self._round(RECHECK, (line,))

    async def retention(self) -> None:
        settings = self.live.config.retention
        rolled, pruned = retain(self.store, settings, time.time())
        if rolled.samples or pruned:
            log.info(
                "retention: %s older than %gd rolled into %s (%s dropped); %s older than %gd deleted",
                counted(rolled.samples, "sample"), settings.raw / 86400, counted(rolled.hours, "hourly row"),
                counted(rolled.rounds, "round"), counted(pruned, "hourly row"), settings.hourly / 86400,
            )

    async def _round(self, kind: str, lines: tuple[Line, ...]) -> None:
        config = self.live.config
        previous = self.store.choice()
        round_id, runs = await picker.measure(config, self.store, kind, lines=lines)
        for flip in self.live.record(kind, runs):
            if flip.up:
                log.info("line %s is up again after %s", flip.line, counted(flip.rounds, "good round"))
            else:
                log.warning("line %s is down after %s: %s", flip.line, counted(flip.rounds, "failed round"), flip.last_error or "no answer")
        verdict, chosen = picker.choose(config, self.store, self.live.stats(), round_id, previous)
        self.live.set_order(verdict.chosen or (previous.name if previous else None), verdict)
        log.debug("%s round %d on %s: %s", kind, round_id, ", ".join(line.name for line in lines), verdict.reason)
        self._note_eligibility(verdict)
        if chosen is not None and chosen != previous:
            self._switched(config, chosen)

    def _note_eligibility(self, verdict: Verdict) -> None:
        """Say once when no line is eligible, and once when one is again, rather than every round."""
        none = verdict.chosen is None
        if none != self._none_eligible:
            if none:
                log.warning("%s", verdict.reason)
            else:
                log.info("a line is eligible again")
        self._none_eligible = none

    def _switched(self, config: Config, chosen: Decision) -> None:
        if chosen.previous is not None:  # the first choice ever is no switch: alerts on switching rates count this
            self.live.switches += 1
        log.info("switched from %s to %s (%s): %s", chosen.previous or "nothing", chosen.name, chosen.url, chosen.reason)
        url = self.gateway.url if self.gateway is not None and self.gateway.url else chosen.url
        results = hand_out(config, chosen.name, url)
        for finding in client_checks(config, chosen, [result.path for result in results], url) if results else ():
            log.warning("%s (%s; fix: %s)", finding.what, finding.where, finding.fix)
        if config.on_switch:
            self._spawn(self._job("on_switch", lambda: self._run_hook(config.on_switch, chosen))())

    async def _run_hook(self, argv: tuple[str, ...], chosen: Decision) -> None:
        """Run on_switch with the choice in its environment, never through a shell; hooks run one at a time, in order."""
        env = {**os.environ, "LINEPICKER_LINE": chosen.name, "LINEPICKER_URL": chosen.url, "LINEPICKER_PREVIOUS": chosen.previous or ""}
        async with self._hook_lock:
            try:
                process = await asyncio.create_subprocess_exec(
                    *argv, env=env, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
                )
            except OSError as exc:
                log.error("on_switch %s could not start: %s", argv[0], exc.strerror or exc)
                return
            try:
                async with asyncio.timeout(HOOK_TIMEOUT_S):
                    _, err = await process.communicate()
            except TimeoutError:
                log.error("on_switch %s killed after %gs", argv[0], HOOK_TIMEOUT_S)
                return
            finally:
                if process.returncode is None:
                    process.kill()
                    await process.wait()
        if process.returncode:
            last = (err.decode("utf-8", "replace").strip().splitlines() or [""])[-1][:200]
            log.warning("on_switch %s exited with %d%s", argv[0], process.returncode, f": {last}" if last else "")
        else:
            log.info("on_switch %s ran for %s", argv[0], chosen.name)

    def _job(self, name: str, action: Callable[[], Awaitable[None]]) -> Callable[[], Awaitable[None]]:
        """Wrap a job so that a failure is one log line and a cancellation at shutdown is not an error."""

        async def job() -> None:
            task = asyncio.current_task()
            assert task is not None
            self._tasks.add(task)
            try:
                await action()
            except asyncio.CancelledError:
                log.info("%s cancelled: the daemon is stopping", name)
            except Exception as exc:
                log.error("%s failed: %s", name, exc, exc_info=log.isEnabledFor(logging.DEBUG))
            finally:
                self._tasks.discard(task)

        return job

    def _spawn(self, job: Awaitable[None]) -> None:
        """Keep a reference until it is done, so a hook or a reload is neither collected nor forgotten at shutdown."""
        task = asyncio.ensure_future(job)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _drain(self) -> None:
        """Give running rounds and hooks STOP_GRACE_S to finish, then cancel them and wait for the cancellation."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=STOP_GRACE_S)
        left = set(self._tasks)
        for task in left:
            task.cancel()
        if left:
            await asyncio.wait(left, timeout=STOP_GRACE_S)


_JOB = {"max_instances": 1, "coalesce": True, "misfire_grace_time": None}
