"""Several relays in one lines.yaml: each with its own lines, key, choice, pin, history and clients.

Against real loopback lines (tests/servers.py), the real CLI, a real daemon
process and a database written by the release before relays.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path
from typing import Any, Callable

import pytest
from click.testing import Result
from prometheus_client.parser import text_string_to_metric_families

from conftest import stdout_json
from linepicker.config import load_setup, parse_setup
from linepicker.errors import ConfigError
from linepicker.store import MIGRATIONS, Store
from servers import Relay

WHATAI_KEY = "sk-whatai-7c1d9e"
CLAUDE_KEY = "sk-claude-42b8aa"
FIXTURE = Path(__file__).parent / "data" / "single_relay.db"


def two_relays(relay: Relay, tmp_path: Path, extra: str = "", probe: str = "{timeout: 2, samples: 2}") -> Path:
    """whatai (OpenAI, its main is fast) and claude (Anthropic API, its backup is fast), sharing app.env.

    Both relays have a line named main, so `pin main` is ambiguous.
    """
    path = tmp_path / "lines.yaml"
    path.write_text(
        textwrap.dedent(
            f"""\
            probe: {probe}
            policy: {{margin_ms: 5}}
            relays:
              whatai:
                key_env: WHATAI_KEY
                exports: [OPENAI_BASE_URL, OPENAI_API_BASE]
                targets: {{dotenv: app.env}}
                lines:
                  - {{name: main, url: "{relay.url("w-main", delay_ms=5)}"}}
                  - {{name: hk, url: "{relay.url("w-hk", delay_ms=80)}"}}
              claude:
                probe: {{api: anthropic}}
                key_env: CLAUDE_KEY
                exports: [ANTHROPIC_BASE_URL]
                targets: {{dotenv: app.env, claude_settings: settings.json}}
                lines:
                  - {{name: main, url: "{relay.url("c-main", delay_ms=80)}"}}
                  - {{name: backup, url: "{relay.url("c-backup", delay_ms=5)}"}}
            """
        )
        + extra
    )
    return path


@pytest.fixture
def keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WHATAI_KEY", WHATAI_KEY)
    monkeypatch.setenv("CLAUDE_KEY", CLAUDE_KEY)


def by_name(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {entry["name"]: entry for entry in document["relays"]}


def bash_values(exports: str, names: list[str]) -> list[str]:
    script = 'eval "$1"; printf "%s\\0" ' + " ".join(f'"${name}"' for name in names)
    done = subprocess.run(["bash", "-c", script, "test", exports], capture_output=True, text=True, timeout=30, env={"PATH": os.environ["PATH"]})
    assert done.returncode == 0, done.stderr
    return done.stdout.split("\0")[:-1]


def console_env(db: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """The installed console script, as a shell's rc file runs it (the fast path)."""
    script = Path(sys.executable).with_name("linepicker")
    return subprocess.run([str(script), "env", "--shell", "bash", "--db", str(db), *extra], capture_output=True, text=True, timeout=30)


# ---------------------------------------------------------------- the config


def test_a_file_of_relays_parses_each_relay_with_the_shared_settings_under_its_own(tmp_path: Path, relay: Relay) -> None:
    setup = load_setup(two_relays(relay, tmp_path))
    assert setup.named and setup.names == ("whatai", "claude")
    whatai, claude = setup.relays
    assert (whatai.key_env, whatai.exports) == ("WHATAI_KEY", ("OPENAI_BASE_URL", "OPENAI_API_BASE"))
    assert (claude.key_env, claude.exports) == ("CLAUDE_KEY", ("ANTHROPIC_BASE_URL",))
    assert (whatai.probe.api, claude.probe.api) == ("openai", "anthropic")
    assert claude.probe.timeout == whatai.probe.timeout == 2.0, "a relay's probe: overrides the shared one key by key"
    assert claude.probe.samples == 2 and claude.policy.margin_ms == 5
    assert whatai.targets.dotenv == claude.targets.dotenv == (tmp_path / "app.env",)
    assert [line.name for line in claude.lines] == ["main", "backup"]


def test_a_file_with_top_level_lines_is_one_relay_named_default_setting_every_variable(tmp_path: Path) -> None:
    setup = parse_setup("lines: [{name: a, url: 'https://a.example'}]\n", tmp_path / "lines.yaml")
    [config] = setup.relays
    assert not setup.named
    assert config.relay == "default"
    assert config.exports == ("OPENAI_BASE_URL", "OPENAI_API_BASE", "ANTHROPIC_BASE_URL")


LINE = "[{name: a, url: 'https://a.example'}]"


@pytest.mark.parametrize(
    "text, line, message",
    [
        ("relays:\n  r:\n    key_env: K\n", 2, "relay 'r' has no 'lines:'"),
        ("relays:\n  r:\n    lines: []\n", 3, "lines must be a non-empty list"),
        ("relays: {}\n", 1, "relays must map each relay's name"),
        (f"relays:\n  r/x:\n    lines: {LINE}\n", 2, "relay name 'r/x' must be 1-64 letters"),
        (f"relays:\n  r:\n    lines: {LINE}\n  r:\n    lines: {LINE}\n", 4, "duplicate relay name 'r' (first on line 2)"),
        (f"key_env: K\nrelays:\n  r:\n    lines: {LINE}\n", 1, "key_env: belongs inside each relay"),
        (f"lines: {LINE}\nrelays:\n  r:\n    lines: {LINE}\n", 1, "lines: belongs inside a relay"),
        (f"targets: {{dotenv: .env}}\nrelays:\n  r:\n    lines: {LINE}\n", 1, "'targets:' belongs inside a relay"),
        (f"relays:\n  r:\n    exports: [OPENAI_KEY]\n    lines: {LINE}\n", 3, "'OPENAI_KEY' is not a variable linepicker sets"),
        (f"relays:\n  r:\n    exports: []\n    targets: {{dotenv: .env}}\n    lines: {LINE}\n", 4, "relay 'r' exports none"),
        (f"relays:\n  r:\n    probe: {{samples: 0}}\n    lines: {LINE}\n", 3, "probe.samples must be a whole number"),
        (
            f"relays:\n  a:\n    lines: {LINE}\n  b:\n    lines: {LINE}\n",
            4,
            "relays 'a' (line 2) and 'b' both export OPENAI_BASE_URL (every variable, as no exports: is set)",
        ),
        (
            f"relays:\n  a:\n    exports: [OPENAI_API_BASE]\n    lines: {LINE}\n  b:\n    exports: [ANTHROPIC_BASE_URL, OPENAI_API_BASE]\n    lines: {LINE}\n",
            6,
            "relays 'a' (line 3) and 'b' both export OPENAI_API_BASE: each would overwrite the other's choice",
        ),
    ],
)
def test_relay_config_errors_name_the_file_and_line(tmp_path: Path, text: str, line: int, message: str) -> None:
    path = tmp_path / "lines.yaml"
    with pytest.raises(ConfigError) as caught:
        parse_setup(text, path)
    assert str(caught.value).startswith(f"{path}:{line}: "), caught.value
    assert message in str(caught.value)


def clash_file(a: str, b: str) -> str:
    return (
        f"relays:\n  a:\n    exports: [OPENAI_BASE_URL]\n    targets: {a}\n    lines: {LINE}\n"
        f"  b:\n    exports: [ANTHROPIC_BASE_URL]\n    targets: {b}\n    lines: {LINE}\n"
    )


@pytest.mark.parametrize(
    "a, b, said",
    [
        ("{claude_settings: s.json}", "{claude_settings: ./sub/../s.json}", "both write env.ANTHROPIC_BASE_URL in"),
        ("{codex: c.toml}", "{codex: {path: c.toml}}", "both write [model_providers.linepicker] base_url in"),
        ("{dotenv: .env}", "{template: {path: .env, template: 'X={url}'}}", "both write the whole file (a template) in"),
    ],
)
def test_two_relays_writing_the_same_key_of_one_file_is_an_error_naming_both(tmp_path: Path, a: str, b: str, said: str) -> None:
    (tmp_path / "sub").mkdir()
    path = tmp_path / "lines.yaml"
    with pytest.raises(ConfigError) as caught:
        parse_setup(clash_file(a, b), path)
    assert str(caught.value).startswith(f"{path}:8: relays 'a' (line 4) and 'b' {said}"), caught.value


def test_two_dotenv_targets_on_one_file_both_setting_a_variable_clash_even_through_a_symlink(tmp_path: Path) -> None:
    (tmp_path / "real.env").write_text("")
    (tmp_path / "link.env").symlink_to(tmp_path / "real.env")
    text = (
        f"relays:\n  a:\n    exports: [OPENAI_BASE_URL]\n    targets: {{dotenv: real.env}}\n    lines: {LINE}\n"
        f"  b:\n    exports: [OPENAI_BASE_URL]\n    targets: {{dotenv: link.env}}\n    lines: {LINE}\n"
    )
    with pytest.raises(ConfigError, match=r"lines.yaml:7: relays 'a' \(line 3\) and 'b' both export OPENAI_BASE_URL"):
        parse_setup(text, tmp_path / "lines.yaml")
    same_file = clash_file("{dotenv: real.env, codex: {path: c.toml, provider: one}}", "{dotenv: link.env, codex: {path: c.toml, provider: two}}")
    setup = parse_setup(same_file, tmp_path / "lines.yaml")
    assert [config.relay for config in setup.relays] == ["a", "b"], "one file, different variables and providers: no clash"


# ---------------------------------------------------------------- pick, env, status


def test_each_relay_probes_with_its_own_key_and_hands_out_its_own_choice(relay: Relay, tmp_path: Path, run, keys, db_path: Path) -> None:
    config = two_relays(relay, tmp_path)
    (tmp_path / "app.env").write_text("# mine\nDEBUG=1\n")
    result = run("pick", "--config", str(config), "--json")
    assert result.exit_code == 0, result.output
    data = stdout_json(result)
    relays = by_name(data)
    assert list(relays) == ["whatai", "claude"]
    assert relays["whatai"]["chosen"] == {"name": "main", "url": relay.url("w-main", delay_ms=5)}
    assert relays["claude"]["chosen"] == {"name": "backup", "url": relay.url("c-backup", delay_ms=5)}
    assert data["chosen"] == relays["whatai"]["chosen"] and data["lines"] == relays["whatai"]["lines"], "the top level is the first relay"
    assert [line["name"] for line in relays["claude"]["lines"]] == ["main", "backup"]

    # The server saw each relay's key on that relay's lines only, in that relay's API's header.
    for line in ("w-main", "w-hk"):
        for headers in relay.requests[line]:
            lower = {k.lower(): v for k, v in headers.items()}
            assert lower.get("authorization") == f"Bearer {WHATAI_KEY}" and "x-api-key" not in lower
            assert CLAUDE_KEY not in json.dumps(headers)
    for line in ("c-main", "c-backup"):
        for headers in relay.requests[line]:
            lower = {k.lower(): v for k, v in headers.items()}
            assert lower.get("x-api-key") == CLAUDE_KEY and "authorization" not in lower
            assert WHATAI_KEY not in json.dumps(headers)
    assert all(relay.requests[line] for line in ("w-main", "w-hk", "c-main", "c-backup"))

    # One .env shared by both relays: each sets its own variables, the user's lines stay.
    w_url, c_url = relay.base + "/line/w-main", relay.base + "/line/c-backup"
    shared = (tmp_path / "app.env").read_text()
    # The relays' rounds run side by side, so which relay's variables are appended first may vary.
    assert shared.startswith("# mine\nDEBUG=1\n") and sorted(shared.splitlines()[2:]) == sorted(
        [f"OPENAI_BASE_URL={w_url}/v1", f"OPENAI_API_BASE={w_url}/v1", f"ANTHROPIC_BASE_URL={c_url}"]
    )
    assert json.loads((tmp_path / "settings.json").read_text()) == {"env": {"ANTHROPIC_BASE_URL": c_url}}

    # env (the fast console script and the click command alike) prints both relays' variables.
    fast = console_env(db_path)
    assert fast.returncode == 0, fast.stderr
    assert fast.stdout == run("env", "--shell", "bash").stdout
    names = ["OPENAI_BASE_URL", "OPENAI_API_BASE", "ANTHROPIC_BASE_URL"]
    assert bash_values(fast.stdout, names) == [f"{w_url}/v1", f"{w_url}/v1", c_url]
    as_json = stdout_json(run("env", "--json"))
    assert as_json["env"] == dict(zip(names, [f"{w_url}/v1", f"{w_url}/v1", c_url]))
    assert [(r["name"], r["chosen"]["name"], list(r["env"])) for r in as_json["relays"]] == [
        ("whatai", "main", names[:2]),
        ("claude", "backup", names[2:]),
    ]

    raw = db_path.read_bytes() + b"".join(p.read_bytes() for p in db_path.parent.glob("*-wal"))
    assert WHATAI_KEY.encode() not in raw and CLAUDE_KEY.encode() not in raw


def test_env_names_the_relay_without_a_choice_and_exits_3(relay: Relay, tmp_path: Path, run, db_path: Path) -> None:
    config = two_relays(relay, tmp_path)
    relay.set("c-main", mode="block")
    relay.set("c-backup", mode="html502")
    assert run("pick", "--config", str(config)).exit_code == 3, "no line of claude is eligible"
    fast = console_env(db_path)
    assert fast.returncode == 3
    assert fast.stderr == "linepicker: no line chosen yet: run 'linepicker pick' (relay claude has none)\n"
    assert bash_values(fast.stdout, ["OPENAI_BASE_URL"]) == [relay.base + "/line/w-main/v1"], "whatai's choice is printed all the same"
    click = run("env", "--shell", "bash")
    assert (click.exit_code, click.stdout, click.stderr) == (3, fast.stdout, fast.stderr)


def test_env_with_config_hands_out_each_relay_whose_choice_that_file_names(relay: Relay, tmp_path: Path, run, db_path: Path) -> None:
    config = two_relays(relay, tmp_path)
    assert run("pick", "--config", str(config)).exit_code == 0
    both = console_env(db_path, "--config", str(config))
    assert both.returncode == 0, both.stderr
    assert both.stdout == console_env(db_path).stdout == run("env", "--shell", "bash", "--config", str(config)).stdout

    # claude's chosen line (backup) taken out of the file: claude's variable is held back, whatai's still printed.
    config.write_text(config.read_text().replace(f'      - {{name: backup, url: "{relay.base}/line/c-backup"}}\n', ""))
    assert [line.name for line in load_setup(config).relay("claude").lines] == ["main"]
    fast = console_env(db_path, "--config", str(config))
    click = run("env", "--shell", "bash", "--config", str(config))
    assert (fast.returncode, fast.stdout, fast.stderr) == (click.exit_code, click.stdout, click.stderr)
    assert fast.returncode == 3
    assert fast.stderr.startswith(f"linepicker: the last choice, backup at {relay.base}/line/c-backup, is not a line of {config}")
    assert fast.stderr.rstrip().endswith("(relay claude)")
    assert bash_values(fast.stdout, ["OPENAI_BASE_URL"]) == [relay.base + "/line/w-main/v1"]
    assert "ANTHROPIC_BASE_URL" not in fast.stdout


def test_each_relay_has_its_own_choice_pin_and_history(relay: Relay, tmp_path: Path, run, keys, db_path: Path) -> None:
    config = str(two_relays(relay, tmp_path))
    assert run("pick", "--config", config).exit_code == 0

    ambiguous = run("pin", "main", "--config", config)
    assert ambiguous.exit_code == 2
    assert ambiguous.stderr.splitlines()[-1] == "linepicker: error: several relays have a line named 'main': say which, as one of whatai/main, claude/main"
    pinned = run("pin", "claude/main", "--config", config, "--json")
    assert pinned.exit_code == 0, pinned.output
    assert stdout_json(pinned)["relay"] == "claude" and stdout_json(pinned)["chosen"]["name"] == "main"
    assert run("pin", "hk", "--config", config).exit_code == 0, "hk is whatai's alone"

    status = stdout_json(run("status", "--config", config, "--json"))
    relays = by_name(status)
    assert (relays["whatai"]["pinned"], relays["whatai"]["chosen"]["name"]) == ("hk", "hk")
    assert (relays["claude"]["pinned"], relays["claude"]["chosen"]["name"]) == ("main", "main")
    assert [d["name"] for d in relays["claude"]["decisions"]] == ["main", "backup"]
    assert [d["name"] for d in relays["whatai"]["decisions"]] == ["hk", "main"]

    only = stdout_json(run("status", "--config", config, "--relay", "claude", "--json"))
    assert [r["name"] for r in only["relays"]] == ["claude"] and only["chosen"]["name"] == "main"

    unpinned = run("unpin", "--relay", "claude")
    assert (unpinned.exit_code, unpinned.stdout) == (0, "unpinned claude/main\n")
    assert run("pick", "--config", config, "--relay", "claude").exit_code == 0
    relays = by_name(stdout_json(run("status", "--config", config, "--json")))
    assert relays["claude"]["chosen"]["name"] == "backup", "unpinned: the policy chooses claude's line again"
    assert relays["whatai"]["chosen"]["name"] == "hk", "whatai's pin is its own"
    with sqlite3.connect(db_path) as conn:
        rounds = dict(conn.execute("select relay, count(*) from rounds group by relay").fetchall())
        lines = conn.execute("select relay, name from lines order by id").fetchall()
    assert rounds == {"whatai": 1, "claude": 2}
    assert lines == [("whatai", "main"), ("whatai", "hk"), ("claude", "main"), ("claude", "backup")]
    assert run("unpin").stdout == "unpinned whatai/hk\n"


@pytest.mark.parametrize(
    "args",
    [
        ["pick"],
        ["probe"],
        ["status"],
        ["history"],
        ["report", "--html", "r.html"],
        ["doctor"],
        ["pin", "main"],
        ["pin", "nope/main"],
    ],
)
def test_an_unknown_relay_is_one_line_and_exit_2(relay: Relay, tmp_path: Path, run, args: list[str]) -> None:
    config = str(two_relays(relay, tmp_path))
    relay_flag = [] if "/" in args[-1] else ["--relay", "nope"]
    result = run(*args, *relay_flag, "--config", config)
    assert result.exit_code == 2
    assert result.stderr.splitlines()[-1] in (
        f"linepicker: error: no relay named 'nope' in {config} (relays: whatai, claude)",
    ), result.stderr
    assert "Traceback" not in result.output
    assert not relay.requests, "nothing was probed"


def test_unpin_of_an_unknown_relay_is_exit_2(relay: Relay, tmp_path: Path, run, db_path: Path) -> None:
    assert run("pick", "--config", str(two_relays(relay, tmp_path))).exit_code == 0
    result = run("unpin", "--relay", "nope")
    assert result.exit_code == 2
    assert result.stderr == f"linepicker: error: no relay named 'nope' in {db_path} (relays: whatai, claude)\n"


def test_relay_flag_selects_in_pick_probe_history_report_and_doctor(relay: Relay, tmp_path: Path, run, keys) -> None:
    config = str(two_relays(relay, tmp_path))
    probed = stdout_json(run("probe", "--config", config, "--relay", "claude", "--json"))
    assert [r["name"] for r in probed["relays"]] == ["claude"] and "samples" in probed["lines"][0]
    assert not relay.requests["w-main"], "--relay claude probes claude's lines only"
    assert run("pick", "--config", config).exit_code == 0

    history = stdout_json(run("history", "--config", config, "--json", "--buckets", "8"))
    assert [(r["name"], [line["name"] for line in r["lines"]]) for r in history["relays"]] == [("whatai", ["main", "hk"]), ("claude", ["main", "backup"])]
    one_line = stdout_json(run("history", "--config", config, "--json", "--line", "claude/backup"))
    assert [(r["name"], [line["name"] for line in r["lines"]]) for r in one_line["relays"]] == [("claude", ["backup"])]
    text = run("history", "--config", config, "--relay", "whatai").stdout
    assert "relay whatai" in text and "relay claude" not in text and "hk" in text

    report = run("report", "--html", str(tmp_path / "r.html"), "--config", config, "--json")
    assert [r["name"] for r in stdout_json(report)["relays"]] == ["whatai", "claude"]
    page = (tmp_path / "r.html").read_text()
    assert page.index("relay whatai") < page.index("relay claude")

    doctor = stdout_json(run("doctor", "--config", config, "--relay", "claude", "--json"))
    assert [r["name"] for r in doctor["relays"]] == ["claude"] and doctor["chosen"]["name"] == "backup"


def test_doctor_judges_each_variable_against_the_relay_that_exports_it(relay: Relay, tmp_path: Path, run, keys, monkeypatch) -> None:
    config = str(two_relays(relay, tmp_path))
    assert run("pick", "--config", config).exit_code == 0
    monkeypatch.setenv("OPENAI_BASE_URL", relay.base + "/line/w-main/v1")  # whatai's choice: right
    monkeypatch.setenv("ANTHROPIC_BASE_URL", relay.base + "/line/c-main")  # not claude's choice (backup): wrong
    result = run("doctor", "--config", config, "--json")
    data = stdout_json(result)
    assert result.exit_code == 1
    relays = by_name(data)
    assert [f["where"] for f in relays["claude"]["findings"]] == ["environment: ANTHROPIC_BASE_URL"]
    assert relays["whatai"]["findings"] == []
    assert data["findings"] == relays["claude"]["findings"]


def test_one_relay_configs_keep_their_json_and_gain_relays(relay: Relay, write_config, run) -> None:
    config = str(write_config({"a": relay.url("a")}))
    data = stdout_json(run("pick", "--config", config, "--json"))
    [entry] = data["relays"]
    assert entry["name"] == "default"
    assert {key: value for key, value in data.items() if key not in ("relays", "config")} == {k: v for k, v in entry.items() if k != "name"}
    assert data["chosen"]["name"] == "a" and data["config"] == config
    assert run("pin", "a", "--config", config).stdout.startswith("pinned to a ("), "a one-relay file says what it always said"
    assert run("unpin").stdout == "unpinned a\n"


# ---------------------------------------------------------------- the database before relays


def test_a_database_from_before_relays_migrates_with_its_whole_history(tmp_path: Path, run, write_config) -> None:
    db = tmp_path / "old.db"
    shutil.copy(FIXTURE, db)
    with sqlite3.connect(db) as conn:
        before = {table: conn.execute(f"select * from {table} order by rowid").fetchall() for table in ("lines", "rounds", "samples", "decisions")}
        hours = conn.execute("select line_id, sum(samples), sum(successes) from hourly group by line_id").fetchall()
        assert conn.execute("select value from state where key = 'pinned'").fetchone() == ("b",)
        url = conn.execute("select url from lines where name = 'b'").fetchone()[0]

    # env reads the file as it is, before anything migrates it.
    fast = console_env(db)
    assert fast.returncode == 0 and bash_values(fast.stdout, ["OPENAI_BASE_URL", "ANTHROPIC_BASE_URL"]) == [f"{url}/v1", url]

    with Store(db) as store:
        assert store.pinned() == "b" and store.choice().name == "b"
        assert [d.name for d in store.decisions()] == ["b", "a"]
    with sqlite3.connect(db) as conn:
        assert [row[0] for row in conn.execute("select name from migrations order by id")] == [name for name, _ in MIGRATIONS]
        for table, rows in before.items():
            after = conn.execute(f"select * from {table} order by rowid").fetchall()
            assert [row[: len(rows[0])] for row in after] == rows, f"{table} kept every row"
        # 0005 folds that release's hourly rows (one per sample) into their hours: every sample still counted.
        assert conn.execute("select line_id, sum(samples), sum(successes) from hourly group by line_id").fetchall() == hours
        assert {row[0] for row in conn.execute("select relay from lines union select relay from rounds union select relay from decisions")} == {"default"}
        assert conn.execute("select relay, key, value from state").fetchall() == [("default", "pinned", "b")]
        assert conn.execute("select name, exports from relays").fetchall() == [("default", "OPENAI_BASE_URL OPENAI_API_BASE ANTHROPIC_BASE_URL")]
        assert conn.execute("pragma integrity_check").fetchone() == ("ok",)
    assert console_env(db).stdout == fast.stdout, "env prints what it printed before the migration"

    # The same lines in a one-relay config carry on with their record: same line ids, same samples and hours, same pin.
    with sqlite3.connect(db) as conn:
        lines = dict(conn.execute("select name, url from lines").fetchall())
        old_ids = dict(conn.execute("select name, id from lines").fetchall())
    config = load_setup(write_config(lines)).relays[0]
    with Store(db) as store:
        ids = store.scoped(config.relay).line_ids(config.active_lines)
        assert ids == old_ids
        assert sum(len(points) for points in store.samples_since(ids, 0).values()) == 4, "the finished raw samples"
        assert sum(row.samples for rows in store.hours_since(ids, 0).values() for row in rows) == 6, "the rolled-up hours"
    status = stdout_json(run("status", "--config", str(config.source), "--json", db=db))
    assert (status["pinned"], status["chosen"]["name"], [d["name"] for d in status["decisions"]]) == ("b", "b", ["b", "a"])
    assert run("unpin", db=db).stdout == "unpinned b\n"


def test_migrations_are_applied_by_name_whatever_their_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A migration numbered below 0007 (0006, written beside it) reaching a file that already has 0007 runs then, once."""
    import linepicker.lastchoice as lastchoice_module
    import linepicker.store as store_module

    db = tmp_path / "lp.db"
    with Store(db):
        pass
    ran: list[str] = []
    late = ("0006_written_beside", lambda database: ran.append("0006"))
    monkeypatch.setattr(store_module, "MIGRATIONS", [*MIGRATIONS[:-1], late, MIGRATIONS[-1]])
    monkeypatch.setattr(lastchoice_module, "MIGRATION_NAMES", (*lastchoice_module.MIGRATION_NAMES, late[0]))
    with Store(db) as store:
        store.scoped("x").record_decision("a", "https://a.example", None, "t", None)
    with Store(db):
        pass
    assert ran == ["0006"]


# ---------------------------------------------------------------- init, add, remove


def test_init_add_and_remove_edit_the_right_relay_keeping_comments(run, tmp_path: Path) -> None:
    config = tmp_path / "lines.yaml"
    assert run("init", "--relay", "whatai", "--config", str(config), db=None).exit_code == 0
    starter = config.read_text()
    assert [c.relay for c in load_setup(config).relays] == ["whatai"]

    added = run("add", "--relay", "claude", "main", "https://claude.example/v1", "--config", str(config), "--json", db=None)
    assert added.exit_code == 0, added.output
    assert stdout_json(added)["relay"] == "claude"
    assert run("add", "hk", "https://hk.claude.example", "--relay", "claude", "--config", str(config), db=None).exit_code == 0
    assert run("add", "hk", "https://hk.whatai.example", "--relay", "whatai", "--config", str(config), db=None).exit_code == 0
    setup = load_setup(config)
    assert [(c.relay, [line.name for line in c.lines], c.exports) for c in setup.relays] == [
        ("whatai", ["main", "hk"], ("OPENAI_BASE_URL", "OPENAI_API_BASE", "ANTHROPIC_BASE_URL")),
        ("claude", ["main", "hk"], ()),
    ]
    assert setup.relay("claude").line("main").url == "https://claude.example"
    assert "    # targets:\n" in config.read_text(), "the comments of the relay above stay with it"

    ambiguous = run("remove", "hk", "--config", str(config), db=None)
    assert ambiguous.exit_code == 2 and "say which, as RELAY/hk" in ambiguous.stderr
    assert run("remove", "claude/hk", "--config", str(config), db=None).exit_code == 0
    assert run("remove", "hk", "--relay", "whatai", "--config", str(config), db=None).exit_code == 0
    unknown = run("remove", "main", "--relay", "nope", "--config", str(config), db=None)
    assert unknown.exit_code == 2 and "no relay named 'nope'" in unknown.stderr
    text = config.read_text()
    assert text.startswith(starter), "whatai is back to the starter, byte for byte"
    assert text[len(starter):] == "  claude:\n    exports: []\n    lines:\n      - name: main\n        url: https://claude.example\n"


def test_add_with_relay_to_a_one_relay_file_explains_itself(run, write_config) -> None:
    config = write_config({"a": "https://a.example"})
    before = config.read_text()
    result = run("add", "--relay", "claude", "b", "https://b.example", "--config", str(config), db=None)
    assert result.exit_code == 2 and "move them under relays:" in result.stderr
    assert run("add", "--relay", "default", "b", "https://b.example", "--config", str(config), db=None).exit_code == 0
    assert config.read_text() != before


# ---------------------------------------------------------------- the daemon


FAST = "{timeout: 1, samples: 1, interval: 0.3, down_interval: 0.15}"


def get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.read().decode()


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def decisions(db: Path) -> dict[str, str]:
    try:
        with sqlite3.connect(db) as conn:
            rows = conn.execute("select relay, name from decisions order by id").fetchall()
    except sqlite3.OperationalError:
        return {}
    return dict(rows)


def test_one_daemon_serves_every_relay(relay: Relay, tmp_path: Path, db_path: Path) -> None:
    import socket

    with socket.socket() as probe_port:
        probe_port.bind(("127.0.0.1", 0))
        port = probe_port.getsockname()[1]
    config = two_relays(relay, tmp_path, probe=FAST)
    env = {k: v for k, v in os.environ.items() if "PROXY" not in k.upper()} | {"WHATAI_KEY": WHATAI_KEY, "CLAUDE_KEY": CLAUDE_KEY}
    process = subprocess.Popen(
        [sys.executable, "-m", "linepicker", "daemon", "--config", str(config), "--db", str(db_path), "--listen", f"127.0.0.1:{port}"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    try:
        wait_for(lambda: decisions(db_path) == {"whatai": "main", "claude": "backup"}, "both relays' first choice")
        relay.set("c-backup", mode="html502")  # claude's line fails; whatai's are untouched
        wait_for(lambda: decisions(db_path).get("claude") == "main", "claude to switch")
        base = f"http://127.0.0.1:{port}/"
        status = json.loads(get(base + "api/status"))
        metrics = get(base + "metrics")
        page = get(base)
        health = get(base + "healthz")
        fast = console_env(db_path)
    finally:
        process.terminate()
        _, err = process.communicate(timeout=15)
    assert process.returncode == 0, err
    assert decisions(db_path)["whatai"] == "main", "one relay's switch leaves the other's choice alone"
    assert "relay claude: switched from backup to main" in err and "relay whatai: switched" in err
    assert WHATAI_KEY not in err and CLAUDE_KEY not in err

    relays = by_name(status)
    assert (relays["whatai"]["chosen"]["name"], relays["claude"]["chosen"]["name"]) == ("main", "main")
    assert {line["name"]: line["state"] for line in relays["claude"]["lines"]}["backup"] != "up"
    assert status["daemon"]["rounds"]["daemon"] >= 2 and relays["claude"]["daemon"]["switches"] == 1, "the first choice is no switch"

    samples = [s for family in text_string_to_metric_families(metrics) for s in family.samples]
    chosen = {(s.labels["relay"], s.labels["line"]): s.value for s in samples if s.name == "linepicker_line_chosen"}
    assert chosen == {("whatai", "main"): 1, ("whatai", "hk"): 0, ("claude", "main"): 1, ("claude", "backup"): 0}
    line_series = [s for s in samples if s.name.startswith("linepicker_line_")]
    assert line_series and all("relay" in s.labels for s in line_series), "a relay label on every line series"
    assert {s.labels["relay"] for s in samples if s.name == "linepicker_rounds_total"} == {"whatai", "claude"}
    assert WHATAI_KEY not in metrics + page + json.dumps(status) and CLAUDE_KEY not in metrics + page + json.dumps(status)

    assert page.index("relay whatai") < page.index("relay claude") and page.count('class="card') == 4
    assert health.strip() == "ok"
    values = bash_values(fast.stdout, ["OPENAI_BASE_URL", "ANTHROPIC_BASE_URL"])
    assert values == [relay.base + "/line/w-main/v1", relay.base + "/line/c-main"]


def test_a_reload_adds_and_removes_relays(relay: Relay, tmp_path: Path, db_path: Path) -> None:
    import asyncio

    from linepicker.daemon.runner import Daemon

    config = tmp_path / "lines.yaml"
    config.write_text(f"probe: {FAST}\nrelays:\n  one:\n    lines: [{{name: a, url: '{relay.url('r1-a')}'}}]\n")
    daemon = Daemon(load_setup(config), Store(db_path), None)

    async def body() -> None:
        task = asyncio.ensure_future(daemon.serve())
        try:
            while decisions(db_path).get("one") != "a":
                await asyncio.sleep(0.05)
            config.write_text(
                f"probe: {FAST}\nrelays:\n  two:\n    exports: [ANTHROPIC_BASE_URL]\n    lines: [{{name: b, url: '{relay.url('r2-b')}'}}]\n"
            )
            await daemon.reload()
            assert [live.config.relay for live in daemon.lives] == ["two"]
            seen = len(relay.requests["r1-a"])
            while decisions(db_path).get("two") != "b":
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.5)
            assert len(relay.requests["r1-a"]) <= seen + 1, "relay one, taken out, is no longer probed"
        finally:
            daemon.stop("test over")
            await asyncio.wait_for(task, 10)
            daemon.store.close()

    asyncio.run(body())
    with sqlite3.connect(db_path) as conn:
        assert conn.execute("select name, exports from relays").fetchall() == [("two", "ANTHROPIC_BASE_URL")]
