"""Charts a person can read: spans that fit the data, time labels for any span, y labels that keep
their digits, a scale one spike cannot flatten, absolute times in files read later."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import re
from pathlib import Path

from linepicker.config import Listen
from linepicker.report.svg import LEFT
from linepicker.store import Store
from seed import seed_shape
from servers import Relay
from test_daemon import FAST, chosen, get, make_daemon, serving, until

LINES = {"a": "https://a.relay.test", "b": "https://b.relay.test"}
CLOCK = re.compile(r"^(\d\d:\d\d|[A-Z][a-z]{2} \d\d)$")


def seeded(write_config, db_path: Path, shapes: dict, minutes: float, every: float = 2) -> Path:
    config = write_config({name: LINES.get(name, f"https://{name}.relay.test") for name in shapes})
    with Store(db_path) as store:
        seed_shape(store, config, shapes, minutes, every)
    return config


def history_json(run, config: Path, *args: str) -> dict:
    result = run("history", "--config", str(config), "--json", *args)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def span_of(data: dict) -> float:
    return (dt.datetime.fromisoformat(data["until"]) - dt.datetime.fromisoformat(data["since"])).total_seconds()


def axis_labels(svg: str) -> tuple[list[str], list[str]]:
    """(y labels bottom to top, time labels left to right) of one chart as drawn."""
    y = re.findall(rf'<text x="{LEFT - 5}" y="[^"]+" class="tick" text-anchor="end">([^<]+)</text>', svg)
    x = re.findall(r'class="tick" text-anchor="middle">([^<]+)</text>', svg)
    return y, x


def overlapping(boxes: list[dict]) -> list[tuple[str, str]]:
    """Pairs of texts of one chart whose laid-out boxes intersect."""
    return [
        (one["text"], other["text"])
        for index, one in enumerate(boxes)
        for other in boxes[index + 1:]
        if one["chart"] == other["chart"]
        and one["left"] < other["right"] and other["left"] < one["right"]
        and one["top"] < other["bottom"] and other["top"] < one["bottom"]
    ]


def test_a_fresh_daemons_minutes_fill_an_hour_not_three_pixels_of_a_day(write_config, run, db_path: Path) -> None:
    config = seeded(write_config, db_path, {"a": lambda ago: 40.0}, minutes=18, every=1)
    data = history_json(run, config)
    assert span_of(data) == 3600, "18 minutes of data: the last hour"
    assert data["bucket_s"] == 120, "two probe intervals (60 s) per bucket"
    filled = [b for b in data["lines"][0]["buckets"] if b["samples"]]
    assert len(filled) >= 8, f"18 minutes cover {len(filled)} buckets"


def test_longer_data_gets_the_next_span_up_and_since_still_decides(write_config, run, db_path: Path) -> None:
    config = seeded(write_config, db_path, {"a": lambda ago: 40.0}, minutes=3 * 60)
    assert span_of(history_json(run, config)) == 6 * 3600
    assert span_of(history_json(run, config, "--since", "90m")) == 5400
    with Store(db_path) as store:
        seed_shape(store, config, {"a": lambda ago: 40.0}, minutes=30 * 60, every=30)
    assert span_of(history_json(run, config)) == 7 * 86400


def test_report_labels_time_on_any_span_and_keeps_times_absolute(write_config, run, db_path: Path, tmp_path: Path) -> None:
    config = seeded(write_config, db_path, {"a": lambda ago: 40.0}, minutes=50, every=1)
    with Store(db_path) as store:
        store.record_decision("a", LINES["a"], None, "a has the best score (40.0 ms)", None)
    out = tmp_path / "report.html"
    assert run("report", "--html", str(out), "--config", str(config)).exit_code == 0
    text = out.read_text()
    svg = re.search(r"<svg.*?</svg>", text, re.S).group(0)
    _, times = axis_labels(svg)
    assert len(times) >= 4 and all(CLOCK.match(label) for label in times), f"an hour's chart has time labels: {times}"
    assert ">now<" not in text and " ago" not in text, "a file read later says no 'now' and no 'ago'"
    assert re.search(r"times in [^<]*UTC[+-]\d\d:\d\d", text), "the zone of the times is named"
    assert re.search(r"<td>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d</td>", text), "decisions carry their full date and time"
    assert 'aria-label="a: time to first byte, 1 h to ' in text


def test_y_labels_keep_every_digit_in_a_real_browser(write_config, run, db_path: Path, tmp_path: Path) -> None:
    from browser import chart_text_boxes, screenshot

    config = seeded(write_config, db_path, {"fast": lambda ago: 40.0, "slow": lambda ago: 1500.0 + ago % 7 * 40, "slower": lambda ago: 8000.0 + ago % 5 * 300}, minutes=120)
    out = tmp_path / "report.html"
    assert run("report", "--html", str(out), "--config", str(config)).exit_code == 0
    boxes = chart_text_boxes(out)
    cut = [box for box in boxes if box["left"] < 0 or box["right"] > box["width"]]
    assert not cut, f"labels cut by the chart's edge: {cut}"
    assert not overlapping(boxes), f"labels drawn over each other: {overlapping(boxes)}"
    texts = {box["text"] for box in boxes}
    assert {"1.5 s", "15 s", "500 ms", "50 ms"} <= texts, texts
    screenshot(out.as_uri(), "report-wide-scales.png")


def test_one_outlier_does_not_flatten_a_slowdown(write_config, run, db_path: Path, tmp_path: Path) -> None:
    def shape(ago: float) -> float:
        if 720 <= ago < 730:
            return 2400.0  # one ten-minute bucket of a 2.4 s median, twelve hours ago
        return 240.0 + ago % 3 if ago <= 120 else 40.0 + ago % 3  # 40 ms, then 240 ms for the last two hours

    config = seeded(write_config, db_path, {"a": shape}, minutes=24 * 60, every=1)
    out = tmp_path / "report.html"
    assert run("report", "--html", str(out), "--config", str(config)).exit_code == 0
    svg = re.search(r"<svg.*?</svg>", out.read_text(), re.S).group(0)
    y_labels, _ = axis_labels(svg)
    assert y_labels[-2] == "300 ms", f"the scale follows the slowdown, not the spike: {y_labels}"  # then "0"
    assert svg.count('class="over"') == 1 and "median 2400 ms, above the 300 ms scale" in svg

    result = run("history", "--config", str(config), "--buckets", "144")
    assert result.exit_code == 0, result.output
    spark = next(line.strip() for line in result.stdout.splitlines() if line.strip() and set(line.strip()) <= set("▁▂▃▄▅▆▇█▲✗"))
    assert spark.count("▲") == 1, "the spike is marked above the scale"
    assert set(spark[-11:]) <= set("▇█"), f"the last two hours stand high: {spark[-11:]}"
    assert set(spark[:60]) <= set("▁▂"), "the quiet hours stay low"
    assert re.search(r"█ 24\d ms; ▲ above 24\d ms, up to 2400;", result.stdout), "the header gives the scale and the outlier"


def test_the_status_page_takes_a_span_and_fits_the_data_by_default(relay: Relay, write_config, db_path: Path, tmp_path: Path) -> None:
    from browser import chart_text_boxes, screenshot

    config = write_config({"a": relay.url("a", delay_ms=40), "b": relay.url("b", delay_ms=90)}, probe={**FAST, "interval": 5})
    daemon = make_daemon(config, db_path, Listen("127.0.0.1", 0))
    seed_shape(daemon.store, config, {"a": lambda ago: 40.0 + ago % 5, "b": lambda ago: 90.0 + ago % 9}, minutes=3 * 60)

    async def body() -> dict[str, tuple[int, str]]:
        await until(lambda: chosen(daemon) == "a" and daemon.url is not None, what="a first choice")
        pages = {}
        for query in ("", "?span=1h", "?span=24h", "?span=7d", "?span=1y"):
            code, _, text = await asyncio.to_thread(get, daemon.url + query)
            pages[query] = (code, text)
        await asyncio.to_thread(screenshot, daemon.url + "?span=1h", "status-page-1h.png")
        return pages

    pages = serving(daemon, body)
    fitted = pages[""][1]
    assert 'aria-label="a: time to first byte, last 6 h"' in fitted and "<b>6 h</b>" in fitted and "fitted to the data" in fitted
    assert '<a href="?span=1h">1 h</a>' in fitted and '<a href="?span=7d">7 days</a>' in fitted
    for query, label in (("?span=1h", "1 h"), ("?span=24h", "24 h"), ("?span=7d", "7 days")):
        code, text = pages[query]
        assert code == 200 and f"last {label}\"" in text and f"<b>{label}</b>" in text and "fitted" not in text
        for svg in re.findall(r"<svg.*?</svg>", text, re.S):
            _, times = axis_labels(svg)
            assert len(times) >= 3 and all(CLOCK.match(t) for t in times), f"{query}: {times}"
    assert pages["?span=1y"][0] == 400 and "choose one of 1h, 6h, 24h, 7d" in pages["?span=1y"][1]

    # Every span's charts on one page, laid out by Chromium: no label cut or drawn over "now".
    others = "".join(re.findall(r"<svg.*?</svg>", pages["?span=24h"][1] + pages["?span=7d"][1], re.S))
    combined = tmp_path / "spans.html"
    combined.write_text(pages["?span=1h"][1].replace("</main>", others + "</main>"))
    boxes = chart_text_boxes(combined)
    assert len({box["chart"] for box in boxes}) == 6
    assert not [box for box in boxes if box["left"] < 0 or box["right"] > box["width"]]
    assert not overlapping(boxes), overlapping(boxes)
