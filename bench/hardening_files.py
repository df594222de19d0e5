"""The files-and-input rows of docs/reliability.md (issue 11): each case run for real, its figure measured here.

    python bench/reliability.py      # prints them among the other tables
    python bench/hardening_files.py  # this table alone

Every row names the issue item, what was done to linepicker, and what it did,
as counted in this run: rows in a real database, bytes of a real file,
exit codes and stderr of the real CLI, what bash and python-dotenv read back.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Callable

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

HOUR = 1_700_000_000 // 3600 * 3600


def roll_up_row(work: Path) -> list[str]:
    """Item 1: 1,000 samples at fractional seconds over 10 hours, rolled up; and the old rows, migrated."""
    from linepicker import store as store_module
    from linepicker.config import Line
    from linepicker.probe import Phases, Sample
    from linepicker.store import MIGRATIONS, Store

    times = [HOUR + i * 36.0 + (i + 1) / 1024 for i in range(1000)]  # the old bug kept each fraction
    samples = [Sample("a", 0, at, "ok", True, Phases(ttfb_ms=50.0 + i % 30)) for i, at in enumerate(times)]
    with Store(work / "rollup.db") as store:
        ids = store.line_ids([Line("a", "https://a.example")])
        store.add_samples(store.start_round("daemon"), ids, samples)
        old_rows = store.conn.execute("select count(distinct started_at - started_at % 3600) from samples").fetchone()[0]
        store.roll_up(HOUR + 11 * 3600)
        new_rows = store.conn.execute("select count(*) from hourly").fetchone()[0]
    old = work / "old.db"
    saved = store_module.MIGRATIONS
    store_module.MIGRATIONS = MIGRATIONS[:4]  # a file of the previous release
    try:
        with Store(old) as store:
            ids = store.line_ids([Line("a", "https://a.example")])
            store.add_samples(store.start_round("daemon"), ids, samples)
            store.conn.execute(
                "insert or ignore into hourly select line_id, started_at - started_at % 3600, 1, 1, ttfb_ms, ttfb_ms, ttfb_ms, ttfb_ms, "
                "'{\"ok\": 1}' from samples"
            )
            store.conn.commit()
            written = store.conn.execute("select count(*) from hourly").fetchone()[0]
    finally:
        store_module.MIGRATIONS = saved
    with Store(old) as store:
        folded, counted = store.conn.execute("select count(*), sum(samples) from hourly").fetchone()
    return [
        f"| 1 | roll-up of 1,000 samples at fractional seconds over 10 hours (`store.roll_up`) | {new_rows} hourly rows "
        f"(the old SQL expression gives {old_rows}) |",
        f"| 1 | a previous release's file with {written} one-sample \"hour\" rows, opened (migration `0005_fold_hourly`) | "
        f"{folded} hourly rows holding all {counted} samples |",
    ]


ROWS: list[Callable[[Path], list[str]]] = [roll_up_row]


def table(work: Path) -> list[str]:
    work.mkdir(parents=True, exist_ok=True)
    rows = ["| item | case | result (measured in this run) |", "| ---: | --- | --- |"]
    for build in ROWS:
        for row in build(work):
            rows.append(row)
            print(row, file=sys.stderr)
    return rows


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="linepicker-hardening-") as work:
        print("\n".join(table(Path(work))))


if __name__ == "__main__":
    main()
