"""Whether a daemon serving the gateway is alive, answered cheaply enough for `env` in every new shell.

While it serves a relay's gateway, the daemon holds an exclusive flock on
`<db>.gateway` (`<db>.gateway.<relay>` for a relay other than `default`), a file
that says where (its pid and the gateway's URL). A reader that can take the
lock itself knows no daemon holds it, so the file is stale: a daemon that
crashed, was killed or was stopped took its lock with it. Clients are then
handed the chosen line's own URL and never pointed at a gateway that is gone.
Standard library only (os, fcntl): no aiohttp, click or yaml on `env`'s path.
"""

from __future__ import annotations

import os

from .clientenv import DEFAULT_RELAY

LEASE_SUFFIX = ".gateway"
MAX_LEASE_BYTES = 512


def lease_path(db_path: str, relay: str = DEFAULT_RELAY) -> str:
    """One file per relay, as each relay has a gateway of its own; `default` keeps the name it had before relays."""
    return db_path + LEASE_SUFFIX + ("" if relay == DEFAULT_RELAY else f".{relay}")


def live_gateway(db_path: str, relay: str = DEFAULT_RELAY) -> str | None:
    """The URL of the gateway a live daemon serves for this relay of this database, or None."""
    try:
        fd = os.open(lease_path(db_path, relay), os.O_RDONLY)
    except OSError:  # no daemon ever served a gateway here: the usual case costs one failed open, not an import
        return None
    try:
        try:
            import fcntl
        except ImportError:  # Windows: no flock, so no gateway hand-out; clients get the line itself
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _url(os.read(fd, MAX_LEASE_BYTES))  # held: the daemon is alive
        except OSError:
            return None
        fcntl.flock(fd, fcntl.LOCK_UN)  # nobody held it: whatever the file says is stale
        return None
    finally:
        os.close(fd)


def _url(text: bytes) -> str | None:
    """The URL from 'PID URL'; anything else (a file being written, or not ours) is no gateway."""
    fields = text.decode("utf-8", "replace").split()
    if len(fields) != 2 or not fields[0].isdigit() or not fields[1].startswith("http://"):
        return None
    return fields[1]


class GatewayLease:
    """Held by the daemon for as long as its gateway serves: taken once it listens, given up before it stops."""

    def __init__(self, db_path: str, url: str, relay: str = DEFAULT_RELAY):
        self.path = lease_path(db_path, relay)
        self.url = url
        self._fd: int | None = None

    def __enter__(self) -> "GatewayLease":
        import fcntl

        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # readers hold it for an instant; the database lock keeps other daemons out
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()} {self.url}\n".encode())
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return self

    def __exit__(self, *exc_info: object) -> None:
        """Empty the file, then let go: from now on `env` and the targets name the line itself."""
        if self._fd is None:
            return
        try:
            os.ftruncate(self._fd, 0)
        finally:
            os.close(self._fd)
            self._fd = None
