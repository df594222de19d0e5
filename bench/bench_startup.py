"""Start-up: `linepicker env` (and `--help`) against bare `python3 -c "import sqlite3"`, interleaved.

Each round runs the commands one after another, so drift of the machine hits
them alike; the figures are medians. `env` reads a database holding one decision,
`env (2 relays)` one whose config declared two relays, each with its choice (issue 14:
as fast as one). Also checks, with `python -X importtime`, that the env path loads none
of the heavy modules, and that `status` over that database loads none of those it never
uses (issue 5, #5). Target (issue 5, #4): env <= 1.5x the reference.
`env --config FILE` (issue 15) must read the config, so it pays for YAML but for
none of the others: it is timed beside them, without a target.

With LINEPICKER_BENCH_BASELINE=DIR (a checkout of an earlier release, e.g. from
`git archive`), the same rounds also run `env` of that release and of this tree, both
as `python -c` over the same one-relay database, so a change of env's speed is measured
against the code before it:


    python bench/run.py startup
    LINEPICKER_BENCH_BASELINE=/tmp/lp-old python bench/run.py startup
"""

from __future__ import annotations

import os
import re
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

from common import Result, linepicker_exe, median, timed_run
from configs import isolated_env, write_config

HEAVY = ["aiohttp", "apscheduler", "sqlite_utils", "rich", "yaml", "click"]
NOT_FOR_STATUS = ["aiohttp", "apscheduler", "asyncio", "sqlite_utils"]  # probing, the daemon, writing
NOT_FOR_ENV_CONFIG = [name for name in HEAVY if name != "yaml"]
URL = "http://127.0.0.1:9/main"


def seed_choice(db: Path) -> None:
    from linepicker.config import Line
    from linepicker.store import Store

    with Store(db) as store:
        store.line_ids([Line("main", URL)])  # known already, so `status` only reads
        store.record_decision("main", URL, None, "bench", None)


def seed_relays(db: Path) -> None:
    """Two relays, as `pick` with a relays: config leaves them: each relay's exports recorded, each with a choice."""
    from linepicker.config import Config, Line
    from linepicker.store import Store

    relays = [
        Config(db, "bench", (Line("main", URL),), relay="whatai", exports=("OPENAI_BASE_URL", "OPENAI_API_BASE")),
        Config(db, "bench", (Line("main", URL + "/claude"),), relay="claude", exports=("ANTHROPIC_BASE_URL",)),
    ]
    with Store(db) as store:
        store.set_relays(relays)
        for config in relays:
            store.scoped(config.relay).record_decision("main", config.lines[0].url, None, "bench", None)


ENTRY = "import sys; sys.argv[0] = 'linepicker'; from linepicker.entry import main; main()"


def loaded_modules(argv: list[str], env: dict[str, str]) -> set[str]:
    proc = subprocess.run([sys.executable, "-X", "importtime", *argv], capture_output=True, text=True, env=env)
    return {m.group(1).strip().split(".")[0] for m in re.finditer(r"^import time:.*\|\s*(\S+)\s*$", proc.stderr, re.M)}


def run(quick: bool = False) -> Result:
    result = Result("startup", "python bench/run.py startup")
    rounds = 5 if quick else 60
    exe = linepicker_exe()
    with tempfile.TemporaryDirectory(prefix="lp-bench-startup-") as tmp:
        db = Path(tmp) / "lp.db"
        seed_choice(db)
        relays_db = Path(tmp) / "relays.db"
        seed_relays(relays_db)
        env = isolated_env(Path(tmp) / "home")
        config = write_config(Path(tmp) / "lines.yaml", {"main": URL})
        commands = {
            "python3 -c 'import sqlite3'": [sys.executable, "-c", "import sqlite3"],
            "linepicker env": [exe, "env", "--db", str(db)],
            "linepicker --help": [exe, "--help"],
            "linepicker env --config FILE": [exe, "env", "--db", str(db), "--config", str(config)],
            "linepicker env (2 relays)": [exe, "env", "--db", str(relays_db)],
        }
        paths = {}
        if baseline := os.environ.get("LINEPICKER_BENCH_BASELINE"):
            here = str(Path(__file__).resolve().parent.parent)
            for name, path in (("env, baseline (python -c)", baseline), ("env, this tree (python -c)", here)):
                commands[name] = [sys.executable, "-c", ENTRY, "env", "--db", str(db)]
                paths[name] = path
        times: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(rounds):
            for name, argv in commands.items():
                wall, proc = timed_run(argv, env={**env, "PYTHONPATH": paths[name]} if name in paths else env)
                if proc.returncode != 0:
                    raise RuntimeError(f"{name} exited {proc.returncode}: {proc.stderr[:300]}")
                times[name].append(wall)
        heavy = sorted(set(HEAVY) & loaded_modules([exe, "env", "--db", str(db)], env))
        config_heavy = sorted(set(NOT_FOR_ENV_CONFIG) & loaded_modules([exe, "env", "--db", str(db), "--config", str(config)], env))
        status_heavy = sorted(set(NOT_FOR_STATUS) & loaded_modules([exe, "status", "--config", str(config), "--db", str(db)], env))
    ref, env_s, help_s, env_config_s, relays_s = (median(times[n]) for n in list(commands)[:5])
    result.data.update(
        rounds=rounds,
        medians_ms={n: round(median(v) * 1000, 2) for n, v in times.items()},
        heavy_on_env_path=heavy,
        heavy_on_env_config_path=config_heavy,
        heavy_on_status_path=status_heavy,
    )
    result.check(
        "linepicker env <= 1.5x python3 -c 'import sqlite3' (medians, interleaved)",
        f"env {env_s * 1000:.1f} ms = {env_s / ref:.2f}x",
        f"python3 -c 'import sqlite3' {ref * 1000:.1f} ms ({rounds} runs each)",
        env_s / ref <= 1.5,
    )
    result.check(
        "linepicker env over two relays <= 1.5x python3 -c 'import sqlite3', as one relay",
        f"env (2 relays) {relays_s * 1000:.1f} ms = {relays_s / ref:.2f}x; one relay {env_s * 1000:.1f} ms",
        f"python3 -c 'import sqlite3' {ref * 1000:.1f} ms",
        relays_s / ref <= 1.5,
    )
    if paths:
        old, new = (median(times[name]) for name in paths)
        result.check(
            "env of this tree against the baseline release, both `python -c` on one relay",
            f"this tree {new * 1000:.1f} ms = {new / old:.2f}x",
            f"baseline {old * 1000:.1f} ms",
            None,
        )
    result.check(
        f"env path loads none of {', '.join(HEAVY)} (python -X importtime)",
        "loaded: " + (", ".join(heavy) or "none"),
        "the console script `linepicker env --db FILE`",
        not heavy,
    )
    result.check(
        f"status path loads none of {', '.join(NOT_FOR_STATUS)} (python -X importtime)",
        "loaded: " + (", ".join(status_heavy) or "none"),
        "`linepicker status --config FILE --db FILE`, the database up to date",
        not status_heavy,
    )
    result.check(
        f"env --config path loads none of {', '.join(NOT_FOR_ENV_CONFIG)} (python -X importtime)",
        "loaded: " + (", ".join(config_heavy) or "none"),
        "`linepicker env --db FILE --config FILE`: the YAML parser is its one extra",
        not config_heavy,
    )
    result.check(
        "linepicker env --config FILE (reads the config: YAML, no click)",
        f"{env_config_s * 1000:.1f} ms = {env_config_s / ref:.2f}x",
        f"python3 -c 'import sqlite3' {ref * 1000:.1f} ms; plain env {env_s * 1000:.1f} ms",
        None,
    )
    result.check(
        "linepicker --help (click, no asyncio/aiohttp)",
        f"{help_s * 1000:.1f} ms = {help_s / ref:.2f}x",
        f"python3 -c 'import sqlite3' {ref * 1000:.1f} ms",
        None,
    )
    return result
