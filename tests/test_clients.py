"""Every client the user runs gets the choice: Codex's config.toml and files rendered from a template."""

from __future__ import annotations

import os
import stat
import textwrap
import tomllib
from pathlib import Path

import pytest

from conftest import stdout_json
from linepicker.config import CodexTarget, TemplateTarget, parse_config
from servers import Relay

CODEX_TOML = """\
# my Codex settings, by hand
model = "gpt-5-codex"   # keep this comment
model_provider = "relay"
approval_policy = "on-request"

[model_providers.relay]
name = "My relay"
base_url = "https://old.example/v1"  # linepicker keeps this one
env_key = "RELAY_KEY"
wire_api = "responses"

[model_providers.other]
name = "Other"
base_url = "https://other.example/v1"

[mcp_servers.docs]
command = "docs-server"
args = ["--port", "3000"]
"""


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def targets_of(result) -> dict[str, bool]:
    return {Path(t["path"]).name: t["changed"] for t in stdout_json(result)["targets"]}


# ---------------------------------------------------------------- codex


def test_pick_sets_base_url_in_codex_provider_table_and_keeps_everything_else(relay: Relay, write_config, run, tmp_path: Path) -> None:
    codex = tmp_path / "codex" / "config.toml"
    codex.parent.mkdir()
    codex.write_text(CODEX_TOML)
    codex.chmod(0o640)
    url = relay.url("a", delay_ms=5)
    config = write_config({"a": url}, targets={"codex": {"path": "codex/config.toml", "provider": "relay"}})

    result = run("pick", "--config", str(config), "--json")

    assert result.exit_code == 0, result.output
    assert targets_of(result) == {"config.toml": True}
    text = codex.read_text()
    assert text == CODEX_TOML.replace('base_url = "https://old.example/v1"', f'base_url = "{url}/v1"'), "only that value changed"
    data = tomllib.loads(text)
    assert data["model_providers"]["relay"]["base_url"] == f"{url}/v1"
    assert data["model_providers"]["other"]["base_url"] == "https://other.example/v1"
    assert mode(codex) == 0o640
    again = run("pick", "--config", str(config), "--json")
    assert targets_of(again) == {"config.toml": False}


def test_codex_file_is_created_0600_with_a_provider_codex_selects(relay: Relay, write_config, run, tmp_path: Path) -> None:
    url = relay.url("a")
    config = write_config({"a": url}, key_env="RELAY_KEY", targets={"codex": "~/.codex/config.toml"})

    result = run("pick", "--config", str(config))

    assert result.exit_code == 0, result.output
    codex = tmp_path / "home" / ".codex" / "config.toml"
    data = tomllib.loads(codex.read_text())
    assert data["model_provider"] == "linepicker", "without it Codex would never read the table"
    assert data["model_providers"]["linepicker"] == {
        "name": "relay line chosen by linepicker",
        "base_url": f"{url}/v1",
        "env_key": "RELAY_KEY",
        "wire_api": "responses",
    }
    assert mode(codex) == 0o600
    assert codex.read_text().endswith('"responses"\n')


def test_codex_leaves_a_model_provider_that_names_another_table(relay: Relay, write_config, run, tmp_path: Path) -> None:
    codex = tmp_path / "config.toml"
    codex.write_text('model_provider = "other"\n\n[model_providers.other]\nbase_url = "https://other.example/v1"\n')
    url = relay.url("a")
    config = write_config({"a": url}, targets={"codex": "config.toml"})

    assert run("pick", "--config", str(config)).exit_code == 0

    data = tomllib.loads(codex.read_text())
    assert data["model_provider"] == "other"
    assert data["model_providers"]["other"] == {"base_url": "https://other.example/v1"}
    assert data["model_providers"]["linepicker"]["base_url"] == f"{url}/v1"
    assert codex.read_text().index("[model_providers.other]") < codex.read_text().index("[model_providers.linepicker]")


@pytest.mark.parametrize(
    "content, message",
    [
        ("model = = 'x'\n", "not valid TOML"),
        ("model_providers = 'relay'\n", "'model_providers' is not a table"),
        ("[model_providers]\nlinepicker = 3\n", "'model_providers.linepicker' is not a table"),
    ],
)
def test_codex_file_that_cannot_be_edited_is_left_untouched_and_the_others_are_written(
    relay: Relay, write_config, run, tmp_path: Path, content: str, message: str
) -> None:
    codex = tmp_path / "config.toml"
    codex.write_text(content)
    config = write_config({"a": relay.url("a")}, targets={"codex": "config.toml", "dotenv": ".env"})

    result = run("pick", "--config", str(config), "--json")

    assert result.exit_code == 1
    data = stdout_json(result)
    assert len(data["target_errors"]) == 1 and message in data["target_errors"][0] and str(codex) in data["target_errors"][0]
    assert codex.read_text() == content
    assert (tmp_path / ".env").read_text().startswith("OPENAI_BASE_URL=")


def test_codex_crlf_file_stays_crlf(relay: Relay, write_config, run, tmp_path: Path) -> None:
    codex = tmp_path / "config.toml"
    codex.write_bytes(b'model_provider = "linepicker"\r\n\r\n[model_providers.linepicker]\r\nbase_url = "https://old.example/v1"\r\n')
    url = relay.url("a")
    config = write_config({"a": url}, targets={"codex": "config.toml"})

    assert run("pick", "--config", str(config)).exit_code == 0

    assert codex.read_bytes() == f'model_provider = "linepicker"\r\n\r\n[model_providers.linepicker]\r\nbase_url = "{url}/v1"\r\n'.encode()


def test_codex_target_forms(tmp_path: Path) -> None:
    text = textwrap.dedent(
        """\
        key_env: RELAY_KEY
        lines: [{name: a, url: "https://a.example"}]
        targets:
          codex:
            - ~/.codex/config.toml
            - {path: work/config.toml, provider: relay-work}
        """
    )
    config = parse_config(text, tmp_path / "lines.yaml")
    home = Path(os.path.expanduser("~"))
    assert config.targets.codex == (
        CodexTarget(home / ".codex" / "config.toml", "linepicker", "RELAY_KEY"),
        CodexTarget(tmp_path / "work" / "config.toml", "relay-work", "RELAY_KEY"),
    )
    assert config.targets


# ---------------------------------------------------------------- template


def test_template_renders_url_url_v1_and_name_and_follows_a_pin(relay: Relay, run, tmp_path: Path) -> None:
    fast, slow = relay.url("fast"), relay.url("slow", delay_ms=120)
    out = tmp_path / "out" / "aider.env"
    out.parent.mkdir()
    out.write_text("old\n")
    out.chmod(0o644)
    config = tmp_path / "lines.yaml"
    config.write_text(
        textwrap.dedent(
            f"""\
            lines:
              - {{name: fast, url: "{fast}"}}
              - {{name: slow, url: "{slow}"}}
            targets:
              template:
                path: out/aider.env
                template: |
                  # line {{name}}, set by linepicker {{{{do not edit}}}}
                  OPENAI_API_BASE={{url_v1}}
                  ANTHROPIC_BASE_URL={{url}}
            """
        )
    )

    assert run("pick", "--config", str(config)).exit_code == 0
    assert out.read_text() == f"# line fast, set by linepicker {{do not edit}}\nOPENAI_API_BASE={fast}/v1\nANTHROPIC_BASE_URL={fast}\n"
    assert mode(out) == 0o644

    pinned = run("pin", "slow", "--config", str(config), "--json")
    assert pinned.exit_code == 0, pinned.output
    assert out.read_text() == f"# line slow, set by linepicker {{do not edit}}\nOPENAI_API_BASE={slow}/v1\nANTHROPIC_BASE_URL={slow}\n"


def test_template_list_form_creates_new_files_0600(relay: Relay, write_config, run, tmp_path: Path) -> None:
    url = relay.url("a")
    config = write_config(
        {"a": url},
        targets={"template": [{"path": "one.txt", "template": "{url}"}, {"path": "sub/two.txt", "template": "{name}={url_v1}\n"}]},
    )

    assert run("pick", "--config", str(config)).exit_code == 0

    assert (tmp_path / "one.txt").read_text() == url
    assert (tmp_path / "sub" / "two.txt").read_text() == f"a={url}/v1\n"
    assert mode(tmp_path / "one.txt") == 0o600
    assert parse_config(config.read_text(), config).targets.template == (
        TemplateTarget(tmp_path / "one.txt", "{url}"),
        TemplateTarget(tmp_path / "sub" / "two.txt", "{name}={url_v1}\n"),
    )


@pytest.mark.parametrize(
    "targets, line, message",
    [
        ("  template: {path: x, template: 'API={host}'}", 2, "unknown placeholder {host} (known: {url}, {url_v1}, {name})"),
        ("  template: {path: x, template: 'API={url!r}'}", 2, "unknown placeholder {url!r}"),
        ("  template: {path: x, template: 'API={url:>40}'}", 2, "unknown placeholder {url:>40}"),
        ("  template: {path: x, template: 'API={url.host}'}", 2, "unknown placeholder {url.host}"),
        ("  template: {path: x, template: 'API={}'}", 2, "unknown placeholder {}"),
        ("  template: {path: x, template: 'API={url'}", 2, "write {{ and }} for a literal brace"),
        ("  template: {path: x, template: 'a } b'}", 2, "write {{ and }} for a literal brace"),
        ("  template: {path: x}", 2, "a targets.template entry needs 'template:'"),
        ("  template: {template: '{url}'}", 2, "a targets.template entry needs 'path:'"),
        ("  template: {path: x, template: [a]}", 2, "must be a single value"),
        ("  template: {path: x, template: '{url}', mode: 600}", 2, "unknown key 'mode' in a targets.template entry"),
        ("  template: []", 2, "targets.template must be one entry or a list of them"),
        ("  codex: {path: c.toml, provider: openai}", 2, "'openai' is built into Codex"),
        ("  codex: {path: c.toml, provider: 'a b'}", 2, "targets.codex.provider 'a b' must be"),
        ("  codex: {provider: relay}", 2, "targets.codex needs 'path:'"),
        ("  codex: {path: c.toml, model: x}", 2, "unknown key 'model' in targets.codex"),
        ("  codex:\n    - c.toml\n    - [x]", 4, "targets.codex must be a single value"),
    ],
)
def test_bad_client_targets_are_config_errors_naming_the_line(run, tmp_path: Path, targets: str, line: int, message: str) -> None:
    config = tmp_path / "lines.yaml"
    config.write_text(f"targets:\n{targets}\nlines: [{{name: a, url: 'https://a.example'}}]\n")

    result = run("status", "--config", str(config))

    assert result.exit_code == 2
    assert result.stderr.startswith(f"linepicker: error: {config}:{line}: "), result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.output and len(result.stderr.strip().splitlines()) == 1


# ---------------------------------------------------------------- what keeps a client off the files just written


def test_pick_warns_when_codex_will_not_read_the_table_it_wrote(relay: Relay, write_config, run, tmp_path: Path) -> None:
    """`updated: config.toml` alone read as success while Codex talked to another provider."""
    codex = tmp_path / "config.toml"
    codex.write_text('model_provider = "other"\n\n[model_providers.other]\nbase_url = "https://other.example/v1"\n')
    config = write_config({"a": relay.url("a")}, targets={"codex": "config.toml"})

    result = run("pick", "--config", str(config))

    assert result.exit_code == 0, "a warning, not a failure: the file was written"
    assert f"updated: {codex}" in result.stdout
    assert "warning: Codex uses model_provider = 'other', so the base_url linepicker keeps in [model_providers.linepicker] is never read" in result.stderr
    assert f"at:  {codex}:1" in result.stderr
    [check] = stdout_json(run("pick", "--config", str(config), "--json"))["client_checks"]
    assert check["where"] == f"{codex}:1" and check["fix"].startswith('set model_provider = "linepicker"')


def test_pick_says_nothing_when_codex_selects_our_table(relay: Relay, write_config, run, tmp_path: Path) -> None:
    config = write_config({"a": relay.url("a")}, targets={"codex": "config.toml"})
    result = run("pick", "--config", str(config), "--json")
    assert result.exit_code == 0 and stdout_json(result)["client_checks"] == []
    assert "warning" not in result.stderr


def test_pick_and_pin_warn_when_a_project_settings_file_overrides_claude_settings(relay: Relay, write_config, run, tmp_path: Path) -> None:
    """Claude Code takes .claude/settings.local.json of the project over ~/.claude/settings.json, which linepicker wrote."""
    user_settings = Path(os.environ["HOME"]) / ".claude" / "settings.json"
    project = tmp_path / ".claude" / "settings.local.json"  # conftest runs in tmp_path: the project directory
    project.parent.mkdir()
    project.write_text('{\n  "env": {\n    "ANTHROPIC_BASE_URL": "https://pinned-by-hand.example"\n  }\n}\n')
    config = write_config({"a": relay.url("a"), "b": relay.url("b", delay_ms=60)}, targets={"claude_settings": str(user_settings)})

    picked = run("pick", "--config", str(config))
    pinned = run("pin", "b", "--config", str(config), "--json")

    assert picked.exit_code == 0 and pinned.exit_code == 0
    assert f"updated: {user_settings}" in picked.stdout
    assert "Claude Code uses ANTHROPIC_BASE_URL=https://pinned-by-hand.example from this file" in picked.stderr
    assert f"at:  {project}:3" in picked.stderr
    [check] = stdout_json(pinned)["client_checks"]
    assert check["where"] == f"{project}:3" and relay.url("b") in check["what"]
    project.write_text("{}\n")
    assert stdout_json(run("pin", "a", "--config", str(config), "--json"))["client_checks"] == []


def test_claude_config_dir_elsewhere_is_said_after_writing_the_default_file(relay: Relay, write_config, run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLAUDE_CONFIG_DIR", str(tmp_path / "claude-elsewhere"))
    config = write_config({"a": relay.url("a")}, targets={"claude_settings": "~/.claude/settings.json"})
    [check] = stdout_json(run("pick", "--config", str(config), "--json"))["client_checks"]
    assert check["where"] == "environment: CLAUDE_CONFIG_DIR"
    assert f"Claude Code reads {tmp_path / 'claude-elsewhere' / 'settings.json'}" in check["what"]
