"""Hide the password of any URL before it is stored, printed, logged or served.

Proxy URLs carry credentials (`http://user:pass@proxy:3128`), and so may a URL
a user pastes by mistake; the text around them (a config error, a doctor
finding, an aiohttp error naming its proxy) is shown to people and kept in
files. `mask_userinfo` keeps the user name, which helps tell proxies apart,
and replaces the password with `***`; a userinfo without a colon may itself be
a token, so it is replaced whole. Standard library only: every layer calls it.
"""

from __future__ import annotations

import re

# scheme://userinfo@ : the userinfo runs to the last '@' before the host ends ('/', '?', '#', whitespace),
# as urllib.parse takes it, so a password holding a raw '@' is hidden whole.
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)([^/?#\s]*)@")


def _masked(match: re.Match[str]) -> str:
    user, colon, _ = match.group(2).partition(":")
    return f"{match.group(1)}{user}:***@" if colon else f"{match.group(1)}***@"


def mask_userinfo(text: str) -> str:
    """Text with the password of every URL in it masked: user:pass@ becomes user:***@, token@ becomes ***@."""
    return _USERINFO.sub(_masked, text) if "@" in text else text
