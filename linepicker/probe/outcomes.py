"""What became of a sample, in the words a user reads in the table.

Every answer and every exception a request can end in maps to one outcome
here, so a relay sending anything at all fails one sample and never a round.
This is also where text a relay chose enters linepicker: every piece of it
passes relay_text on its way into an outcome's error, so what is stored,
printed, logged or served never carries the key.
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import re
import socket
import ssl
from typing import TYPE_CHECKING, Any

from ..words import counted
from .timing import MAX_REDIRECTS, MODELS_CAP, BadRedirect, RedirectRefused

if TYPE_CHECKING:
    import aiohttp

API_NAMES = {"openai": "OpenAI", "anthropic": "Anthropic"}

# Outcomes, in the words a user reads in the table.
OK = "ok"
TIMEOUT = "timeout"
DNS = "dns"
REFUSED = "refused"
UNREACHABLE = "unreachable"
RESET = "reset"
TLS = "tls"
PROTOCOL = "protocol"
HTTP_4XX = "http_4xx"
HTTP_5XX = "http_5xx"
NOT_API = "not_api"
AUTH = "auth"
RATE_LIMITED = "rate_limited"
UNFINISHED = "unfinished"
MISSING_MODEL = "missing_model"
MODEL_ERROR = "model_error"
REDIRECT = "redirect"  # sent elsewhere than probe.follow_redirects allows: the answer is another host's
LOCAL = "local"  # this machine could not make the request (out of open files or ports): counts neither way



def is_success(outcome: str, key_sent: bool) -> bool:
    """Reachable and answering as the API: a 401 without a key still proves the API is there.

    A 429 counts as reachable too: the account is shared by every line, so a rate
    limit is not a reason to move to another line.
    """
    return outcome in (OK, RATE_LIMITED) or (outcome == AUTH and not key_sent)


def judged(outcome: str, key_sent: bool) -> bool | None:
    """A sample's success as the policy counts it: None for a failure of this machine, which says nothing of the line."""
    return None if outcome == LOCAL else is_success(outcome, key_sent)


MASK = "***"
KEY_RUN = 8  # this many characters of the key in a row are masked wherever they appear
ERROR_CAP = 400  # characters of an outcome's error text kept, after masking

# Credentials in the shapes relays and gateways print them, whoever's they are.
_TOKEN_SHAPES = re.compile(
    r"(?i)\b(?P<scheme>bearer|basic)\s+[^\s\"',;)>]+"
    r"|\b(?P<sk>sk-)[A-Za-z0-9_-]{6,}"
    r"|\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_.-]+"
    r"|(?P<label>\b(?:(?:x-)?api[_-]?key|key|token|access[_-]?token|secret|password|passwd|authorization)\b\W{1,4})[A-Za-z0-9._~+/=-]{16,}"
)
_ASCII_FOLD = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
# What a terminal acts on rather than shows: C0 controls (ESC starts CSI and OSC sequences that recolour,
# retitle or clear the terminal; CR and BS overwrite what came before), DEL, the C1 controls (U+009B is
# CSI on its own), and the bidirectional overrides and isolates that reorder the rest of a line;
# also lone surrogates (bytes a header or URL could not decode), which no UTF-8 file or page can hold.
# Whitespace among them is made a space by relay_text's split(); the rest become U+FFFD.
_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


def relay_text(text: str, secret: str | None, limit: int | None = None) -> str:
    """Text a relay chose (a page title, an error message, a URL it sent), made fit to store and show.

    The key is masked before the text is cut, and cutting happens nowhere
    else: a cut first leaves a piece of the key that no longer matches the whole
    key. Every run of KEY_RUN or more of its characters is masked, whatever
    surrounds it, and so are credentials of any shape, because a relay's error
    page may quote someone else's token, or ours in a form we did not send.
    Control characters are neutralised here too, so no relay can drive the
    terminal of whoever reads `status` or the daemon's log.
    """
    text = _CONTROLS.sub("\ufffd", " ".join(text.split()))
    text = _mask_key(text, secret)
    text = _TOKEN_SHAPES.sub(_mask_shape, text)
    if limit is not None and len(text) > limit:
        text = text[: limit - 1] + "…"
    return text


def redact(text: str, secret: str | None) -> str:
    """The final pass over an outcome's error text before it is recorded."""
    return relay_text(text, secret, ERROR_CAP)


def _mask_key(text: str, secret: str | None) -> str:
    """Mask every stretch of the text made of KEY_RUN-long pieces of the key (ASCII case ignored)."""
    if not secret:
        return text
    if len(secret) < KEY_RUN:
        return text.replace(secret, MASK)
    folded_key, folded = secret.translate(_ASCII_FOLD), text.translate(_ASCII_FOLD)
    pieces = {folded_key[i : i + KEY_RUN] for i in range(len(folded_key) - KEY_RUN + 1)}
    masked = [False] * len(text)
    for i in range(len(text) - KEY_RUN + 1):
        if folded[i : i + KEY_RUN] in pieces:
            masked[i : i + KEY_RUN] = [True] * KEY_RUN
    if not any(masked):
        return text
    out: list[str] = []
    for i, char in enumerate(text):
        if not masked[i]:
            out.append(char)
        elif i == 0 or not masked[i - 1]:
            out.append(MASK)
    return "".join(out)


def _mask_shape(match: re.Match[str]) -> str:
    if match.group("scheme"):
        return f"{match.group('scheme')} {MASK}"
    if match.group("sk"):
        return "sk-" + MASK
    if match.group("label"):
        return match.group("label") + MASK
    return MASK


def classify_response(
    status: int,
    content_type: str,
    body: bytes,
    complete: bool,
    api: str = "openai",
    require_models: tuple[str, ...] = (),
    secret: str | None = None,
) -> tuple[str, str | None]:
    shape, data = _json_shape(body, complete, api)
    if status == 429:
        return RATE_LIMITED, "429 Too Many Requests"
    if status >= 500:
        return HTTP_5XX, f"HTTP {status}" + page_hint(content_type, body, secret)
    if status in (401, 403):
        if shape == "error":
            return AUTH, f"HTTP {status}: the API answered but did not accept the key"
        return NOT_API, f"HTTP {status} that is not the API" + page_hint(content_type, body, secret)
    if 300 <= status < 400:
        return PROTOCOL, f"HTTP {status} redirect without a usable Location"
    if status >= 400:
        return HTTP_4XX, f"HTTP {status}" + page_hint(content_type, body, secret)
    if shape == "api":
        return _missing_models(data, complete, require_models) if require_models else (OK, None)
    return NOT_API, f"HTTP {status} but the body is not {API_NAMES[api]}-shaped JSON" + page_hint(content_type, body, secret)


def _missing_models(answer: dict[str, Any], complete: bool, required: tuple[str, ...]) -> tuple[str, str | None]:
    """The line answers, but a client asking for a model it does not list would be refused."""
    if not complete:
        return PROTOCOL, f"the model list is longer than {MODELS_CAP // 2**20} MiB, so require_models cannot be checked"
    data = answer.get("data")
    listed = {item.get("id") for item in data if isinstance(item, dict)} if isinstance(data, list) else set()
    missing = [model for model in required if model not in listed]
    if not missing:
        return OK, None
    paged = ", the first page of a longer list (has_more)" if answer.get("has_more") is True else ""
    return MISSING_MODEL, f"the model list lacks {', '.join(missing)} ({counted(len(listed), 'model')} listed{paged})"


def _json_shape(body: bytes, complete: bool, api: str = "openai") -> tuple[str | None, dict[str, Any]]:
    """'api' for an answer of the API (OpenAI: an object or list; Anthropic: a `data` list), 'error' for its error, else None;
    with the parsed answer, when the whole body was read and parsed.

    Anthropic's errors are {"type": "error", "error": {...}}; OpenAI's are {"error": {...}}: both carry `error`.
    """
    if complete:
        try:
            data = json.loads(body)
        except (ValueError, RecursionError):  # RecursionError: nested past Python's limit, a relay can send that
            return None, {}
        if not isinstance(data, dict):
            return None, {}
        if "error" in data:
            return "error", data
        if api == "anthropic":
            return ("api" if isinstance(data.get("data"), list) else None), data
        return ("api" if "data" in data or "object" in data else None), data
    head = body[:4096].lstrip()
    if not head.startswith(b"{"):
        return None, {}
    if b'"error"' in head[:200]:
        return "error", {}
    return ("api" if b'"data"' in head or b'"object"' in head else None), {}


def page_hint(content_type: str, body: bytes, secret: str | None = None) -> str:
    """Name what came back instead of the API, so a block page is recognisable in the table."""
    if "html" in content_type or body.lstrip()[:1] == b"<":
        title = _html_title(body, secret)
        return f" (HTML page{': ' + title if title else ''})"
    shown = relay_text(content_type, secret, 80)
    return f" ({shown})" if shown and shown != "application/octet-stream" else ""


def _html_title(body: bytes, secret: str | None) -> str:
    text = body[:8192].decode("utf-8", "replace")
    start = text.lower().find("<title>")
    if start < 0:
        return ""
    end = text.lower().find("</title>", start)
    return relay_text(text[start + 7 : end if end > 0 else None], secret, 80)


def classify_exception(exc: Exception, timeout: float, secret: str | None = None) -> tuple[str, str]:
    """The outcome of a request that raised; whatever the exception quotes of the relay goes through relay_text."""
    outcome, error = _exception_outcome(exc, timeout)
    return outcome, relay_text(error, secret, ERROR_CAP)


def _exception_outcome(exc: Exception, timeout: float) -> tuple[str, str]:
    import aiohttp

    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
        return TIMEOUT, f"no complete answer within {timeout:g}s"
    if isinstance(exc, RedirectRefused):
        return REDIRECT, str(exc)
    if isinstance(exc, BadRedirect):
        return PROTOCOL, str(exc)
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return TLS, f"certificate rejected: {_ssl_reason(exc.certificate_error)}"
    if isinstance(exc, aiohttp.ClientConnectorSSLError):
        return TLS, f"TLS handshake failed: {_ssl_reason(exc.os_error)}"
    if isinstance(exc, ssl.SSLError):
        return TLS, f"TLS failed: {_ssl_reason(exc)}"
    if isinstance(exc, aiohttp.ClientConnectorDNSError) or isinstance(getattr(exc, "os_error", None), socket.gaierror):
        return DNS, f"DNS lookup failed: {getattr(exc, 'os_error', exc)}"
    if isinstance(exc, aiohttp.ClientHttpProxyError):
        return PROTOCOL, f"proxy answered {exc.status} to CONNECT"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return _classify_os_error(exc.os_error, "connect")
    if isinstance(exc, aiohttp.TooManyRedirects):
        return PROTOCOL, f"more than {MAX_REDIRECTS} redirects"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return RESET, "server closed the connection without an answer"
    if isinstance(exc, aiohttp.ClientPayloadError):
        if _reset_mid_body(exc):
            return RESET, "connection reset while reading the body"
        cause = exc.__cause__
        return PROTOCOL, f"broken response body: {_first_line(getattr(cause, 'message', None) or exc)}"
    if isinstance(exc, aiohttp.ClientResponseError):
        return PROTOCOL, f"not an HTTP answer: {_first_line(exc.message) or exc.status}"
    if isinstance(exc, (aiohttp.ClientOSError, OSError)):
        return _classify_os_error(exc, "read")
    # Anything else (a ClientError not named above, or a ValueError or UnicodeError
    # from deep in aiohttp or the codecs over what a relay sent) still ends only this
    # sample: a round must record every other line whatever this one did.
    return PROTOCOL, f"{type(exc).__name__}: {_first_line(exc) or 'no message'}"


def _reset_mid_body(exc: aiohttp.ClientPayloadError) -> bool:
    """aiohttp chains the framing error (body shorter than announced), not the reset behind it.

    The reset survives only in the message, as the repr of the ConnectionResetError.
    """
    chain = (exc.__cause__, exc.__context__)
    return any(isinstance(link, ConnectionResetError) for link in chain) or "ConnectionResetError(" in str(exc)


# This machine's own limits: no descriptor, no buffer, no free local port. Never the line's doing.
_LOCAL_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM, errno.EADDRNOTAVAIL}


def _classify_os_error(exc: BaseException, during: str) -> tuple[str, str]:
    code = getattr(exc, "errno", None)
    if code in _LOCAL_ERRNOS:
        return LOCAL, f"{during} failed on this machine, not the line: {os.strerror(code)} (not counted)"
    if isinstance(exc, ConnectionRefusedError) or code == errno.ECONNREFUSED:
        return REFUSED, "connection refused"
    if isinstance(exc, (ConnectionResetError, BrokenPipeError)) or code in (errno.ECONNRESET, errno.EPIPE):
        return RESET, f"connection reset during {during}"
    if code in (errno.ENETUNREACH, errno.EHOSTUNREACH):
        return UNREACHABLE, os.strerror(code)
    return UNREACHABLE, f"{during} failed: {_first_line(exc)}"


def _ssl_reason(exc: BaseException | None) -> str:
    return str(getattr(exc, "verify_message", None) or getattr(exc, "reason", None) or exc)


def _first_line(value: object) -> str:
    """Uncut: classify_exception cuts the whole message once the key is masked."""
    text = str(value).strip()
    return text.splitlines()[0] if text else ""


