"""Decision time: the real `linepicker pick` over 20 lines of which 5 hang, with a 10 s timeout.

The hanging lines never answer; a pick that waited for them would take the whole
timeout. Target (issue 5, #3): <= 1.5 s wall, process start to exit. Reference: the
same CLI's `linepicker --version` (interpreter and import cost alone) in the same run.

    python bench/run.py decision
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from common import Result, Servers, fmt, linepicker_exe, median, timed_run
from configs import isolated_env, write_config

DELAYS = [20, 30, 40, 50, 60, 70, 80, 90, 100, 120, 140, 160, 180, 200, 250]
HANGING = 5
TIMEOUT_S = 10


def run(quick: bool = False) -> Result:
    result = Result("decision", "python bench/run.py decision")
    repeats = 1 if quick else 5
    exe = linepicker_exe()
    with Servers(1) as servers, tempfile.TemporaryDirectory(prefix="lp-bench-") as tmp:
        urls = {f"d{d}": servers.line_url(d, tag=f"d{d}") for d in DELAYS}
        urls |= {f"hang{i}": servers.hang_url(tag=f"h{i}") for i in range(HANGING)}
        config = write_config(Path(tmp) / "lines.yaml", urls, timeout=TIMEOUT_S, samples=3)
        env = isolated_env(Path(tmp) / "home")
        walls, starts, chosen = [], [], set()
        for i in range(repeats):
            db = Path(tmp) / f"run{i}.db"  # a fresh database each time: no history to lean on
            wall, proc = timed_run([exe, "pick", "--json", "--config", str(config), "--db", str(db)], env=env)
            if proc.returncode != 0:
                raise RuntimeError(f"pick exited {proc.returncode}: {proc.stderr[:500]}")
            chosen.add(_chosen(proc.stdout))
            walls.append(wall)
            starts.append(timed_run([exe, "--version"], env=env)[0])
            print(f"  run {i + 1}/{repeats}: pick {wall:.3f} s, --version {starts[-1]:.3f} s", flush=True)
    wall = median(walls)
    result.data.update(walls_s=walls, version_walls_s=starts, chosen=sorted(chosen), lines=len(urls), hanging=HANGING, timeout_s=TIMEOUT_S)
    result.check(
        f"pick over {len(urls)} lines ({HANGING} hang, timeout {TIMEOUT_S} s) <= 1.5 s wall",
        f"median {fmt(wall, ' s', 3)} over {repeats} runs (max {fmt(max(walls), ' s', 3)}), chose {', '.join(sorted(chosen))}",
        f"`linepicker --version` {fmt(median(starts), ' s', 3)}; waiting for a hanging line would be {TIMEOUT_S} s",
        wall is not None and max(walls) <= 1.5,
    )
    return result


def _chosen(stdout: str) -> str:
    data = json.loads(stdout)
    return str((data.get("chosen") or {}).get("name") if isinstance(data.get("chosen"), dict) else data.get("chosen"))
