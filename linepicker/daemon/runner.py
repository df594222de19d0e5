"""`linepicker daemon`: keep measuring, switch only when the policy says so, serve what it sees.

Everything shares one asyncio loop: APScheduler's AsyncIOScheduler fires the
jobs, the aiohttp probes run in them, and aiohttp.web answers the page and
/metrics. One daemon serves every relay of the config (`RelayRounds` each):
a relay's rounds never overlap (one lock per relay), so rise/fall counts each
round exactly once and every decision sees a finished round; two relays'
rounds run side by side, as their lines, keys and choices are their own.

Schedule, per relay: a full round every probe.interval (plus up to 10%
jitter, at most 5 s, so many vantage points do not probe in lockstep), the
first one at start; every probe.down_interval the lines that are not fully
healthy (down, or up with failures pending, or skipped by the gateway) are
re-probed on their own, as HAProxy does with fastinter/downinter; every
probe.watch_interval the chosen line is re-probed, whatever else is running,
so a hanging chosen line's failed rounds come one interval apart rather than
one timeout apart. Every round decides on every line's whole record, but a
re-check or a watch decides only once a full round has finished within the
policy window. Retention runs at start and hourly. A relay with a `gateway:` block has its gateway
served on the same loop, and a line failing real requests is re-checked at once.
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
from ..config import Config, Line, Listen, RetentionSettings, Setup, load_setup
from ..doctor import client_checks
from ..errors import ExitStatus, LinepickerError
from ..policy import Verdict
from ..probe.outcomes import LOCAL
from ..store import Decision, RollUp, Store, resolve_db_path
from ..words import counted
from . import web
from .gatewayservice import GatewayService, hand_out
from .live import FULL, RECHECK, WATCH, LiveState
from .metrics import GatewayMetrics

if TYPE_CHECKING:
    from apscheduler.events import JobEvent
    from apscheduler.schedulers.asyncio import AsyncIOScheduler

    from ..probe.sample import Sample

log = logging.getLogger("linepicker")

STOP_GRACE_S = 2.0  # how long a running round may go on after SIGTERM before it is cancelled
CLOCK_CHECK_S = 1.0  # how often the wall clock is compared with the monotonic one
CLOCK_JUMP_S = 1.0  # a step of the wall clock at least this large: no job may then wait longer than its interval
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
    setup = load_setup(options.config_path)
    db = resolve_db_path(options.db_path)
    with database_lock(db), Store(db) as store:
        asyncio.run(_serve_with_signals(Daemon(setup, store, options.listen)))


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
    """The process: one per database, serving every relay of the config, one HTTP side for all of them."""

    def __init__(self, setup: Setup | Config, store: Store, listen: Listen | None):
        self.setup = setup if isinstance(setup, Setup) else Setup.of(setup)
        self.store = store
        self.listen = listen
        self.url: str | None = None  # where the page is served, once it is
        # One set of gateway counters for every relay's gateway: each series is registered once.
        self.gateway_metrics = GatewayMetrics() if any(config.gateway for config in self.setup.relays) else None
        self.relays = {config.relay: RelayRounds(self, config) for config in self.setup.relays}
        self.lives = [rounds.live for rounds in self.relays.values()]  # what the web side reads; changed in place on reload
        self._hook_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping = asyncio.Event()
        self._scheduler: AsyncIOScheduler | None = None

    @property
    def live(self) -> LiveState:
        """The first relay's live state: the only one of a config with top-level `lines:`."""
        return self.lives[0]

    @property
    def gateway(self) -> GatewayService | None:
        """The first relay's gateway, if it serves one: the only one of a config with top-level `lines:`."""
        return next(iter(self.relays.values())).gateway

    async def serve(self) -> None:
        """Run until stop(); then let running rounds finish briefly, cancel what is left, and return."""
        from apscheduler.events import EVENT_JOB_MAX_INSTANCES, EVENT_JOB_MISSED
        from apscheduler.schedulers.asyncio import AsyncIOScheduler

        setup = self.setup
        for warning in setup.warnings:
            log.warning("config: %s", warning)
        for text in setup.notes:
            log.info("config: %s", text)
        for rounds in self.relays.values():
            if missing := rounds.live.config.missing_key():
                log.warning("%s%s", rounds.prefix, missing)
        self.store.set_relays(setup.relays)
        self.store.finish_abandoned_rounds([FULL, RECHECK, WATCH], "interrupted: an earlier daemon stopped mid-round")
        gateways = [rounds.gateway for rounds in self.relays.values() if rounds.gateway is not None]
        try:
            for gateway in gateways:
                await gateway.start()
            runner = await web.start(self.lives, self.listen, self.gateway_metrics) if self.listen else None
        except BaseException:
            for gateway in gateways:
                await gateway.stop()
            raise
        self.url = web.page_url(runner) if runner else None
        scheduler = AsyncIOScheduler(timezone=dt.timezone.utc)
        scheduler.add_listener(SchedulerLog(), EVENT_JOB_MAX_INSTANCES | EVENT_JOB_MISSED)
        self._scheduler = scheduler
        now = dt.datetime.now(dt.timezone.utc)
        for rounds in self.relays.values():
            rounds.schedule(scheduler, first_full=now)
        scheduler.add_job(self._job("retention", self.retention), "interval", seconds=RETENTION_EVERY_S, id="retention", next_run_time=now, **_JOB)
        scheduler.start()
        log.info("daemon started: %s from %s, db %s%s", self._schedule_text(), setup.source, self.store.path, f", status page {self.url}" if self.url else "")
        clock_watch = asyncio.ensure_future(self._follow_clock_steps(scheduler))
        try:
            await self._stopping.wait()
        finally:
            clock_watch.cancel()
            for gateway in gateways:
                await gateway.stop()  # first, so no client is handed a gateway about to close
            scheduler.pause()
            await self._drain()
            scheduler.shutdown(wait=False)
            if runner:
                await runner.cleanup()
            self.store.finish_abandoned_rounds([FULL, RECHECK, WATCH], "cancelled: the daemon was stopping")
            log.info("daemon stopped")

    def _schedule_text(self) -> str:
        def one(config: Config) -> str:
            return (
                f"{counted(len(config.active_lines), 'line')}, round every {config.probe.interval:g}s, "
                f"recheck every {config.probe.down_interval:g}s, chosen line watched every {config.probe.watch_every:g}s"
            )

        if not self.setup.named:
            return one(self.setup.relays[0])
        return "relays " + "; ".join(f"{config.relay} ({one(config)})" for config in self.setup.relays)

    async def _follow_clock_steps(self, scheduler: AsyncIOScheduler) -> None:
        """Keep the rounds' pace when the wall clock is stepped back.

        APScheduler keeps its jobs' times on the wall clock: stepped back an
        hour, it waited an hour for the next round. (Stepped forward, it runs
        what is overdue at once.) A step shows here as a change in the wall
        clock's offset from the monotonic one; then no job may wait longer
        than its own interval.
        """
        offset = time.time() - time.monotonic()
        while True:
            await asyncio.sleep(CLOCK_CHECK_S)
            step = time.time() - time.monotonic() - offset
            offset += step
            if abs(step) < CLOCK_JUMP_S:
                continue
            log.warning("the wall clock was stepped %+.0f s; the rounds keep their pace", step)
            now = dt.datetime.now(dt.timezone.utc)
            for job in scheduler.get_jobs():
                interval, jitter = getattr(job.trigger, "interval", None), getattr(job.trigger, "jitter", None) or 0
                latest = now + interval + dt.timedelta(seconds=jitter) if interval is not None else None
                if latest is not None and job.next_run_time is not None and job.next_run_time > latest:
                    job.modify(next_run_time=now + interval)

    def stop(self, why: str = "stop") -> None:
        if not self._stopping.is_set():
            log.info("stopping (%s)", why)
            self._stopping.set()

    def request_reload(self) -> None:
        self._spawn(self._job("reload", self.reload)())

    async def reload(self) -> None:
        """SIGHUP: a config that does not load is reported and the running one kept.

        Relays still in the file keep their rise/fall state; a new relay starts its
        rounds at once, and a relay taken out stops (its history stays in the database).
        """
        source = self.setup.source
        try:
            setup = load_setup(source)
        except LinepickerError as exc:
            log.error("config reload failed, keeping the running config: %s", exc)
            return
        old, self.setup = self.setup, setup
        kept = {}
        for config in setup.relays:
            rounds = self.relays.get(config.relay)
            if rounds is None:
                rounds = RelayRounds(self, config)
                if self._scheduler is not None:
                    rounds.schedule(self._scheduler, first_full=dt.datetime.now(dt.timezone.utc))
            else:
                await rounds.reconfigure(config, self._scheduler)
            kept[config.relay] = rounds
        for name, rounds in self.relays.items():
            if name not in kept:
                if self._scheduler is not None:
                    rounds.unschedule(self._scheduler)
                if rounds.gateway is not None:
                    await rounds.gateway.stop()
        self.relays = kept
        self.lives[:] = [rounds.live for rounds in kept.values()]
        self.store.set_relays(setup.relays)
        for warning in setup.warnings:
            log.warning("config: %s", warning)
        for text in setup.notes:
            if text not in old.notes:  # the others were said at start or at an earlier reload
                log.info("config: %s", text)
        lines = counted(sum(len(config.active_lines) for config in setup.relays), "line")
        log.info("config reloaded from %s: %s%s", source, lines, f" in {len(setup.relays)} relays" if setup.named else "")

    async def full_round(self) -> None:
        """A full round of every relay, one after another (the scheduler runs each relay's on its own)."""
        for rounds in list(self.relays.values()):
            await rounds.full_round()

    async def retention(self) -> None:
        settings = self.setup.retention
        rolled, pruned = retain(self.store, settings, time.time())
        if rolled.samples or pruned:
            log.info(
                "retention: %s older than %gd rolled into %s (%s dropped); %s older than %gd deleted",
                counted(rolled.samples, "sample"), settings.raw / 86400, counted(rolled.hours, "hourly row"),
                counted(rolled.rounds, "round"), counted(pruned, "hourly row"), settings.hourly / 86400,
            )

    async def _run_hook(self, argv: tuple[str, ...], chosen: Decision, relay: str) -> None:
        """Run on_switch with the choice in its environment, never through a shell; hooks run one at a time, in order."""
        env = {
            **os.environ,
            "LINEPICKER_LINE": chosen.name,
            "LINEPICKER_URL": chosen.url,
            "LINEPICKER_PREVIOUS": chosen.previous or "",
            "LINEPICKER_RELAY": relay,
        }
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


class RelayRounds:
    """One relay's side of the daemon: its schedule, rounds, rise/fall, switches and hook."""

    def __init__(self, daemon: Daemon, config: Config):
        self.daemon = daemon
        self.live = LiveState(config, daemon.store.scoped(config.relay))
        self.store = self.live.store
        self.prefix = f"relay {config.relay}: " if daemon.setup.named else ""  # log lines say which relay, once there are several
        self._round_lock = asyncio.Lock()
        self._none_eligible = False
        self._failing_locally = False
        self.gateway: GatewayService | None = None
        if config.gateway is not None and daemon.gateway_metrics is not None:
            self.gateway = GatewayService(self.live, self.store, config.gateway, self.recheck_soon, daemon.gateway_metrics)
        elif config.gateway is not None:
            log.warning("%sthe gateway: block is new: restart the daemon to serve it", self.prefix or f"relay {config.relay}: ")

    @property
    def job_ids(self) -> tuple[str, str, str]:
        """Also the names SchedulerLog says: 'round', or 'relay claude: round' once there are several relays."""
        return f"{self.prefix}round", f"{self.prefix}recheck", f"{self.prefix}watch"

    def schedule(self, scheduler: AsyncIOScheduler, first_full: dt.datetime | None) -> None:
        config = self.live.config
        full = dict(seconds=config.probe.interval, jitter=min(config.probe.interval * 0.1, 5.0))
        fast = dict(seconds=config.probe.down_interval, jitter=min(config.probe.down_interval * 0.1, 1.0))
        extra = {"next_run_time": first_full} if first_full else {}
        watch = dict(seconds=config.probe.watch_every, jitter=min(config.probe.watch_every * 0.1, 1.0))
        round_id, recheck_id, watch_id = self.job_ids
        job = self.daemon._job
        scheduler.add_job(job(round_id, self.full_round), "interval", id=round_id, replace_existing=True, **full, **extra, **_JOB)
        scheduler.add_job(job(recheck_id, self.recheck), "interval", id=recheck_id, replace_existing=True, **fast, **_JOB)
        scheduler.add_job(job(watch_id, self.watch), "interval", id=watch_id, replace_existing=True, **watch, **_JOB)

    def unschedule(self, scheduler: AsyncIOScheduler) -> None:
        for job_id in self.job_ids:
            scheduler.remove_job(job_id)
        log.info("%sremoved from the config: no more rounds (its history stays)", self.prefix or f"relay {self.live.config.relay}: ")

    async def reconfigure(self, config: Config, scheduler: AsyncIOScheduler | None) -> None:
        async with self._round_lock:
            old = self.live.config
            self.live.reconfigure(config)
            choice = self.store.choice()
            self.live.set_order(choice.name if choice else None)
            if self.gateway is not None:
                self.gateway.reconfigure(config)
            elif config.gateway is not None:
                log.warning("%sthe gateway: block is new: restart the daemon to serve it", self.prefix)
            if scheduler is not None and _intervals(old) != _intervals(config):
                self.schedule(scheduler, first_full=None)

    async def full_round(self) -> None:
        async with self._round_lock:
            await self._round(FULL, self.live.config.active_lines)

    async def recheck(self) -> None:
        """Re-probe the lines that are down or failing, so a return or a fall is seen within seconds."""
        if self._round_lock.locked():
            return  # the round in progress probes these lines too
        if not self.live.record_is_whole(time.time()):
            await self.full_round()
            return
        async with self._round_lock:
            lines = self.live.unsteady_lines(besides=self._watched())
            if lines:
                await self._round(RECHECK, lines)

    async def watch(self) -> None:
        """Re-probe the chosen line on its own, in a task of its own, so the next watch starts on time
        even while this one waits on a line that hangs: its death is acted on within fall watch intervals
        plus one timeout."""
        if not self.live.record_is_whole(time.time()):
            if not self._round_lock.locked():
                await self.full_round()
            return
        chosen = self.store.choice()
        line = self.live.config.line(chosen.name) if chosen else None
        if line is not None and line in self.live.config.active_lines:
            daemon = self.daemon
            daemon._spawn(daemon._job(f"{self.prefix}watch round", lambda: self._round(WATCH, (line,)))())

    def _watched(self) -> str | None:
        """The chosen line, when the watch probes it at least as often as a re-check would."""
        probe = self.live.config.probe
        chosen = self.store.choice()
        return chosen.name if chosen and probe.watch_every <= probe.down_interval else None

    def recheck_soon(self, name: str) -> None:
        """A line failing real requests is re-probed at once, not at the next round."""
        daemon = self.daemon
        daemon._spawn(daemon._job(f"{self.prefix}recheck", lambda: self._recheck_line(name))())

    async def _recheck_line(self, name: str) -> None:
        line = next((line for line in self.live.config.active_lines if line.name == name), None)
        if line is None or self._round_lock.locked():
            return  # gone from the config, or a round in progress probes it
        async with self._round_lock:
            await self._round(RECHECK, (line,))

    async def _round(self, kind: str, lines: tuple[Line, ...]) -> None:
        config = self.live.config
        with self.live.probing_round():
            round_id, runs = await picker.measure(config, self.store, kind, lines=lines)
        self._note_local_failures([sample for run in runs for sample in run.samples if sample.outcome == LOCAL])
        previous = self.store.choice()  # read now: a watch round may have switched while this one measured
        for flip in self.live.record(kind, runs):
            if flip.up:
                log.info("%sline %s is up again after %s", self.prefix, flip.line, counted(flip.rounds, "good round"))
            else:
                log.warning("%sline %s is down after %s: %s", self.prefix, flip.line, counted(flip.rounds, "failed round"), flip.last_error or "no answer")
        if kind != FULL and not self.live.record_is_whole(time.time()):
            self.store.finish_round(round_id, None, "not deciding: no full round within the policy window")
            return
        verdict, chosen = picker.choose(config, self.store, self.live.stats(), round_id, previous)
        self.live.set_order(verdict.chosen or (previous.name if previous else None), verdict)
        log.debug("%s%s round %d on %s: %s", self.prefix, kind, round_id, ", ".join(line.name for line in lines), verdict.reason)
        self._note_eligibility(verdict)
        if chosen is not None and chosen != previous:
            self._switched(config, chosen)

    def _note_local_failures(self, failed: list[Sample]) -> None:
        """Say once when probes start failing on this machine (out of open files or ports), and once when they stop."""
        if bool(failed) != self._failing_locally:
            if failed:
                log.warning("%s%s not counted against their lines: %s; raise the open-file limit (ulimit -n)", self.prefix, counted(len(failed), "sample"), failed[0].error)
            else:
                log.info("%sprobes no longer fail on this machine", self.prefix)
        self._failing_locally = bool(failed)

    def _note_eligibility(self, verdict: Verdict) -> None:
        """Say once when no line is eligible, and once when one is again, rather than every round."""
        none = verdict.chosen is None
        if none != self._none_eligible:
            if none:
                log.warning("%s%s", self.prefix, verdict.reason)
            else:
                log.info("%sa line is eligible again", self.prefix)
        self._none_eligible = none

    def _switched(self, config: Config, chosen: Decision) -> None:
        if chosen.previous is not None:  # the first choice ever is no switch: alerts on switching rates count this
            self.live.switches += 1
        log.info("%sswitched from %s to %s (%s): %s", self.prefix, chosen.previous or "nothing", chosen.name, chosen.url, chosen.reason)
        url = self.gateway.url if self.gateway is not None and self.gateway.url else chosen.url
        results = hand_out(config, chosen.name, url, self.prefix)
        for finding in client_checks(config, chosen, [result.path for result in results], url) if results else ():
            log.warning("%s%s (%s; fix: %s)", self.prefix, finding.what, finding.where, finding.fix)
        if config.on_switch:
            daemon = self.daemon
            daemon._spawn(daemon._job("on_switch", lambda: daemon._run_hook(config.on_switch, chosen, config.relay))())


def _intervals(config: Config) -> tuple[float, float, float]:
    return config.probe.interval, config.probe.down_interval, config.probe.watch_every


_JOB = {"max_instances": 1, "coalesce": True, "misfire_grace_time": None}
