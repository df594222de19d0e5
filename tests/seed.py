"""Made-up history for tests that draw it: a day of samples, no network needed."""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Callable

from linepicker.config import load_config
from linepicker.probe.phases import Phases
from linepicker.probe.sample import Sample
from linepicker.store import Store


def seed_history(store: Store, config_path: Path, hours: float = 24, end: float | None = None) -> None:
    """A day of made-up samples up to `end` (now), so charts have something to show: lines a (steady),
    b (slow, 15% failures) and c (down from 8 to 6 hours before the end)."""
    config = load_config(config_path)
    ids = store.line_ids(config.active_lines)
    rng = random.Random(7)
    now = time.time() if end is None else end
    samples = []
    for minute in range(int(hours * 60), 0, -2):
        at = now - minute * 60
        samples.append(Sample("a", 0, at, "ok", True, Phases(ttfb_ms=rng.gauss(40, 4))))
        flaky = rng.random() < 0.15
        samples.append(Sample("b", 0, at, "http_5xx" if flaky else "ok", not flaky, Phases(ttfb_ms=None if flaky else rng.gauss(120, 25))))
        down = 6 * 60 <= minute < 8 * 60
        samples.append(Sample("c", 0, at, "timeout" if down else "ok", not down, Phases(ttfb_ms=None if down else rng.gauss(80, 10))))
    store.add_samples(store.start_round("daemon"), ids, samples)


def seed_shape(store: Store, config_path: Path, shapes: dict[str, Callable[[float], float | None]], minutes: float, every: float = 2, end: float | None = None) -> None:
    """Samples every `every` minutes over the last `minutes` before `end`: each line's shape gives
    the time to first byte in ms for a sample taken that many minutes before the end, None for a failure."""
    config = load_config(config_path)
    ids = store.line_ids(config.active_lines)
    now = time.time() if end is None else end
    samples = []
    ago = minutes
    while ago > 0:
        for name, shape in shapes.items():
            ttfb = shape(ago)
            samples.append(Sample(name, 0, now - ago * 60, "ok" if ttfb is not None else "timeout", ttfb is not None, Phases(ttfb_ms=ttfb)))
        ago -= every
    store.add_samples(store.start_round("daemon"), ids, samples)
