"""Who the daemon's HTTP side answers: requests that name it by its own address, from no page elsewhere.

Binding loopback keeps other machines out, not other web sites: DNS
rebinding points an attacker's host name at 127.0.0.1, and the browser then
lets that site's page read what the daemon answers, because to the browser it
is the site's own origin. The Host header still carries the attacker's name,
so only Host values naming the listen address (or a loopback name, with the
port we listen on) are answered. A request a page elsewhere makes carries
that page's Origin, refused unless it is loopback or the daemon's own. Any
aiohttp application of the daemon (the status page, the gateway) takes the
same check from `middleware`.
"""

from __future__ import annotations

import ipaddress
from typing import Awaitable, Callable
from urllib.parse import urlsplit

from aiohttp import web

from ..config import Listen

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
LOOPBACK_NAMES = ("localhost",)


def middleware(listen: Listen) -> Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]:
    """An aiohttp middleware answering 403, with one line saying why, to requests not meant for this daemon."""

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        problem = refusal(listen, request.headers.get("Host"), request.headers.get("Origin"), _local_port(request))
        if problem:
            return web.Response(status=403, text=f"forbidden: {problem}\n")
        return await handler(request)

    return guard


def refusal(listen: Listen, host: str | None, origin: str | None, port: int | None) -> str | None:
    """Why a request with these headers, arriving on `port`, is not answered; None if it is.

    A request without Host (HTTP/1.0) comes from no browser, so it is answered.
    """
    if host is not None and not _names_us(listen, host, port):
        return f"Host {host[:100]!r} does not name this daemon ({listen.host} or localhost, port {port})"
    if origin is not None and not _trusted_origin(listen, origin, host):
        return f"Origin {origin[:100]!r} is not this daemon's page nor loopback"
    return None


def _names_us(listen: Listen, authority: str, port: int | None) -> bool:
    name, given = _split_authority(authority)
    if name is None or (given if given is not None else 80) != port:
        return False
    return _loopback(name) or name == listen.host.lower() or (_unspecified(listen.host) and _is_ip(name))


def _trusted_origin(listen: Listen, origin: str, host: str | None) -> bool:
    try:
        parts = urlsplit(origin)
    except ValueError:
        return False
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return False  # "null" (a sandboxed or file:// page) included
    name, _ = _split_authority(parts.netloc)
    return name is not None and (_loopback(name) or (host is not None and parts.netloc.lower() == host.lower()))


def _split_authority(authority: str) -> tuple[str | None, int | None]:
    """Host name (lower case, no brackets, no trailing dot) and port of a Host value; (None, None) if malformed."""
    try:
        parts = urlsplit("//" + authority)
        port = parts.port
    except ValueError:
        return None, None
    if not parts.hostname or parts.username is not None or parts.path or parts.query or parts.fragment:
        return None, None
    return parts.hostname.rstrip("."), port


def _loopback(name: str) -> bool:
    return name in LOOPBACK_NAMES or (_is_ip(name) and ipaddress.ip_address(name).is_loopback)


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def _unspecified(host: str) -> bool:
    """0.0.0.0 or :: : every address of the machine is the listen address."""
    return _is_ip(host) and ipaddress.ip_address(host).is_unspecified


def _local_port(request: web.Request) -> int | None:
    """The port the request arrived on, which is the listen port even when --listen asked for port 0."""
    sockname = request.transport.get_extra_info("sockname") if request.transport else None
    return sockname[1] if isinstance(sockname, tuple) and len(sockname) >= 2 else None
