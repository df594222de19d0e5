"""Counted nouns in English: "1 line", "3 lines", never "1 lines".

Standard library only, so the core, the daemon's logs and the terminal all count alike.
"""

from __future__ import annotations


def counted(n: int, noun: str, plural: str | None = None) -> str:
    return f"{n} {noun if n == 1 else plural or noun + 's'}"
