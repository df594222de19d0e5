"""The commands a user runs, end to end, against real loopback relay lines."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Callable

import pytest
from click.testing import Result

from conftest import stdout_json
from servers import Relay, ServerThread, head, refused_url, replies, reset_connection, send_garbage, start_dns_server, start_raw_server

SECRET = "sk-test-0123456789abcdefSECRET"


def test_pick_chooses_the_fastest_line_and_reports_it(relay: Relay, write_config, run) -> None:
    config = write_config({"slow": relay.url("slow", delay_ms=150), "fast": relay.url("fast", delay_ms=20), "mid": relay.url("mid", delay_ms=80)})
    result = run("pick", "--config", str(config), "--json")
    assert result.exit_code == 0, result.output
    data = stdout_json(result)
    assert data["chosen"] == {"name": "fast", "url": relay.url("fast", delay_ms=20)}
    lines = {line["name"]: line for line in data["lines"]}
    assert set(lines) == {"slow", "fast", "mid"}
    for line in lines.values():
        assert {"name", "url", "healthy", "p50_ms", "success_rate", "error"} <= set(line)
    assert 18 <= lines["fast"]["p50_ms"] < 80
    for name in ("slow", "mid"):
        # Once "fast" had clearly won, pick stopped waiting for the slower lines.
        assert lines[name]["outcomes"][-1] == "unfinished" or lines[name]["p50_ms"] > lines["fast"]["p50_ms"]
    assert lines["fast"]["healthy"] is True and lines["fast"]["success_rate"] == 1.0
    assert f"config: {config}" in result.stderr


def test_pick_table_marks_the_choice(relay: Relay, write_config, run) -> None:
    config = write_config({"one": relay.url("one", delay_ms=30), "two": relay.url("two", mode="html502")})
    result = run("pick", "--config", str(config))
    assert result.exit_code == 0
    assert "▶" in result.stdout and "switched to one" in result.stdout
    assert "http_5xx" in result.stdout


def test_broken_lines_get_their_own_outcome_and_never_win(server: ServerThread, relay: Relay, write_config, run) -> None:
    lines = {
        "good": relay.url("good", delay_ms=30),
        "gateway": relay.url("gateway", mode="html502"),
        "blocked": relay.url("blocked", mode="block"),
        "refused": refused_url(),
        "garbage": server.start_raw(send_garbage),
        "reset": server.start_raw(reset_connection),
        "flaky": relay.url("flaky", mode="flaky"),
    }
    result = run("probe", "--config", str(write_config(lines)), "--json")
    assert result.exit_code == 0, result.output
    outcomes = {line["name"]: line["outcomes"] for line in stdout_json(result)["lines"]}
    assert outcomes["good"] == ["ok"] * 3
    assert set(outcomes["gateway"]) == {"http_5xx"}
    assert set(outcomes["blocked"]) == {"not_api"}
    assert set(outcomes["refused"]) == {"refused"}
    assert set(outcomes["garbage"]) == {"protocol"}
    assert set(outcomes["reset"]) == {"reset"}
    assert outcomes["flaky"] == ["ok", "http_5xx", "ok"]


def test_probe_json_has_every_sample_with_its_phases_and_chooses_nothing(relay: Relay, write_config, run) -> None:
    result = run("probe", "--config", str(write_config({"a": relay.url("a", delay_ms=10)})), "--json")
    line = stdout_json(result)["lines"][0]
    assert len(line["samples"]) == 3
    for sample in line["samples"]:
        assert sample["outcome"] == "ok"
        assert set(sample["phases"]) == {"dns_ms", "connect_ms", "tls_ms", "ttfb_ms", "transfer_ms", "total_ms"}
        assert sample["phases"]["ttfb_ms"] >= 9
    assert "chosen" not in stdout_json(result)
    assert run("env").exit_code == 3, "probe records but does not choose"


def test_a_hanging_line_does_not_hold_pick_to_its_timeout(relay: Relay, write_config, run, db_path: Path) -> None:
    lines = {"hang1": relay.url("hang1", mode="hang"), "good": relay.url("good", delay_ms=20), "hang2": relay.url("hang2", mode="hang")}
    config = write_config(lines, probe={"timeout": 8, "samples": 3})
    started = time.perf_counter()
    result = run("pick", "--config", str(config), "--json")
    elapsed = time.perf_counter() - started
    assert result.exit_code == 0
    assert stdout_json(result)["chosen"]["name"] == "good"
    assert elapsed < 4, f"pick waited {elapsed:.1f}s for lines that could no longer win"
    with sqlite3.connect(db_path) as conn:
        recorded = dict(conn.execute("select l.name, s.outcome from samples s join lines l on l.id = s.line_id where l.name like 'hang%'").fetchall())
    assert recorded == {"hang1": "unfinished", "hang2": "unfinished"}


def test_no_eligible_line_exits_3_and_keeps_the_last_good_choice(relay: Relay, write_config, run) -> None:
    config = write_config({"a": relay.url("a"), "b": relay.url("b", mode="html502")})
    assert run("pick", "--config", str(config)).exit_code == 0
    relay.set("a", mode="block")
    result = run("pick", "--config", str(config), "--json")
    assert result.exit_code == 3
    data = stdout_json(result)
    assert data["chosen"] is None
    assert data["kept"]["name"] == "a"
    assert "no line is eligible" in data["reason"]
    env = run("env", "--shell", "bash")
    assert env.exit_code == 0 and "line/a" in env.stdout


def test_hysteresis_keeps_the_line_until_a_challenger_is_clearly_better(relay: Relay, write_config, run) -> None:
    config = write_config({"a": relay.url("a", delay_ms=60), "b": relay.url("b", delay_ms=80)})
    assert stdout_json(run("pick", "--config", str(config), "--json"))["chosen"]["name"] == "a"
    relay.set("b", delay_ms=55)  # a little faster now: not worth a switch
    second = stdout_json(run("pick", "--config", str(config), "--json"))
    assert second["chosen"]["name"] == "a" and second["changed"] is False
    relay.set("a", delay_ms=200)
    relay.set("b", delay_ms=5)
    # a's newest samples weigh most, so a line that turns slow is left within a round or two.
    picks = [stdout_json(run("pick", "--config", str(config), "--json")) for _ in range(2)]
    assert [p["chosen"]["name"] for p in picks][-1] == "b"
    assert sum(p["changed"] for p in picks) == 1
    assert "better" in next(p["reason"] for p in picks if p["changed"])


def test_a_dead_current_line_is_replaced_at_once(relay: Relay, write_config, run) -> None:
    config = write_config({"a": relay.url("a", delay_ms=10), "b": relay.url("b", delay_ms=120)})
    assert stdout_json(run("pick", "--config", str(config), "--json"))["chosen"]["name"] == "a"
    relay.set("a", mode="html502")
    data = stdout_json(run("pick", "--config", str(config), "--json"))
    assert data["chosen"]["name"] == "b"
    assert "not eligible" in data["reason"]


def test_trusted_tls_line_through_ssl_cert_file(tls_relay: Relay, trust: Path, write_config, run) -> None:
    result = run("pick", "--config", str(write_config({"secure": tls_relay.url("secure")})), "--json")
    assert result.exit_code == 0, result.output
    line = stdout_json(result)["lines"][0]
    assert line["outcomes"] == ["ok"] * 3
    assert line["phases"]["tls_ms"] > 0


def test_pick_updates_targets_only_when_they_differ(relay: Relay, write_config, run, tmp_path: Path) -> None:
    home = tmp_path / "home"
    settings = home / ".claude" / "settings.json"
    settings.parent.mkdir(parents=True)
    settings.write_text(json.dumps({"model": "opus", "env": {"OTHER": "1"}}))
    os.chmod(settings, 0o640)
    dotenv = tmp_path / ".env"
    dotenv.write_text("# mine\nOPENAI_API_KEY_NAME=x\nexport OPENAI_BASE_URL=https://old/v1\n")
    config = write_config({"a": relay.url("a")}, targets={"dotenv": ".env", "claude_settings": "~/.claude/settings.json"})

    assert run("pick", "--config", str(config)).exit_code == 0
    url = relay.url("a")
    assert dotenv.read_text() == f"# mine\nOPENAI_API_KEY_NAME=x\nexport OPENAI_BASE_URL={url}/v1\nOPENAI_API_BASE={url}/v1\nANTHROPIC_BASE_URL={url}\n"
    assert json.loads(settings.read_text()) == {"model": "opus", "env": {"OTHER": "1", "ANTHROPIC_BASE_URL": url}}
    assert settings.stat().st_mode & 0o777 == 0o640

    before = (dotenv.stat().st_ino, dotenv.stat().st_mtime_ns, settings.stat().st_ino)
    second = run("pick", "--config", str(config), "--json")
    assert all(not t["changed"] for t in stdout_json(second)["targets"])
    assert (dotenv.stat().st_ino, dotenv.stat().st_mtime_ns, settings.stat().st_ino) == before


def test_broken_settings_json_is_left_alone_and_reported(relay: Relay, write_config, run, tmp_path: Path) -> None:
    settings = tmp_path / "settings.json"
    settings.write_text("{ not json")
    config = write_config({"a": relay.url("a")}, targets={"claude_settings": "settings.json", "dotenv": ".env"})
    result = run("pick", "--config", str(config))
    assert result.exit_code == 1
    assert "not valid JSON" in result.stderr
    assert settings.read_text() == "{ not json"
    assert (tmp_path / ".env").exists(), "the other target is still written"


def test_the_key_never_reaches_the_database_or_the_output(relay: Relay, write_config, run, db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    lines = {"ok": relay.url("ok", mode="auth", key=SECRET), "rejects": relay.url("rejects", mode="auth", key="other")}
    config = write_config(lines, key_env="OPENAI_API_KEY")
    result = run("pick", "--config", str(config), "--json")
    assert result.exit_code == 0
    assert relay.requests["ok"][-1]["Authorization"] == f"Bearer {SECRET}", "the key was really sent"
    outcomes = {line["name"]: line["outcomes"][0] for line in stdout_json(result)["lines"]}
    assert outcomes == {"ok": "ok", "rejects": "auth"}
    status = run("status", "--config", str(config), "--json")
    for path in db_path.parent.iterdir():
        assert SECRET.encode() not in path.read_bytes(), path
    for text in (result.stdout, result.stderr, status.stdout, status.stderr):
        assert SECRET not in text


def test_missing_key_variable_is_a_warning_and_401_counts_as_reachable(relay: Relay, write_config, run) -> None:
    config = write_config({"a": relay.url("a", mode="auth", key="k")}, key_env="OPENAI_API_KEY")
    result = run("pick", "--config", str(config), "--json")
    assert result.exit_code == 0
    assert "OPENAI_API_KEY is not set" in result.stderr
    assert stdout_json(result)["lines"][0]["healthy"] is True


@pytest.mark.parametrize(
    "shell, expected",
    [
        ("bash", "export OPENAI_BASE_URL='{url}/v1'"),
        ("zsh", "export ANTHROPIC_BASE_URL='{url}'"),
        ("fish", "set -gx OPENAI_API_BASE '{url}/v1';"),
        ("powershell", "$env:OPENAI_BASE_URL = '{url}/v1'"),
        ("cmd", 'set "ANTHROPIC_BASE_URL={url}"'),
    ],
)
def test_env_prints_the_choice_for_every_shell(relay: Relay, write_config, run, shell: str, expected: str) -> None:
    url = relay.url("a")
    run("pick", "--config", str(write_config({"a": url})))
    result = run("env", "--shell", shell)
    assert result.exit_code == 0
    assert expected.format(url=url) in result.stdout.splitlines()
    assert len(result.stdout.splitlines()) == 3


def test_env_output_evaluates_in_a_real_shell(relay: Relay, write_config, run) -> None:
    url = relay.url("a")
    run("pick", "--config", str(write_config({"a": url})))
    exports = run("env", "--shell", "bash").stdout
    shown = subprocess.run(
        ["bash", "-c", 'eval "$1"; echo "$OPENAI_BASE_URL|$OPENAI_API_BASE|$ANTHROPIC_BASE_URL"', "_", exports],
        capture_output=True, text=True, check=True,
    ).stdout.strip()
    assert shown == f"{url}/v1|{url}/v1|{url}"


def test_env_before_any_choice_says_so_on_stderr_only(run) -> None:
    result = run("env")
    assert result.exit_code == 3
    assert result.stdout == ""
    assert "linepicker pick" in result.stderr


def test_env_json(relay: Relay, write_config, run) -> None:
    url = relay.url("a")
    run("pick", "--config", str(write_config({"a": url})))
    data = stdout_json(run("env", "--json"))
    assert data["name"] == "a" and data["env"]["ANTHROPIC_BASE_URL"] == url


def test_status_reports_the_record_and_the_choice(relay: Relay, write_config, run) -> None:
    config = write_config({"a": relay.url("a", delay_ms=20), "b": relay.url("b", mode="html502")})
    run("pick", "--config", str(config))
    run("pick", "--config", str(config))
    data = stdout_json(run("status", "--config", str(config), "--json"))
    lines = {line["name"]: line for line in data["lines"]}
    assert lines["a"]["samples_in_window"] == 6 and lines["a"]["success_rate"] == 1.0
    assert lines["b"]["success_rate"] == 0.0 and lines["b"]["healthy"] is False
    assert lines["b"]["last_outcome"] == "http_5xx"
    assert data["chosen"]["name"] == "a" and "best score" in data["choice"]["reason"]
    assert len(data["decisions"]) == 1, "keeping the same line is not a new decision"
    table = run("status", "--config", str(config))
    assert "chosen: a" in table.stdout


def test_pin_overrides_the_policy_until_unpin(relay: Relay, write_config, run) -> None:
    config = write_config({"fast": relay.url("fast", delay_ms=5), "slow": relay.url("slow", delay_ms=90)})
    assert run("pin", "slow", "--config", str(config)).exit_code == 0
    assert "line/slow" in run("env").stdout, "a pin takes effect at once"
    assert stdout_json(run("pick", "--config", str(config), "--json"))["chosen"]["name"] == "slow"
    assert run("unpin").exit_code == 0
    assert stdout_json(run("pick", "--config", str(config), "--json"))["chosen"]["name"] == "fast"


@pytest.mark.parametrize("command", ["pin", "pick"])
def test_a_settings_json_with_a_lone_surrogate_is_one_target_error_and_later_targets_are_written(
    relay: Relay, write_config, run, tmp_path: Path, command: str
) -> None:
    settings = tmp_path / "settings.json"
    settings.write_bytes(b'{"note": "\\ud83d"}')
    later = tmp_path / "later.env"
    config = write_config({"a": relay.url("a")}, targets={"claude_settings": str(settings), "template": [{"path": str(later), "template": "URL={url}\n"}]})
    result = run(*([command, "a"] if command == "pin" else [command]), "--config", str(config))
    assert result.exit_code == 1
    errors = [line for line in result.stderr.splitlines() if str(settings) in line]
    assert len(errors) == 1 and "surrogate" in errors[0] and "left untouched" in errors[0]
    assert later.read_text() == f"URL={relay.url('a')}\n"
    assert settings.read_bytes() == b'{"note": "\\ud83d"}'


def test_pin_of_an_unknown_line_is_a_usage_error(relay: Relay, write_config, run) -> None:
    result = run("pin", "nope", "--config", str(write_config({"a": relay.url("a")})))
    assert result.exit_code == 2
    assert "no line named 'nope'" in result.stderr


def test_excluded_lines_are_neither_probed_nor_chosen(relay: Relay, write_config, run) -> None:
    config = write_config({"a": relay.url("a", delay_ms=50), "b": relay.url("b")}, exclude=["b"])
    data = stdout_json(run("pick", "--config", str(config), "--json"))
    assert [line["name"] for line in data["lines"]] == ["a"]
    assert data["chosen"]["name"] == "a"
    assert "b" not in relay.requests


def test_unusable_database_is_a_clear_error_and_is_not_overwritten(relay: Relay, write_config, run, tmp_path: Path) -> None:
    bogus = tmp_path / "not-a-db.db"
    bogus.write_bytes(b"this is a user's file, not SQLite" * 100)
    before = bogus.read_bytes()
    result = run("pick", "--config", str(write_config({"a": relay.url("a")})), db=bogus)
    assert result.exit_code == 1
    assert str(bogus) in result.stderr and "Traceback" not in result.output
    assert bogus.read_bytes() == before


def test_config_lookup_falls_back_to_the_current_directory(relay: Relay, write_config, run) -> None:
    write_config({"here": relay.url("here")})  # tests run in tmp_path, so this is ./lines.yaml
    result = run("pick", "--json")
    assert stdout_json(result)["chosen"]["name"] == "here"
    assert "(current directory)" in result.stderr


def test_a_relay_s_error_text_is_printed_as_sent(server: ServerThread, write_config, run) -> None:
    """Text from the network is data: rich markup and :emoji: codes in it must not be interpreted."""
    title = "[bold]Down[/bold] :warning: maintenance"
    page = f"<html><title>{title}</title></html>".encode()
    line = start_raw_server(server, replies(head("502 Bad Gateway", content_type="text/html", content_length=len(page)) + page))
    result = run("probe", "--config", str(write_config({"odd": line})))
    assert title in result.stdout, result.stdout


# ---------------------------------------------------------------- what a first run and a bad round say


UNRESOLVABLE = "https://nowhere.invalid"  # the resolver of `nameservers` has no such name: no query leaves the machine


@pytest.fixture
def nameservers(server: ServerThread) -> list[str]:
    """probe.nameservers for a DNS server on 127.0.0.1 that knows no name at all."""
    _, port = start_dns_server(server, {})
    return [f"127.0.0.1:{port}"]


@pytest.mark.parametrize(
    "lines, cause",
    [
        ({"a": UNRESOLVABLE, "b": UNRESOLVABLE + "x"}, "no line's host name resolved: check the network, then the URLs in"),
        ({"a": "refused", "b": UNRESOLVABLE}, "no line could be reached (dns, refused): check the network"),
        ({"a": "block", "b": "block"}, "every line answered with a page that is not the API"),
        ({"a": "auth", "b": "auth"}, "every line refused the key in $OPENAI_API_KEY"),
    ],
)
def test_no_eligible_line_names_the_likely_cause(
    lines: dict[str, str], cause: str, relay: Relay, write_config, run, monkeypatch: pytest.MonkeyPatch, nameservers: list[str], tmp_path: Path
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    urls = {
        name: refused_url() if how == "refused" else how if how.startswith("https://") else relay.url(name, mode=how, key="another key")
        for name, how in lines.items()
    }
    config = write_config(urls, key_env="OPENAI_API_KEY", probe={"timeout": 2, "samples": 3, "nameservers": nameservers})

    result = run("pick", "--config", str(config))
    # A database of its own: with the first round's failures on record, a second round is settled (no line can
    # be eligible) as soon as one line fails, and a line still waiting for its DNS answer is not waited for.
    data = stdout_json(run("pick", "--config", str(config), "--json", db=tmp_path / "fresh.db"))

    assert result.exit_code == 3
    assert f"likely cause: {cause}" in result.stdout
    assert cause in data["hint"]
    assert SECRET not in result.output + json.dumps(data)


def test_mixed_failures_are_not_given_a_made_up_cause(relay: Relay, write_config, run) -> None:
    config = write_config({"a": relay.url("a", mode="block"), "b": relay.url("b", mode="html502")})
    result = run("pick", "--config", str(config))
    assert result.exit_code == 3 and "likely cause" not in result.stdout
    assert stdout_json(run("pick", "--config", str(config), "--json"))["hint"] is None


def test_the_bundled_example_config_points_at_init_and_add(write_config, tmp_path: Path, db_path: Path, nameservers: list[str]) -> None:
    """The README's first run offline: the bundled config (here with a line that cannot be resolved, as offline)."""
    import asyncio

    from linepicker import picker
    from linepicker.config import parse_config
    from linepicker.report.documents import round_json
    from linepicker.store import Store

    text = f"probe:\n  nameservers: {nameservers}\nlines:\n  - name: main\n    url: {UNRESOLVABLE}\n"
    config = parse_config(text, tmp_path / "lines.yaml", "bundled default")
    with Store(db_path) as store:
        result = asyncio.run(picker.run_round(config, store, "pick"))
    hint = round_json(result, config, with_samples=False)["hint"]
    assert hint.startswith("no line's host name resolved")
    assert "bundled example config: run 'linepicker init', then 'linepicker add NAME URL'" in hint


def test_the_v1_note_is_not_repeated_on_every_run_but_doctor_says_it(relay: Relay, write_config, run) -> None:
    config = write_config({"a": relay.url("a") + "/v1"})
    for command in ("pick", "status", "probe"):
        result = run(command, "--config", str(config))
        assert "/v1" not in result.stderr, f"{command}: a valid config is not warned about on every run"
    doctor = run("doctor", "--config", str(config))
    assert f"{config}:" in doctor.stderr and "ends in /v1" in doctor.stderr


# ---------------------------------------------------------------- status, counts, piped tables


def test_status_exits_3_until_a_line_is_chosen(relay: Relay, write_config, run) -> None:
    config = write_config({"a": relay.url("a")})
    for args in ((), ("--json",)):
        before = run("status", "--config", str(config), *args)
        assert before.exit_code == 3, before.output
    assert "No line chosen yet" in run("status", "--config", str(config)).stdout
    assert stdout_json(run("status", "--config", str(config), "--json"))["chosen"] is None
    assert run("pick", "--config", str(config)).exit_code == 0
    assert run("status", "--config", str(config)).exit_code == 0
    assert run("status", "--config", str(config), "--json").exit_code == 0


def test_one_line_is_counted_as_one_line(relay: Relay, write_config, run, tmp_path: Path) -> None:
    config = write_config({"a": relay.url("a")})
    assert "1 line, " in run("pick", "--config", str(config)).stdout
    assert "1 decision" in run("history", "--config", str(config)).stdout
    report = run("report", "--html", str(tmp_path / "r.html"), "--config", str(config))
    assert "1 line, 1 decision," in report.stdout
    assert "1 lines" not in report.stdout + run("pick", "--config", str(config)).stdout


def test_piped_tables_keep_every_cell_whole(relay: Relay, write_config, db_path: Path) -> None:
    """Through a real pipe, not a terminal: rich would assume 80 columns and cut cells short."""
    names = ["a-line-with-a-long-name-from-the-dashboard", "b-line-with-a-long-name-from-the-dashboard", "c-slow-one-that-is-left-unfinished"]
    config = write_config(
        {names[0]: relay.url("fast", delay_ms=5), names[1]: relay.url("block", mode="block"), names[2]: relay.url("slow", mode="hang")}
    )
    piped = subprocess.run(
        [os.environ.get("PYTHON", __import__("sys").executable), "-m", "linepicker", "pick", "--config", str(config), "--db", str(db_path)],
        capture_output=True, text=True, timeout=60,
    )
    assert piped.returncode == 0, piped.stderr
    rows = [line for line in piped.stdout.splitlines() if line.startswith("│")]
    assert len(rows) == 3 and max(len(line) for line in piped.stdout.splitlines()) > 80
    for name in names:
        assert f" {name} " in piped.stdout
    assert "…" not in piped.stdout
    assert "not_api ×3" in piped.stdout and "unfinished" in piped.stdout
