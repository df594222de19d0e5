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
sys.path.insert(0, str(HERE.parent / "tests"))  # tests/servers.py: the loopback relay

from common import MEASURED_CLI  # noqa: E402  (bench/ is on sys.path when run as a script)

HOUR = 1_700_000_000 // 3600 * 3600


def roll_up_row(work: Path) -> list[str]:
    """Item 1: 1,000 samples at fractional seconds over 10 hours, rolled up; and the old rows, migrated."""
    from linepicker import store as store_module
    from linepicker.config import Line
    from linepicker.probe.phases import Phases
    from linepicker.probe.sample import Sample
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
    # A file lacking 0005, as the previous release left it (0007_relays kept: this release's Store writes its rows).
    store_module.MIGRATIONS = [migration for migration in MIGRATIONS if migration[0] != "0005_fold_hourly"]
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


TRICKY_SETTINGS = (
    '{\r\n\t"big": 1e400,\r\n\t"huge": ' + "9" * 5000 + ',\r\n\t"zero": -0.0, "one": 1.0, "int": 1,\r\n'
    '\t"text": "caf\\u00e9 \\/ \\ud83d\\ude00",\r\n\t"dup": 1, "dup": 2,\r\n'
    '\t"env": {"FOO": "1", "ANTHROPIC_BASE_URL": "https://old.example"}\r\n}\r\n'
)
NODE_COMPARE = (
    'const fs = require("fs"); const [a, b] = process.argv.slice(1).map((p) => JSON.parse(fs.readFileSync(p, "utf8")));'
    "a.env.ANTHROPIC_BASE_URL = b.env.ANTHROPIC_BASE_URL; console.log(JSON.stringify(a) === JSON.stringify(b));"
)


def cli(*argv: str) -> tuple[int, str]:
    """The real CLI in a child process: exit code and stderr."""
    import subprocess

    done = subprocess.run([sys.executable, "-m", "linepicker", *argv], capture_output=True, text=True, timeout=120)
    return done.returncode, done.stderr


def settings_rows(work: Path) -> list[str]:
    """Item 2 (and 15's settings.json part): values no round trip keeps, files that are not JSON, a surrogate on `pin`."""
    import shutil
    import subprocess

    import yaml

    from linepicker.errors import TargetError
    from linepicker.targets import update_claude_settings

    url = "https://new.example"
    before, after = work / "before.json", work / "settings.json"
    before.write_bytes(TRICKY_SETTINGS.encode())
    after.write_bytes(TRICKY_SETTINGS.encode())
    update_claude_settings(after, url)
    expected = TRICKY_SETTINGS.replace('"https://old.example"', f'"{url}"').encode()
    changed = sum(1 for a, b in zip(after.read_bytes(), expected) if a != b) + abs(len(after.read_bytes()) - len(expected))
    node = "node not installed"
    if shutil.which("node"):
        same = subprocess.run(["node", "-e", NODE_COMPARE, str(before), str(after)], capture_output=True, text=True).stdout.strip()
        node = "every other value the same" if same == "true" else "VALUES DIFFER"
    rows = [
        f"| 2 | settings.json with `1e400`, a 5,000-digit integer, `-0.0`, `1.0`, `\\u00e9`, `\\/`, a duplicate key, tabs, CRLF; "
        f"`update_claude_settings` | {changed} bytes differ from the file with only the URL replaced; Node's JSON.parse: {node} |"
    ]
    refused = 0
    cases = [b'{"big": NaN}', b'{"big": Infinity}', b'{"s": "\\ud83d"}', b'{"a": 1,}', b'\xff{}']
    for content in cases:
        path = work / "bad.json"
        path.write_bytes(content)
        try:
            update_claude_settings(path, url)
        except TargetError as exc:
            refused += "\n" not in str(exc) and path.read_bytes() == content
    rows.append(f"| 2 | settings.json holding NaN, Infinity, `\"\\ud83d\"`, a trailing comma, a non-UTF-8 byte | "
                f"{refused} of {len(cases)} left byte for byte with a one-line error |")
    settings, later = work / "pin-settings.json", work / "later.env"
    settings.write_bytes(b'{"note": "\\ud83d"}')
    config = work / "pin.yaml"
    config.write_text(yaml.safe_dump({
        "lines": [{"name": "a", "url": "https://a.example"}],
        "targets": {"claude_settings": str(settings), "template": [{"path": str(later), "template": "URL={url}\n"}]},
    }))
    code, err = cli("pin", "a", "--config", str(config), "--db", str(work / "pin.db"))
    lines = [line for line in err.splitlines() if "Traceback" in line or str(settings) in line]
    rows.append(f"| 15 | `linepicker pin a` with `\"\\ud83d\"` in a settings.json target, a template target after it | "
                f"exit {code}, {len(lines)} stderr line about it, later target {'written' if later.exists() else 'NOT written'}, "
                f"{'no traceback' if 'Traceback' not in err else 'TRACEBACK'} |")
    return rows


def dotenv_rows(work: Path) -> list[str]:
    """Items 3 and 12: .env read by python-dotenv's grammar; values read back exactly by sh, bash, zsh and python-dotenv."""
    import shutil
    import subprocess

    from dotenv import dotenv_values

    from linepicker.errors import TargetError
    from linepicker.clientenv import client_env
    from linepicker.targets import update_dotenv

    url = "https://new.example"
    user = (
        "NOTE='a\x0cOPENAI_BASE_URL=glued'\nWIDE='b\u2028ANTHROPIC_BASE_URL=glued\x85c'\n"
        'CERT="-----BEGIN-----\nOPENAI_BASE_URL=https://inside.example/v1\n-----END-----"\n'
    )
    env = work / "user.env"
    env.write_text(user)
    before = dict(dotenv_values(env))
    update_dotenv(env, url)
    after = dict(dotenv_values(env))
    kept = env.read_text().startswith(user) and all(after[key] == value for key, value in before.items())
    rows = [
        "| 3 | .env with \\x0c, U+2028 and \\x85 inside values, and `OPENAI_BASE_URL=` inside another key's multi-line value | "
        f"user's bytes {'kept' if kept else 'CHANGED'}; python-dotenv reads {sum(after.get(k) == v for k, v in client_env(url).items())} of 3 keys set |"
    ]
    shells = [shell for shell in ("sh", "bash", "zsh") if shutil.which(shell)]
    urls = [
        "https://a.example/$(touch pwned)", "https://a.example/`touch pwned`", "https://a.example/x;touch pwned",
        "https://a.example/x&&touch pwned", "https://a.example/x|touch pwned", "https://a.example/a'b", 'https://a.example/a"b',
        "https://a.example/a\\b", "https://a.example/${HOME}", "https://a.example/$HOME", "https://a.example/x #c",
        "https://a.example/*?[a]~!#%41(x)<y>{z}", "https://a.example/a'b\"c", "https://a.example/\nEVIL=1",
    ]
    styles = ["OPENAI_BASE_URL=old", "OPENAI_BASE_URL='old'", 'OPENAI_BASE_URL="old"', "export OPENAI_BASE_URL=old", "OTHER=1"]
    written = exact = refused = untouched = 0
    for n, (value, style) in enumerate((u, s) for u in urls for s in styles):
        path = work / f"{n}.env"
        path.write_text(style + "\n")
        try:
            update_dotenv(path, value)
        except TargetError:
            refused += 1
            untouched += path.read_text() == style + "\n"
            continue
        written += 1
        expected = client_env(value)
        reads = [{k: v for k, v in dotenv_values(path).items() if k in expected}]
        for shell in shells:
            script = f'set -a; . "{path}"; ' + " ".join(f'printf "%s\\0" "${name}";' for name in expected)
            out = subprocess.run([shell, "-c", script], capture_output=True, cwd=work).stdout.decode().split("\0")
            reads.append(dict(zip(expected, out)))
        exact += all(read == expected for read in reads)
    ran = (work / "pwned").exists()
    rows.append(
        f"| 12 | {len(urls)} hostile URLs (`$(…)`, backticks, `;`, `&&`, `\\|`, quotes, `\\`, `${{HOME}}`, newline) × {len(styles)} quoting styles, "
        f"read back by python-dotenv and `set -a; . ./.env` in {', '.join(shells)} | {exact} of {written} written read back exactly by all; "
        f"{refused} refused, {untouched} of them left byte for byte; commands run: {'YES' if ran else 0} |"
    )
    import yaml

    from linepicker.config import load_config
    from linepicker.errors import ConfigError

    chars = [" ", "'", '"', "`", "$", "%", "%4g", "\\", "<", ">", "{", "}", "|", "^", "\t", "\x85", "\u2028"]
    errors = 0
    for char in chars:
        config = work / "url.yaml"
        config.write_text(yaml.safe_dump({"lines": [{"name": "a", "url": f"https://a.example/x{char}y"}]}))
        try:
            load_config(config)
        except ConfigError as exc:
            errors += f"{config}:" in str(exc) and "\n" not in str(exc)
    rows.append(f"| 12 | a line URL holding each of {len(chars)} characters no BaseURL needs (whitespace, quotes, `` ` ``, `$`, stray `%`, "
                f"`\\ < > {{ }} ^`, `\\|`, controls) | {errors} of {len(chars)} one-line config errors with file:line |")
    return rows


def config_edit_row(work: Path) -> list[str]:
    """Item 4: `linepicker remove` and `add` after a line break that str.count("\\n") misses."""
    breaks = {"U+2028": "\u2028", "U+2029": "\u2029", "\\x85": "\x85", "lone \\r": "\r", "CRLF": "\r\n"}
    kept = 0
    for n, brk in enumerate(breaks.values()):
        path = work / f"edit{n}.yaml"
        path.write_bytes((
            f"# relay{brk}# notes\nlines:\n  - name: a\n    url: https://a.example\n    proxy: http://127.0.0.1:1\n"
            f"  - name: b\n    url: https://b.example\n  - name: c\n    url: https://c.example\n    proxy: none\n"
        ).encode())
        removed = cli("remove", "b", "--config", str(path))[0]
        added = cli("add", "d", "https://d.example", "--config", str(path))[0]
        from linepicker.config import load_config

        proxies = [(line.name, line.proxy) for line in load_config(path).lines]
        kept += (removed, added) == (0, 0) and proxies == [("a", "http://127.0.0.1:1"), ("c", "none"), ("d", None)]
    return [f"| 4 | `linepicker remove b` then `add d` after a comment holding each of {', '.join(breaks)} | "
            f"{kept} of {len(breaks)} files hold exactly a, c, d with their proxies |"]


def daemon_lock_row(work: Path) -> list[str]:
    """Item 6: a second daemon on the same database through a symlink to it."""
    import subprocess
    import time

    import yaml

    config = work / "daemon.yaml"
    config.write_text(yaml.safe_dump({"probe": {"timeout": 1, "samples": 1}, "lines": [{"name": "a", "url": "http://127.0.0.1:9"}]}))
    db = work / "daemon.db"
    link = work / "link.db"
    link.symlink_to(db)
    first = subprocess.Popen([sys.executable, "-m", "linepicker", "daemon", "--config", str(config), "--db", str(db), "--listen", "off"],
                             stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while not (work / "daemon.db.lock").exists() or not (work / "daemon.db.lock").read_text().strip():
            if time.monotonic() > deadline:
                raise RuntimeError("the first daemon did not take its lock")
            time.sleep(0.05)
        started = time.perf_counter()
        code, err = cli("daemon", "--config", str(config), "--db", str(link), "--listen", "off")
        took = time.perf_counter() - started
    finally:
        first.terminate()
        first.wait(timeout=20)
    last = err.strip().splitlines()[-1].replace(str(work), "…") if err.strip() else ""
    return [f"| 6 | a second `linepicker daemon` on the same database through a symlink (`--db link.db`) | exit {code} in {took:.2f} s: {last} |"]


def newer_database_row(work: Path) -> list[str]:
    """Item 7: every command on a database that a newer release migrated further."""
    import yaml

    from linepicker.store import Store

    db = work / "newer.db"
    with Store(db) as store:
        store.record_decision("a", "https://a.example", None, "bench", None)
        store.conn.execute("insert into migrations (name, applied_at) values ('0099_future', 0)")
        store.conn.commit()
    before = db.read_bytes()
    config = work / "newer.yaml"
    config.write_text(yaml.safe_dump({"lines": [{"name": "a", "url": "http://127.0.0.1:9"}]}))
    commands = [["status"], ["pick"], ["probe"], ["history"], ["doctor"], ["unpin"], ["pin", "a"], ["report", "--html", str(work / "r.html")],
                ["daemon", "--listen", "off"], ["env"]]
    refused = 0
    for argv in commands:
        options = ["--db", str(db)] + ([] if argv[0] in ("env", "unpin") else ["--config", str(config)])
        code, err = cli(*argv, *options) if argv[0] != "env" else console_env(options)
        refused += code == 1 and "written by a newer linepicker" in err and "Traceback" not in err
    unchanged = db.read_bytes() == before
    return [f"| 7 | each of {len(commands)} commands (`env`'s fast path included) on a database holding migration `0099_future` | "
            f"{refused} of {len(commands)} refused in one line \"…: written by a newer linepicker …\"; file {'unchanged' if unchanged else 'CHANGED'} |"]


def console_env(options: list[str]) -> tuple[int, str]:
    """`linepicker env` through the console script (its fast path, not click)."""
    import subprocess

    script = Path(sys.executable).parent / "linepicker"
    done = subprocess.run([str(script), "env", *options], capture_output=True, text=True, timeout=60)
    return done.returncode, done.stderr


def bundled_key_row(work: Path) -> list[str]:
    """Item 9: the key and the bundled default, through a real `pick` round against a loopback relay recording headers."""
    import asyncio
    import os

    from servers import ServerThread

    from linepicker import picker
    from linepicker.config import BUNDLED, bundled_config_path, parse_config
    from linepicker.store import Store

    shipped = parse_config(bundled_config_path().read_bytes(), bundled_config_path(), BUNDLED)
    server = ServerThread()
    relay = server.start_relay()
    saved = os.environ.get("OPENAI_API_KEY")
    os.environ["OPENAI_API_KEY"] = "sk-bench-0123456789abcdef"
    try:
        sent = {}
        for origin in (BUNDLED, "--config"):
            path = work / f"{origin.replace(' ', '-')}.yaml"
            path.write_text(f"key_env: OPENAI_API_KEY\nprobe: {{timeout: 2, samples: 3}}\nlines:\n  - name: k\n    url: {relay.url('k')}\n")
            config = parse_config(path.read_bytes(), path, origin)
            relay.requests.clear()
            with Store(work / "key.db") as store:
                asyncio.run(picker.run_round(config, store, "pick"))
            sent[origin] = sum("Authorization" in headers for headers in relay.requests["k"]), len(relay.requests["k"])
    finally:
        server.stop()
        if saved is None:
            os.environ.pop("OPENAI_API_KEY", None)
        else:
            os.environ["OPENAI_API_KEY"] = saved
    return [
        f"| 9 | the shipped lines.yaml | key_env: {shipped.key_env} |",
        f"| 9 | `pick` with OPENAI_API_KEY set and `key_env: OPENAI_API_KEY`: as the bundled default / as the user's config | "
        f"key sent in {sent[BUNDLED][0]} of {sent[BUNDLED][1]} requests / {sent['--config'][0]} of {sent['--config'][1]} |",
    ]


def userinfo_row(work: Path) -> list[str]:
    """Item 11: proxy passwords in `doctor` (table and JSON) and in config errors, through the real CLI."""
    import os
    import subprocess

    import yaml

    secret = "s3cr3t-pw"
    config = work / "proxy.yaml"
    config.write_text(yaml.safe_dump({"lines": [{"name": "a", "url": "https://a.example", "proxy": f"http://alice:{secret}@127.0.0.1:3128"}]}))
    db = str(work / "proxy.db")
    env = {**os.environ, "HTTPS_PROXY": f"http://bob:{secret}@127.0.0.1:8080", "HOME": str(work)}
    run = lambda *argv: subprocess.run([sys.executable, "-m", "linepicker", *argv], capture_output=True, text=True, env=env, cwd=work)  # noqa: E731
    run("pin", "a", "--config", str(config), "--db", db)
    shown = "".join(done.stdout + done.stderr for done in (run("doctor", "--config", str(config), "--db", db), run("doctor", "--json", "--config", str(config), "--db", db)))
    bad = work / "bad-proxy.yaml"
    bad.write_text(yaml.safe_dump({"lines": [{"name": "a", "url": f"https://me:{secret}@a.example"}]}))
    error = run("pick", "--config", str(bad), "--db", db).stderr
    return [f"| 11 | `doctor` (table and `--json`) with a line proxy and HTTPS_PROXY holding passwords; a config error quoting a URL with one | "
            f"password shown {shown.count(secret) + error.count(secret)} times; `user:***@` shown {shown.count(':***@') + error.count(':***@')} times |"]


def shell_quoting_row(work: Path) -> list[str]:
    """Item 13: what cmd and PowerShell are given for a value holding their special characters (no cmd or pwsh here to run it)."""
    from linepicker.clientenv import shell_exports

    url = 'https://r.example/"%&^!|<>\u2019x'
    cmd = shell_exports(url, "cmd").splitlines()[2]
    powershell = shell_exports(url, "powershell").splitlines()[2]
    cell = lambda text: "`` " + text.replace("|", "\\|") + " ``"  # noqa: E731
    return [f"| 13 | `env --shell cmd` / `--shell powershell` for {cell(url)} (text only: neither shell runs on this machine) | "
            f"{cell(cmd)} / {cell(powershell)} |"]


def cli_measured(*argv: str) -> tuple[int, float, float, str]:
    """The real CLI: exit code, seconds from spawn to exit, its own peak RSS in MiB (VmHWM), stderr."""
    import os
    import subprocess
    import time

    with tempfile.NamedTemporaryFile("r") as hwm:
        started = time.perf_counter()
        done = subprocess.run([sys.executable, "-c", MEASURED_CLI, *argv], capture_output=True, text=True,
                              env={**os.environ, "BENCH_HWM_FILE": hwm.name}, timeout=300)
        took = time.perf_counter() - started
        peak = int(hwm.read() or 0) / 1024
    return done.returncode, took, peak, done.stderr


def bounds_rows(work: Path) -> list[str]:
    """Item 15: numbers bounded where they are parsed: config durations, --since spans, --listen ports."""
    import time

    import yaml

    from linepicker.config import Line
    from linepicker.probe.phases import Phases
    from linepicker.probe.sample import Sample
    from linepicker.store import Store

    good = {"lines": [{"name": "a", "url": "http://127.0.0.1:9"}]}
    config = work / "bounds.yaml"
    refused = []
    for key, value in (("interval", 100000000000000), ("down_interval", "2d"), ("timeout", "11m")):
        config.write_text(yaml.safe_dump({**good, "probe": {key: value}}))
        code, _, _, err = cli_measured("status", "--config", str(config), "--db", str(work / "bounds.db"))
        refused.append(code == 2 and len(err.strip().splitlines()) == 1 and "up to" in err)
    config.write_text(yaml.safe_dump(good))
    db = work / "bounds.db"
    with Store(db) as store:  # a day of samples, once a minute, to draw
        ids = store.line_ids([Line("a", "http://127.0.0.1:9")])
        now = time.time()
        store.add_samples(store.start_round("daemon"), ids, [Sample("a", 0, now - m * 60, "ok", True, Phases(ttfb_ms=40.0)) for m in range(1440)])
    rows = [f"| 15 | `probe.interval: 100000000000000`, `probe.down_interval: 2d`, `probe.timeout: 11m` | "
            f"{sum(refused)} of {len(refused)} one-line config errors, exit 2 |"]
    for argv in (["history", "--since", "9999999d"], ["report", "--html", str(work / "r.html"), "--since", "10000000d"],
                 ["report", "--html", str(work / "r.html"), "--since", "3650d"], ["history", "--since", "3650d"]):
        code, took, peak, err = cli_measured(*argv, "--config", str(config), "--db", str(db))
        said = (err.strip().splitlines() or [""])[-1].replace(str(work), "…").replace("|", "\\|")
        rows.append(f"| 15 | `{' '.join(a if not a.startswith(str(work)) else Path(a).name for a in argv)}` | exit {code} in {took:.2f} s, "
                    f"peak RSS {peak:.0f} MiB{': ' + said if code else ''} |")
    code, took, _, err = cli_measured("daemon", "--config", str(config), "--db", str(db), "--listen", "127.0.0.1:\u00b2")
    rows.append(f"| 15 | `daemon --listen 127.0.0.1:\u00b2` (a digit to str.isdigit) | exit {code}, "
                f"{'traceback' if 'Traceback' in err else 'one line'} |")
    return rows


def read_only_row(work: Path) -> list[str]:
    """Item 21: the readers on a read-only bind mount of the database's directory (root, a mount namespace of its own)."""
    import os
    import shutil
    import subprocess

    import yaml

    from linepicker.store import Store

    if os.geteuid() != 0 or not shutil.which("unshare"):
        return ["| 21 | readers on a read-only filesystem | not measured: needs root for a read-only mount |"]
    state, mount, out = work / "ro-state", work / "ro-mnt", work / "ro-out"
    for directory in (state, mount, out):
        directory.mkdir()
    with Store(state / "lp.db") as store:
        store.record_decision("a", "https://a.example", None, "bench", None)
    config = work / "ro.yaml"
    config.write_text(yaml.safe_dump({"lines": [{"name": "a", "url": "https://a.example"}]}))
    console = Path(sys.executable).parent / "linepicker"
    readers = {"env": "env", "status": "status --json", "history": "history --json", "doctor": "doctor --json",
               "report": f"report --html {out}/r.html", "pick": "pick --json"}
    script = [f"mount --bind {state} {mount} && mount -o remount,bind,ro {mount}"]
    for name, args in readers.items():
        extra = "" if name == "env" else f" --config {config}"
        script.append(f"{console} {args} --db {mount}/lp.db{extra} >/dev/null 2>{out}/{name}.err; echo $? >{out}/{name}.rc")
    subprocess.run(["unshare", "-m", "sh", "-c", "; ".join(script)], capture_output=True, timeout=300)
    results = {name: (int((out / f"{name}.rc").read_text() or 99), (out / f"{name}.err").read_text()) for name in readers}
    worked = [name for name, (code, err) in results.items() if name != "pick" and code in (0, 1) and "error:" not in err]
    pick_code, pick_err = results["pick"]
    said = (pick_err.strip().splitlines() or [""])[-1].replace(str(mount), "…")
    return [f"| 21 | `env`, `status`, `history`, `doctor`, `report` on a read-only mount of the database's directory; then `pick` | "
            f"{len(worked)} of {len(readers) - 1} read it; `pick` exit {pick_code}: {said} |"]


def service_rows(work: Path) -> list[str]:
    """Item 23: `service install` with the bundled config, and a unit for paths holding % $ " and spaces, read by systemd-analyze."""
    import os
    import shutil
    import subprocess

    env = {**os.environ, "XDG_CONFIG_HOME": str(work / "xdg"), "HOME": str(work / "home")}
    env.pop("LINEPICKER_CONFIG", None)
    run = lambda *argv: subprocess.run([sys.executable, "-m", "linepicker", *argv], capture_output=True, text=True, env=env, cwd=work)  # noqa: E731
    bundled = run("service", "install")
    said = (bundled.stderr.strip().splitlines() or [""])[-1]
    odd = work / 'svc %z $HOME "q"'
    odd.mkdir()
    (odd / "lines.yaml").write_text("lines:\n  - name: a\n    url: https://a.example\n")
    installed = run("service", "install", "--config", str(odd / "lines.yaml"), "--db", str(odd / "lp.db"))
    unit = work / "xdg" / "systemd" / "user" / "linepicker.service"
    verdict = "systemd-analyze not installed"
    if shutil.which("systemd-analyze") and unit.exists():
        verified = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)
        verdict = f"`systemd-analyze verify` exit {verified.returncode}" + (f": {verified.stderr.strip().splitlines()[0]}" if verified.returncode else "")
    text = unit.read_text() if unit.exists() else ""
    return [
        f"| 23 | `service install` with only the bundled lines.yaml | exit {bundled.returncode}: {said} |",
        f"| 23 | `service install` for a config under `svc %z $HOME \"q\"/` | exit {installed.returncode}; {verdict}; "
        f"`After=network-online.target` {'present' if 'network-online' in text else 'absent'} |",
    ]


ROWS: list[Callable[[Path], list[str]]] = [
    roll_up_row, settings_rows, dotenv_rows, config_edit_row, daemon_lock_row, newer_database_row, bundled_key_row, userinfo_row, shell_quoting_row, bounds_rows, read_only_row, service_rows,
]


def table(work: Path) -> list[str]:
    work.mkdir(parents=True, exist_ok=True)
    rows = ["| item | case | result (measured in this run) |", "| ---: | --- | --- |"]
    measured = []
    for build in ROWS:
        for row in build(work):
            measured.append(row)
            print(row, file=sys.stderr)
    return rows + sorted(measured, key=lambda row: int(row.split("|")[1]))  # by item number, stable within one


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="linepicker-hardening-") as work:
        print("\n".join(table(Path(work))))


if __name__ == "__main__":
    main()
