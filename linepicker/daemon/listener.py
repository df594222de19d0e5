"""The daemon's listening socket: how many connections its clients may hold, and for how long.

A connection costs a file descriptor, and the probes need theirs: under
`ulimit -n 256`, 300 clients that connected and stayed silent left the probes
failing with EMFILE, and asyncio logged a traceback for every accept() it
could not make (41 MB in 25 s). So no client holds a descriptor for long, and
all of them together hold at most `connection_cap()`:

- aiohttp's idle timer (`IDLE_S`) runs from the connection's start and from
  each answer, and ends a connection whose request head is not complete by
  then: silent, half-sent and dripped heads included;
- a request body the handler does not read is drained for `BODY_S` at most;
- a client that stops reading its answers (every buffer on the way full) is
  cut off after `SEND_S`;
- past the cap, a newcomer takes the place of the oldest connection that has
  not sent a whole request yet (silent, half-sent or dripping: it is not
  being served); when every connection is a client being served, newcomers
  wait in the kernel's backlog, costing no descriptor, until one closes.

The accept loop is this module's own (asyncio's server cannot stop accepting
for a while), and says once a minute, in one line, when accept() fails for
want of descriptors. Any aiohttp application of the daemon (the status page,
the gateway) is served with `start_site(runner made with RUNNER_OPTIONS)`,
with `middleware` first among its middlewares.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import time
from typing import Any, Awaitable, Callable

from aiohttp import web

from ..config import Listen

log = logging.getLogger("linepicker")

IDLE_S = 10.0  # to send a whole request head after connecting or after the previous answer; also the keep-alive idle time
BODY_S = 2.0  # a request body the handler did not read is drained at most this long, then the connection closed
SEND_S = 10.0  # a client that leaves its answers unread this long, every buffer full, is cut off
BACKLOG = 128
RETRY_S = 1.0  # after accept() failed for want of descriptors
RUNNER_OPTIONS: dict[str, Any] = {"keepalive_timeout": IDLE_S, "lingering_time": BODY_S, "handler_cancellation": True}
_OUT_OF = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Marks the request's connection as a client's: one that sent a whole request is never evicted for a newcomer."""
    connection = _OPEN.get(request.transport)  # type: ignore[arg-type]
    if connection is not None:
        connection.proven = True
    return await handler(request)


def connection_cap() -> int:
    """Connections the HTTP side holds at once: an eighth of the open-file limit, at most 100.

    The probes take up to half (round.socket_budget); the database, the
    resolver and the log a few.
    """
    try:
        import resource
    except ImportError:  # Windows: no per-process file limit to share out
        return 100
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return 100 if soft == resource.RLIM_INFINITY else max(4, min(100, soft // 8))


async def start_site(runner: web.AppRunner, listen: Listen) -> CappedSite:
    """Serve `runner` on the listen address, at most connection_cap() connections at once."""
    site = CappedSite(runner, listen.host, listen.port, connection_cap())
    await site.start()
    return site


class CappedSite(web.BaseSite):
    """A TCP site that accepts a connection only while fewer than `cap` are open."""

    def __init__(self, runner: web.BaseRunner, host: str, port: int, cap: int):
        super().__init__(runner)
        self._host, self._port, self.cap = host, port, cap
        self.open = 0  # connections accepted and not yet closed nor evicted
        self.connections: dict[_Counted, None] = {}  # oldest first
        self._sockets: list[socket.socket] = []
        self._accepting = False
        self._out_of_files_said = float("-inf")

    @property
    def name(self) -> str:
        return f"http://{f'[{self._host}]' if ':' in self._host else self._host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        self._sockets = _listening_sockets(self._host, self._port)
        self._server = _Listening(self)  # what the runner reads the addresses from and closes
        self._accept(True)

    def close(self) -> None:
        self._accept(False)
        for sock in self._sockets:
            sock.close()
        self._sockets = []

    def _accept(self, on: bool) -> None:
        """Watch the listening sockets for connections, or stop, leaving new ones in the kernel's backlog."""
        if on == self._accepting or not self._sockets:
            return
        loop = asyncio.get_running_loop()
        for sock in self._sockets:
            if on:
                loop.add_reader(sock.fileno(), self._take, sock)
            else:
                loop.remove_reader(sock.fileno())
        self._accepting = on

    def _take(self, listener: socket.socket) -> None:
        while True:
            if self.open >= self.cap and self._idlest() is None:
                self._accept(False)  # every place is a client being served: newcomers wait in the backlog
                return
            try:
                conn, _ = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in _OUT_OF:
                    self._out_of_files(exc)
                return  # ECONNABORTED and the like: that client is gone
            if self.open >= self.cap:
                self._evict(self._idlest())  # type: ignore[arg-type]
            conn.setblocking(False)
            self.open += 1
            asyncio.ensure_future(self._serve(conn))

    def _idlest(self) -> _Counted | None:
        """The oldest connection that has not sent a whole request: silent, half-sent or dripping."""
        return next((c for c in self.connections if not c.proven and not c.evicted and c.transport is not None), None)

    def _evict(self, connection: _Counted) -> None:
        connection.evicted = True
        self.open -= 1
        connection.transport.abort()  # type: ignore[union-attr]

    async def _serve(self, conn: socket.socket) -> None:
        server = self._runner.server
        assert server is not None
        try:
            await asyncio.get_running_loop().connect_accepted_socket(lambda: _Counted(server(), self), conn)
        except OSError:
            conn.close()
            self.closed()

    def made(self, connection: _Counted) -> None:
        self.connections[connection] = None
        self._resume_if_room()  # it may be the one a newcomer waiting in the backlog can take the place of

    def closed(self, connection: _Counted | None = None) -> None:
        self.connections.pop(connection, None)  # type: ignore[arg-type]
        if connection is None or not connection.evicted:
            self.open -= 1
        self._resume_if_room()

    def _resume_if_room(self) -> None:
        if self._sockets and (self.open < self.cap or self._idlest() is not None):
            self._accept(True)

    def _out_of_files(self, exc: OSError) -> None:
        """Stop accepting for a moment (the listening socket stays readable: retrying at once would spin) and say so once a minute."""
        self._accept(False)
        asyncio.get_running_loop().call_later(RETRY_S, self._resume_if_room)
        now = time.monotonic()
        if now - self._out_of_files_said >= 60:
            self._out_of_files_said = now
            log.warning("HTTP side: cannot accept connections: %s (this process is out of descriptors; said once a minute)", exc.strerror or exc)


class _Listening:
    """The part of asyncio.Server that aiohttp's runner uses: the sockets' addresses, and close()."""

    def __init__(self, site: CappedSite):
        self.site = site

    @property
    def sockets(self) -> list[socket.socket]:
        return self.site._sockets

    def close(self) -> None:
        self.site.close()


def _listening_sockets(host: str, port: int) -> list[socket.socket]:
    """Bound and listening, one per address the host name stands for (as asyncio's create_server does);
    with port 0, every address gets the port the first one was given."""
    made: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE):
            sock = socket.socket(family, kind, proto)
            made.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            if port == 0 and len(made) > 1:
                address = (address[0], made[0].getsockname()[1], *address[2:])
            sock.bind(address)
            sock.listen(BACKLOG)
            sock.setblocking(False)
    except socket.gaierror as exc:
        for sock in made:
            sock.close()
        raise OSError(exc.errno, exc.strerror) from None
    except OSError:
        for sock in made:
            sock.close()
        raise
    return made


_OPEN: dict[asyncio.BaseTransport, _Counted] = {}  # for `middleware`, which sees only the request's transport


class _Counted(asyncio.Protocol):
    """aiohttp's protocol for one connection, counted while it is open, and cut off when its client stops reading.

    The transport pauses writing once the client leaves answers unread in
    every buffer on the way; aiohttp would then wait for it for ever, holding
    the connection and the answers in memory.
    """

    def __init__(self, inner: Any, site: CappedSite):
        self.inner, self.site = inner, site
        self.transport: asyncio.BaseTransport | None = None
        self.stalled: asyncio.TimerHandle | None = None
        self.proven = False  # sent a whole request: a client, not a connection merely held open
        self.evicted = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        _OPEN[transport] = self
        self.site.made(self)
        self.inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.stalled is not None:
            self.stalled.cancel()
        _OPEN.pop(self.transport, None)  # type: ignore[arg-type]
        self.site.closed(self)
        self.inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received()

    def pause_writing(self) -> None:
        if self.transport is not None:
            self.stalled = asyncio.get_running_loop().call_later(SEND_S, self.transport.abort)  # type: ignore[attr-defined]
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self.stalled is not None:
            self.stalled.cancel()
            self.stalled = None
        self.inner.resume_writing()
