"""`linepicker doctor` finds what would keep a client off the chosen line, with real files, variables and probes."""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path

import pytest

from conftest import stdout_json
from servers import Relay

CLIENT_VARS = ["OPENAI_BASE_URL", "OPENAI_API_BASE", "ANTHROPIC_BASE_URL", "CLAUDE_CONFIG_DIR", "CODEX_HOME", "ZDOTDIR"]


@pytest.fixture(autouse=True)
def no_client_vars(monkeypatch: pytest.MonkeyPatch) -> None:
    """The developer's own shell may export these; doctor would rightly report them."""
    for name in CLIENT_VARS:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    path = tmp_path / "home"
    path.mkdir()
    return path


@pytest.fixture
def chosen(relay: Relay, write_config, run) -> tuple[Path, str]:
    """A config whose line `a` has been chosen by a real pick."""
    url = relay.url("a")
    config = write_config({"a": url})
    assert run("pick", "--config", str(config)).exit_code == 0
    return config, url


def doctor(run, config: Path):
    result = run("doctor", "--config", str(config), "--json")
    assert result.exit_code in (0, 1), result.output
    data = stdout_json(result)
    assert result.exit_code == (1 if data["findings"] else 0)
    return data["findings"]


def only(findings: list[dict]) -> dict:
    assert len(findings) == 1, json.dumps(findings, indent=2)
    return findings[0]


def test_nothing_found_exits_0_and_says_so(chosen, run, home: Path) -> None:
    config, url = chosen
    (home / ".bashrc").write_text('alias ll="ls -l"\neval "$(linepicker env 2>/dev/null)"\n')

    result = run("doctor", "--config", str(config))

    assert result.exit_code == 0, result.output
    assert "no problems found" in result.stdout
    assert str(home / ".bashrc") in result.stderr, "says where it looked"


def test_no_choice_yet_is_a_problem(write_config, run) -> None:
    config = write_config({"a": "https://a.example"})
    finding = only(doctor(run, config))
    assert finding["severity"] == "error" and "no line has been chosen" in finding["what"]
    assert finding["fix"] == "run: linepicker pick"


def test_exported_variable_that_differs_from_the_choice(chosen, run, monkeypatch: pytest.MonkeyPatch) -> None:
    config, url = chosen
    monkeypatch.setenv("OPENAI_BASE_URL", "https://old.example/v1")
    monkeypatch.setenv("ANTHROPIC_BASE_URL", url + "/")  # the same line: a trailing slash is no difference
    finding = only(doctor(run, config))
    assert finding == {
        "severity": "error",
        "what": f"OPENAI_BASE_URL=https://old.example/v1 is exported in this shell, not the chosen {url}/v1",
        "where": "environment: OPENAI_BASE_URL",
        "fix": finding["fix"],
    }
    assert 'eval "$(linepicker env' in finding["fix"]


def test_table_output_names_severity_where_and_fix(chosen, run, monkeypatch: pytest.MonkeyPatch) -> None:
    config, _ = chosen
    monkeypatch.setenv("OPENAI_API_BASE", "https://old.example/v1")
    result = run("doctor", "--config", str(config))
    assert result.exit_code == 1
    assert "error: OPENAI_API_BASE=https://old.example/v1" in result.stdout
    assert "at:  environment: OPENAI_API_BASE" in result.stdout
    assert "fix: run: eval" in result.stdout
    assert "1 problem (1 error)" in result.stdout


def test_fixed_exports_in_shell_rc_files(chosen, run, home: Path) -> None:
    config, url = chosen
    (home / ".bashrc").write_text(
        textwrap.dedent(
            f"""\
            # export OPENAI_BASE_URL=https://commented.example/v1
            export OPENAI_BASE_URL="$RELAY/v1"
            export OPENAI_API_BASE=$(relay-url)
            export OPENAI_BASE_URL=https://old.example/v1   # set by hand last year
            ANTHROPIC_BASE_URL='{url}'
            """
        )
    )
    fish_config = Path(os.environ["XDG_CONFIG_HOME"]) / "fish" / "config.fish"  # where fish looks, as conftest sets it
    fish_config.parent.mkdir(parents=True)
    fish_config.write_text(
        "set -e OPENAI_BASE_URL\nset -gx OPENAI_API_BASE (relay-url)\nset -gx ANTHROPIC_BASE_URL 'https://fish.example';\n"
    )
    findings = {f["where"]: f for f in doctor(run, config)}

    assert set(findings) == {f"{home}/.bashrc:4", f"{home}/.bashrc:5", f"{fish_config}:3"}
    old = findings[f"{home}/.bashrc:4"]
    assert old["severity"] == "error" and old["what"] == f"OPENAI_BASE_URL is set to a fixed https://old.example/v1, not the chosen {url}/v1"
    same = findings[f"{home}/.bashrc:5"]
    assert same["severity"] == "warning" and "will not follow the next switch" in same["what"]
    fish = findings[f"{fish_config}:3"]
    assert fish["severity"] == "error" and "https://fish.example" in fish["what"]
    assert "linepicker env --shell fish" in fish["fix"]


def test_rc_file_lines_end_where_the_shell_ends_them(chosen, run, home: Path) -> None:
    """\x0c and U+2028 end a line for str.splitlines() only: to bash these exports are inside comments."""
    import subprocess

    config, url = chosen
    rc = home / ".bashrc"
    rc.write_bytes("# old\x0cexport OPENAI_BASE_URL=https://ff.example/v1\n# note\u2028export OPENAI_API_BASE=https://ls.example/v1\nexport ANTHROPIC_BASE_URL=https://real.example\n".encode())
    sourced = subprocess.run(["bash", "-c", f'. "{rc}"; echo "$OPENAI_BASE_URL|$OPENAI_API_BASE|$ANTHROPIC_BASE_URL"'], capture_output=True, text=True).stdout
    assert sourced == "||https://real.example\n"
    finding = only(doctor(run, config))
    assert finding["where"] == f"{rc}:3" and "https://real.example" in finding["what"]


def test_a_later_linepicker_env_overrides_a_fixed_export(chosen, run, home: Path) -> None:
    config, _ = chosen
    (home / ".profile").write_text("export OPENAI_BASE_URL=https://login.example/v1\n")
    (home / ".bashrc").write_text('export OPENAI_API_BASE=https://before.example/v1\neval "$(linepicker env)"\n')
    (home / ".zshrc").write_text('eval "$(linepicker env)"\nexport ANTHROPIC_BASE_URL=https://after.example\n')

    finding = only(doctor(run, config))

    assert finding["where"] == f"{home}/.zshrc:2", "only the export after `linepicker env` defeats it"


def test_claude_settings_with_higher_precedence_than_the_target(relay: Relay, write_config, run, home: Path, tmp_path: Path) -> None:
    url = relay.url("a")
    config = write_config({"a": url}, targets={"claude_settings": "~/.claude/settings.json"})
    assert run("pick", "--config", str(config)).exit_code == 0
    assert doctor(run, config) == [], "the user settings file is a target, written by pick"

    project = tmp_path / ".claude" / "settings.json"
    project.parent.mkdir()
    project.write_text(json.dumps({"permissions": {"allow": []}, "env": {"DEBUG": "1", "ANTHROPIC_BASE_URL": "https://project.example"}}, indent=2))
    finding = only(doctor(run, config))
    assert finding["severity"] == "error"
    assert finding["where"] == f"{project}:7"
    assert "https://project.example" in finding["what"] and "targets.claude_settings" in finding["fix"]

    local = tmp_path / ".claude" / "settings.local.json"
    local.write_text(json.dumps({"env": {"ANTHROPIC_BASE_URL": url}}))
    finding = only(doctor(run, config))
    assert finding["severity"] == "warning", "local overrides the project file, and has today's choice"
    assert finding["where"] == f"{local}:1" and "will not follow the next switch" in finding["what"]

    local.write_text("{not json")
    findings = doctor(run, config)
    assert {(f["severity"], f["where"]) for f in findings} == {("warning", f"{local}:1"), ("error", f"{project}:7")}


def test_a_key_the_chosen_line_rejects(relay: Relay, write_config, run, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "sk-doctor-SECRET-123"
    url = relay.url("a", mode="auth", key=secret)
    config = write_config({"a": url}, key_env="OPENAI_API_KEY")
    monkeypatch.setenv("OPENAI_API_KEY", secret)
    assert run("pick", "--config", str(config)).exit_code == 0
    assert doctor(run, config) == []

    monkeypatch.setenv("OPENAI_API_KEY", "sk-doctor-WRONG-456")
    assert run("probe", "--config", str(config)).exit_code == 0
    result = run("doctor", "--config", str(config), "--json")

    finding = only(stdout_json(result)["findings"])
    assert finding["severity"] == "error"
    assert "rejected the key in $OPENAI_API_KEY" in finding["what"] and "HTTP 401" in finding["what"]
    assert "WRONG" not in result.output and secret not in result.output


@pytest.mark.parametrize(
    "line, env, expected",
    [
        ({"proxy": "http://127.0.0.1:3128"}, {}, "probed through its own proxy http://127.0.0.1:3128, but clients follow the environment and go direct"),
        ({"proxy": "http://127.0.0.1:3128"}, {"HTTPS_PROXY": "http://corp:8080"}, "go through http://corp:8080"),
        ({"proxy": "none"}, {"HTTPS_PROXY": "http://corp:8080"}, "probed direct (proxy: none), but clients go through http://corp:8080"),
        ({}, {"ALL_PROXY": "http://corp:8080"}, "probed through ALL_PROXY=http://corp:8080; Claude Code reads only HTTPS_PROXY"),
        ({}, {"HTTPS_PROXY": "http://a:1", "https_proxy": "http://b:2"}, "HTTPS_PROXY=http://a:1 and https_proxy=http://b:2 differ"),
        ({}, {"HTTPS_PROXY": "http://a:1", "NO_PROXY": "example.com", "no_proxy": "localhost"}, "NO_PROXY=example.com and no_proxy=localhost differ"),
        ({"insecure": True}, {}, "probed with insecure: true, but clients check its certificate"),
    ],
)
def test_proxies_and_certificates_the_clients_will_not_share(write_config, run, monkeypatch: pytest.MonkeyPatch, line: dict, env: dict, expected: str) -> None:
    config = write_config([{"name": "a", "url": "https://a.example", **line}])
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert run("pin", "a", "--config", str(config)).exit_code == 0

    finding = only(doctor(run, config))

    assert finding["severity"] == "warning"
    assert expected in finding["what"]
    if line:
        key = next(iter(line))
        number = next(i for i, text in enumerate(config.read_text().splitlines(), 1) if text.strip().startswith(f"{key}:"))
        assert finding["where"] == f"{config}:{number}"


@pytest.mark.parametrize(
    "line, env",
    [
        ({"proxy": "http://alice:s3cr3t-pw@127.0.0.1:3128"}, {}),
        ({"proxy": "http://alice:s3cr3t-pw@127.0.0.1:3128"}, {"HTTPS_PROXY": "http://bob:s3cr3t-pw@corp:8080"}),
        ({"proxy": "none"}, {"HTTPS_PROXY": "http://bob:s3cr3t-pw@corp:8080"}),
        ({}, {"ALL_PROXY": "http://s3cr3t-pw@corp:8080"}),
        ({}, {"HTTPS_PROXY": "http://a:s3cr3t-pw@p:1", "https_proxy": "http://b:s3cr3t-pw@p:2"}),
    ],
)
def test_doctor_never_prints_a_proxy_password(write_config, run, monkeypatch: pytest.MonkeyPatch, line: dict, env: dict) -> None:
    config = write_config([{"name": "a", "url": "https://a.example", **line}])
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert run("pin", "a", "--config", str(config)).exit_code == 0
    table = run("doctor", "--config", str(config))
    findings = doctor(run, config)
    assert findings and table.exit_code == 1
    shown = table.output + json.dumps(findings)
    assert "s3cr3t-pw" not in shown
    assert ":***@" in shown or "//***@" in shown


@pytest.mark.parametrize(
    "line, env",
    [
        ({"proxy": "http://127.0.0.1:3128"}, {"HTTPS_PROXY": "http://127.0.0.1:3128"}),
        ({"proxy": "none"}, {"HTTPS_PROXY": "http://corp:8080", "NO_PROXY": "a.example"}),
        ({}, {"HTTPS_PROXY": "http://corp:8080", "ALL_PROXY": "http://corp:8080"}),
    ],
)
def test_proxies_that_probes_and_clients_share_are_fine(write_config, run, monkeypatch: pytest.MonkeyPatch, line: dict, env: dict) -> None:
    config = write_config([{"name": "a", "url": "https://a.example", **line}])
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert run("pin", "a", "--config", str(config)).exit_code == 0
    assert doctor(run, config) == []


def test_codex_selecting_another_provider(relay: Relay, write_config, run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    codex = tmp_path / "codex.toml"
    codex.write_text("# mine: model_providers are below\nmodel_provider = \"other\"\n")
    config = write_config({"a": relay.url("a")}, targets={"codex": "codex.toml"})
    assert run("pick", "--config", str(config)).exit_code == 0

    finding = only(doctor(run, config))
    assert finding["severity"] == "error" and finding["where"] == f"{codex}:2"
    assert "model_provider = 'other'" in finding["what"] and 'set model_provider = "linepicker"' in finding["fix"]

    codex.write_text(codex.read_text().replace('"other"', '"linepicker"'))
    assert doctor(run, config) == []
    monkeypatch.setenv("CODEX_HOME", str(tmp_path / "elsewhere"))
    finding = only(doctor(run, config))
    assert finding["where"] == "environment: CODEX_HOME" and "Codex reads" in finding["what"]


def test_claude_config_dir_away_from_the_settings_target(chosen, run, write_config, relay: Relay, home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _, url = chosen
    config = write_config({"a": url}, targets={"claude_settings": "~/.claude/settings.json"})
    assert run("pick", "--config", str(config)).exit_code == 0
    monkeypatch.setenv("CLAUDE_CONFIG_DIR", str(tmp_path / "elsewhere"))
    finding = only(doctor(run, config))
    assert finding["severity"] == "warning" and finding["where"] == "environment: CLAUDE_CONFIG_DIR"
    assert finding["fix"] == f"point targets.claude_settings in {config} at $CLAUDE_CONFIG_DIR/settings.json"


@pytest.mark.parametrize(
    "content, words",
    [
        (b'{"env": {"ANTHROPIC_BASE_URL": "https://x.example"}}\n\xff\xfe', "not UTF-8"),
        (b'{\n "big": NaN,\n "env": {"ANTHROPIC_BASE_URL": "https://x.example"}}', "not valid JSON"),
        (b'{"note": "\\ud83d", "env": {"ANTHROPIC_BASE_URL": "https://x.example"}}', "surrogate"),
    ],
    ids=["latin-1", "nan", "lone-surrogate"],
)
def test_claude_settings_claude_code_cannot_read_are_a_finding_not_a_crash(chosen, run, tmp_path: Path, content: bytes, words: str) -> None:
    config, _ = chosen
    local = tmp_path / ".claude" / "settings.local.json"
    local.parent.mkdir()
    local.write_bytes(content)
    finding = only(doctor(run, config))
    assert finding["severity"] == "warning" and words in finding["what"]
    assert finding["where"].startswith(f"{local}:")
    assert local.read_bytes() == content
