"""Run linepicker's benchmarks (issue 5); each prints its figure next to the reference it is compared with.

    python bench/run.py                       # all of them
    python bench/run.py accuracy store        # some
    python bench/run.py --quick               # miniature runs (what the smoke test does)
    python bench/run.py --json results.json   # also keep the figures

Exit status 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import Result, scrub_proxies  # noqa: E402

BENCHES = {
    "accuracy": "bench_accuracy",
    "load": "bench_load",
    "decision": "decision",
    "overhead": "bench_overhead",
    "startup": "bench_startup",
    "store": "bench_store",
    "daemon": "bench_daemon",
    "gateway": "gateway",
    "web": "bench_web",
}


def machine() -> dict[str, object]:
    return {"nproc": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()}


def run_one(name: str, quick: bool) -> Result:
    print(f"\n### {name}", flush=True)
    started = time.perf_counter()
    result: Result = importlib.import_module(BENCHES[name]).run(quick=quick)
    result.data["bench_wall_s"] = round(time.perf_counter() - started, 2)
    result.print_summary()
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", metavar="name", help=f"any of: {', '.join(BENCHES)} (default: all)")
    parser.add_argument("--quick", action="store_true", help="miniature runs: they check the benches work, their figures mean nothing")
    parser.add_argument("--json", help="also write every result as JSON to this file")
    args = parser.parse_args(argv)
    unknown = [name for name in args.names if name not in BENCHES]
    if unknown:
        parser.error(f"no bench named {', '.join(unknown)}; choose from {', '.join(BENCHES)}")
    scrub_proxies()
    print(f"machine: {machine()}", flush=True)
    results = [run_one(name, args.quick) for name in args.names or BENCHES]
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine(), "results": [r.to_json() for r in results]}, indent=2, default=str))
    missed = [f"{r.name}: {c.target}" for r in results for c in r.checks if c.passed is False]
    print("\nmissed:\n  " + "\n  ".join(missed) if missed else "\nevery target met", flush=True)
    return 1 if missed and not args.quick else 0


if __name__ == "__main__":
    sys.exit(main())
