"""lines.yaml is the user's main interface: it loads as documented, and every mistake is one line naming its line."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from linepicker.config import (
    Config,
    Line,
    PolicySettings,
    ProbeSettings,
    RetentionSettings,
    bundled_config_path,
    find_config,
    load_config,
    parse_config,
    user_config_path,
)
from linepicker.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]

FULL = """\
key_env: RELAY_KEY
probe:
  path: /v1/models
  timeout: 500ms
  samples: 5
  concurrency: 8
  interval: 2m
  down_interval: 15
  watch_interval: 5
policy:
  window: 30m
  min_success_rate: 0.75
  margin_relative: 0.1
  margin_ms: 25
  failure_penalty_ms: 800
  rise: 3
  fall: 4
  latency: warm
  half_life: 5m
retention:
  raw: 2d
  hourly: 30d
on_switch: notify-send 'line changed'
exclude: [cdn]
lines:
  - name: main
    url: https://api.relay.example
  - name: hk
    url: http://hk.relay.example:8080/prefix/
    proxy: http://proxy.local:3128
  - name: cdn
    url: https://cdn.relay.example
    proxy: none
targets:
  dotenv: [.env, ~/project/.env]
  claude_settings: ~/.claude/settings.json
"""


def parse(text: str, path: Path) -> Config:
    return parse_config(text, path)


def error_of(text: str | bytes, path: Path) -> str:
    """The message of the ConfigError, checked to be one printable line about that file."""
    with pytest.raises(ConfigError) as info:
        parse_config(text, path)
    message = str(info.value)
    assert "\n" not in message and "\r" not in message, message
    assert message.startswith(f"{path}:"), message
    assert "Traceback" not in message
    return message


def at_line(message: str, path: Path) -> int:
    match = re.match(re.escape(str(path)) + r":(\d+): ", message)
    assert match, f"no line number in {message!r}"
    return int(match.group(1))


@pytest.fixture
def cfg(tmp_path: Path) -> Path:
    return tmp_path / "conf" / "lines.yaml"


# ---------------------------------------------------------------- the documented shape


def test_documented_shape_loads(cfg: Path) -> None:
    config = parse(FULL, cfg)
    assert config.source == cfg and config.origin == "--config"
    assert config.key_env == "RELAY_KEY"
    assert config.probe == ProbeSettings(
        path="/v1/models", timeout=0.5, samples=5, concurrency=8, interval=120.0, down_interval=15.0, watch_interval=5.0
    )
    assert config.policy == PolicySettings(
        window=1800.0, min_success_rate=0.75, margin_relative=0.1, margin_ms=25.0, failure_penalty_ms=800.0, rise=3, fall=4,
        latency="warm", half_life=300.0,
    )
    assert config.retention == RetentionSettings(raw=2 * 86400.0, hourly=30 * 86400.0)
    assert config.on_switch == ("notify-send", "line changed")
    assert config.lines == (
        Line("main", "https://api.relay.example"),
        Line("hk", "http://hk.relay.example:8080/prefix", proxy="http://proxy.local:3128"),
        Line("cdn", "https://cdn.relay.example", proxy="none"),
    )
    assert config.exclude == {"cdn"}
    assert [line.name for line in config.active_lines] == ["main", "hk"]
    assert config.line("hk") is config.lines[1] and config.line("nope") is None
    home = Path.home()
    assert config.targets.dotenv == (cfg.parent / ".env", home / "project" / ".env")
    assert config.targets.claude_settings == (home / ".claude" / "settings.json",)
    assert config.warnings == ()


def test_minimal_config_gets_the_documented_defaults(cfg: Path) -> None:
    config = parse("lines:\n  - {name: main, url: 'https://a.example'}\n", cfg)
    assert config.key_env is None and config.api_key() is None
    assert config.probe == ProbeSettings() and config.policy == PolicySettings() and config.retention == RetentionSettings()
    assert config.probe.path == "/v1/models" and config.probe.timeout == 5.0 and config.probe.samples == 3
    assert not config.targets and config.on_switch == () and config.exclude == frozenset()
    assert config.policy.latency == "fresh" and config.policy.half_life == 120.0
    assert config.probe.watch_every == config.probe.down_interval == 10.0, "the chosen line is watched as closely as a down one"


def test_on_switch_as_a_list_is_taken_word_for_word(cfg: Path) -> None:
    config = parse("on_switch: [systemctl, --user, 'reload my app']\nlines: [{name: a, url: 'http://a.example'}]\n", cfg)
    assert config.on_switch == ("systemctl", "--user", "reload my app")


def test_key_env_names_the_variable_and_the_key_is_read_late(cfg: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = parse("key_env: RELAY_KEY\nlines: [{name: a, url: 'http://a.example'}]\n", cfg)
    assert config.api_key() is None
    monkeypatch.setenv("RELAY_KEY", "sk-test-123")
    assert config.api_key() == "sk-test-123"
    assert "sk-test-123" not in repr(config)


def test_utf8_bom_and_crlf_config_loads(cfg: Path) -> None:
    data = "\ufeffkey_env: K\r\nlines:\r\n  - name: a\r\n    url: https://a.example\r\n".encode()
    assert parse_config(data, cfg).lines == (Line("a", "https://a.example"),)


@pytest.mark.parametrize(
    "raw, url",
    [
        ("https://a.example/v1", "https://a.example"),
        ("https://a.example/v1/", "https://a.example"),
        ("https://a.example/api/v1", "https://a.example/api"),
    ],
)
def test_url_ending_in_v1_is_stripped_with_a_note_naming_its_line(cfg: Path, raw: str, url: str) -> None:
    """A note, not a warning: the file is valid and works, so a run does not repeat it (doctor and the daemon's start say it)."""
    config = parse(f"key_env: K\nlines:\n  - name: ok\n    url: https://ok.example\n  - name: a\n    url: {raw}\n", cfg)
    assert config.lines[1].url == url
    [note] = config.notes
    assert note.startswith(f"{cfg}:6: ") and "/v1" in note and "\n" not in note
    assert config.warnings == ()


@pytest.mark.parametrize("raw, url", [("https://a.example/", "https://a.example"), ("https://a.example/v10", "https://a.example/v10")])
def test_other_paths_are_kept_without_warning(cfg: Path, raw: str, url: str) -> None:
    config = parse(f"lines:\n  - name: a\n    url: {raw}\n", cfg)
    assert config.lines[0].url == url and config.warnings == () and config.notes == ()


@pytest.mark.parametrize(
    "raw",
    ["https://relay-1.example", "https://例え.jp", "https://xn--r8jz45g.jp", "http://[::1]:8080", "http://127.0.0.1:9", "https://a.example.", "https://_acme.a.example", "https://" + "d" * 63 + ".example"],
)
def test_every_host_a_resolver_takes_is_accepted(cfg: Path, raw: str) -> None:
    assert parse(f"lines:\n  - name: a\n    url: '{raw}'\n", cfg).lines[0].url == raw


def test_nameservers_take_addresses_with_or_without_a_port(cfg: Path) -> None:
    config = parse(GOOD_LINES + "probe:\n  nameservers: [1.1.1.1, '127.0.0.1:5353', '[::1]:53', '2606:4700::1111']\n", cfg)
    assert config.probe.nameservers == ("1.1.1.1", "127.0.0.1:5353", "[::1]:53", "2606:4700::1111")


@pytest.mark.parametrize("follow", ["same-origin", "any", "none"])
def test_follow_redirects_takes_its_three_values(cfg: Path, follow: str) -> None:
    assert parse(GOOD_LINES + f"probe:\n  follow_redirects: {follow}\n", cfg).probe.follow_redirects == follow
    assert parse(GOOD_LINES, cfg).probe.follow_redirects == "same-origin"


def test_relative_targets_follow_the_config_file_not_the_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "proj").mkdir()
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path)
    text = "lines: [{name: a, url: 'http://a.example'}]\ntargets:\n  dotenv: ../app/.env\n  claude_settings: [settings.json]\n"
    config = parse(text, Path("proj/lines.yaml"))
    assert config.targets.dotenv == (tmp_path / "app" / ".env",) or config.targets.dotenv == (tmp_path / "proj" / ".." / "app" / ".env",)
    assert config.targets.dotenv[0].resolve() == tmp_path / "app" / ".env"
    assert config.targets.claude_settings == (tmp_path / "proj" / "settings.json",)
    assert all(path.is_absolute() for path in config.targets.dotenv + config.targets.claude_settings)


def test_tilde_in_targets_expands_to_home(cfg: Path) -> None:
    config = parse("lines: [{name: a, url: 'http://a.example'}]\ntargets: {dotenv: ~/x/.env, claude_settings: /abs/s.json}\n", cfg)
    assert config.targets.dotenv == (Path.home() / "x" / ".env",)
    assert config.targets.claude_settings == (Path("/abs/s.json"),)


# ---------------------------------------------------------------- every mistake: one line, right line number

GOOD_LINES = "lines:\n  - name: main\n    url: https://a.example\n"

MISTAKES = [
    # id, text, line, words in the message
    ("bad-yaml-indent", "key_env: K\nlines:\n  - name: a\n   url: https://a.example\n", 4, "invalid YAML"),
    ("bad-yaml-unclosed", "key_env: K\nlines: [\n  {name: a, url: 'http://a.example'}\n", 4, "invalid YAML"),
    ("bad-yaml-tab", "key_env: K\nlines:\n\t- name: a\n", 3, "invalid YAML"),
    ("bad-yaml-two-documents", GOOD_LINES + "---\n" + GOOD_LINES, 4, "invalid YAML"),
    ("control-character", GOOD_LINES + "key_env: A\x07B\n", 4, "unacceptable character #x0007"),
    ("empty", "# nothing here yet\n\n", 1, "empty"),
    ("top-level-list", "- name: a\n  url: https://a.example\n", 1, "must be a mapping"),
    ("top-level-scalar", "just text\n", 1, "must be a mapping"),
    ("unknown-top-level-key", GOOD_LINES + "\nprobes:\n  timeout: 3\n", 5, "unknown key 'probes'"),
    ("duplicate-top-level-key", GOOD_LINES + "key_env: A\nkey_env: B\n", 5, "duplicate key 'key_env'"),
    ("unknown-probe-key", GOOD_LINES + "probe:\n  timeout: 3\n  retries: 2\n", 6, "unknown key 'retries' in probe"),
    ("unknown-line-key", "lines:\n  - name: a\n    url: https://a.example\n    weight: 3\n", 4, "unknown key 'weight' in a line"),
    ("missing-lines", "key_env: K\nprobe:\n  timeout: 3\n", 1, "missing 'lines:'"),
    ("empty-lines", "key_env: K\nlines: []\n", 2, "non-empty list"),
    ("null-lines", "key_env: K\nlines:\n", 2, "non-empty list"),
    ("lines-mapping", "lines:\n  main: https://a.example\n", 2, "non-empty list"),
    ("line-not-mapping", "lines:\n  - https://a.example\n", 2, "a line must be a mapping"),
    ("line-without-url", "lines:\n  - name: a\n  - name: b\n    url: https://b.example\n", 2, "needs 'url:'"),
    ("line-without-name", "lines:\n  - url: https://b.example\n", 2, "needs 'name:'"),
    ("line-name-number", "lines:\n  - name: 42\n    url: https://a.example\n", 2, "line name must be a non-empty string"),
    ("line-name-spaces", "lines:\n  - name: hong kong\n    url: https://a.example\n", 2, "letters, digits"),
    ("duplicate-line-name", "lines:\n  - name: a\n    url: https://a.example\n  - name: b\n    url: https://b.example\n  - name: a\n    url: https://c.example\n", 6, "duplicate line name 'a' (first on line 2)"),
    ("url-ftp", "lines:\n  - name: a\n    url: ftp://a.example\n", 3, "http:// or https://"),
    ("url-no-scheme", "lines:\n  - name: a\n    url: a.example\n", 3, "http:// or https://"),
    ("url-no-host", "lines:\n  - name: a\n    url: 'https://'\n", 3, "http:// or https://"),
    ("url-query", "lines:\n  - name: a\n    url: https://a.example/?key=1\n", 3, "without query"),
    ("url-fragment", "lines:\n  - name: a\n    url: 'https://a.example/#x'\n", 3, "without query, fragment"),
    ("url-credentials", "lines:\n  - name: a\n    url: https://me:pw@a.example\n", 3, "credentials"),
    ("url-bad-port", "lines:\n  - name: a\n    url: https://a.example:99999\n", 3, "invalid port"),
    ("url-unclosed-ipv6", "lines:\n  - name: a\n    url: 'http://[::1'\n", 3, "not a valid address"),
    ("url-command-substitution", "lines:\n  - name: a\n    url: " + "'https://a.example/$(touch x)'" + "\n", 3, "'$'"),
    ("url-backtick", "lines:\n  - name: a\n    url: " + "'https://a.example/`id`'" + "\n", 3, "'`'"),
    ("url-space", "lines:\n  - name: a\n    url: " + "'https://a.example/a b'" + "\n", 3, "' '"),
    ("url-double-quote", "lines:\n  - name: a\n    url: " + '\'https://a.example/a"b\'' + "\n", 3, '\'"\''),
    ("url-single-quote", "lines:\n  - name: a\n    url: " + '"https://a.example/a\'b"' + "\n", 3, '"\'"'),
    ("url-backslash", "lines:\n  - name: a\n    url: " + "'https://a.example/a\\b'" + "\n", 3, "'\\\\'"),
    ("url-percent-not-escape", "lines:\n  - name: a\n    url: " + "'https://a.example/100%'" + "\n", 3, "'%' not followed by two hex digits"),
    ("url-percent-one-digit", "lines:\n  - name: a\n    url: " + "'https://a.example/%4g'" + "\n", 3, "'%' not followed"),
    ("url-tab", "lines:\n  - name: a\n    url: " + '"https://a.example/a\\tb"' + "\n", 3, "'\\t'"),
    ("url-line-separator", "lines:\n  - name: a\n    url: " + '"https://a.example/a\\u2028b"' + "\n", 3, "'\\u2028'"),
    ("url-c1-control", "lines:\n  - name: a\n    url: " + '"https://a.example/a\\x85b"' + "\n", 3, "'\\x85'"),
    ("url-angle", "lines:\n  - name: a\n    url: " + "'https://a.example/<a>'" + "\n", 3, "'<'"),
    ("url-brace", "lines:\n  - name: a\n    url: " + "'https://a.example/{url}'" + "\n", 3, "'{'"),
    ("url-pipe", "lines:\n  - name: a\n    url: " + "'https://a.example/a|b'" + "\n", 3, "'|'"),
    ("url-caret", "lines:\n  - name: a\n    url: " + "'https://a.example/a^b'" + "\n", 3, "'^'"),
    ("url-list", "lines:\n  - name: a\n    url: [https://a.example]\n", 3, "url must be a single value"),
    ("url-host-empty-label", "lines:\n  - name: a\n    url: http://evil..example/\n", 3, "invalid host name (an empty label"),
    ("url-host-dot", "lines:\n  - name: a\n    url: http://./\n", 3, "invalid host name (an empty label"),
    ("url-host-leading-dot", "lines:\n  - name: a\n    url: http://.a.example\n", 3, "invalid host name (an empty label"),
    ("url-host-long-label", "lines:\n  - name: a\n    url: http://" + "a" * 300 + ".example\n", 3, "a label of 300 characters"),
    ("url-host-64-label", "lines:\n  - name: a\n    url: http://" + "b" * 64 + ".example\n", 3, "a label of 64 characters"),
    ("url-host-too-long", "lines:\n  - name: a\n    url: http://" + "c" * 60 + ".c" * 100 + ".example\n", 3, "more than DNS allows (253)"),
    ("url-host-not-idna", "lines:\n  - name: a\n    url: http://\u00ad\u00ad.example\n", 3, "not a valid international domain name"),
    ("url-host-hyphen-end", "lines:\n  - name: a\n    url: http://relay-.example\n", 3, "'relay-'"),
    ("url-host-short-ipv4", "lines:\n  - name: a\n    url: http://127.1/\n", 3, "all-digit last label"),
    ("proxy-host-empty-label", GOOD_LINES + "    proxy: http://p..local:3128\n", 4, "proxy has an invalid host name"),
    ("nameservers-name", GOOD_LINES + "probe:\n  nameservers: [dns.google]\n", 5, "probe.nameservers entry 'dns.google' must be an IP address"),
    ("nameservers-port", GOOD_LINES + "probe:\n  nameservers: ['127.0.0.1:99999']\n", 5, "invalid port"),
    ("nameservers-empty", GOOD_LINES + "probe:\n  nameservers: []\n", 5, "probe.nameservers must name a DNS server"),
    ("follow-redirects-unknown", GOOD_LINES + "probe:\n  follow_redirects: always\n", 5, "probe.follow_redirects must be one of same-origin, any, none, got 'always'"),
    ("proxy-socks", GOOD_LINES + "    proxy: socks5://p.local:1080\n", 4, "proxy must be"),
    ("proxy-unclosed-ipv6", GOOD_LINES + "    proxy: 'http://[::1'\n", 4, "not a valid address"),
    ("timeout-string", GOOD_LINES + "probe:\n  timeout: fast\n", 5, "probe.timeout must be a positive duration"),
    ("timeout-bool", GOOD_LINES + "probe:\n  timeout: yes\n", 5, "probe.timeout must be a positive duration up to 10m, got True"),
    ("timeout-negative", GOOD_LINES + "probe:\n  timeout: -1\n", 5, "positive duration"),
    ("timeout-zero", GOOD_LINES + "probe:\n  timeout: 0s\n", 5, "positive duration"),
    ("timeout-infinite", GOOD_LINES + "probe:\n  timeout: .inf\n", 5, "positive duration"),
    ("timeout-nan", GOOD_LINES + "probe:\n  timeout: .nan\n", 5, "positive duration"),
    ("timeout-huge-int", GOOD_LINES + "probe:\n  timeout: " + "9" * 400 + "\n", 5, "probe.timeout must be a positive duration"),
    ("timeout-bad-unit", GOOD_LINES + "probe:\n  timeout: 5 weeks\n", 5, "'5 weeks'"),
    ("timeout-eleven-minutes", GOOD_LINES + "probe:\n  timeout: 11m\n", 5, "probe.timeout must be a positive duration up to 10m, got '11m'"),
    ("interval-huge", GOOD_LINES + "probe:\n  interval: 100000000000000\n", 5, "probe.interval must be a positive duration up to 1d"),
    ("down-interval-two-days", GOOD_LINES + "probe:\n  down_interval: 2d\n", 5, "probe.down_interval must be a positive duration up to 1d"),
    ("chat-timeout-hour", GOOD_LINES + "probe:\n  chat: {model: m, timeout: 1h}\n", 5, "probe.chat.timeout must be a positive duration up to 10m"),
    ("window-year", GOOD_LINES + "policy:\n  window: 365d\n", 5, "policy.window must be a positive duration up to 30d"),
    ("retention-forever", GOOD_LINES + "retention:\n  hourly: 100000d\n", 5, "retention.hourly must be a positive duration up to 3650d"),
    ("retention-raw-float-huge", GOOD_LINES + "retention:\n  raw: 1.0e+300\n", 5, "retention.raw must be a positive duration up to 3650d"),
    ("samples-zero", GOOD_LINES + "probe:\n  samples: 0\n", 5, "probe.samples must be a whole number from 1 to 100"),
    ("samples-float", GOOD_LINES + "probe:\n  samples: 2.5\n", 5, "whole number"),
    ("samples-string", GOOD_LINES + "probe:\n  samples: three\n", 5, "'three' is not a whole number"),
    ("samples-bool", GOOD_LINES + "probe:\n  samples: true\n", 5, "got True"),
    ("concurrency-huge", GOOD_LINES + "probe:\n  concurrency: 1000000\n", 5, "probe.concurrency"),
    ("probe-path-relative", GOOD_LINES + "probe:\n  path: v1/models\n", 5, "must start with '/'"),
    ("probe-list", GOOD_LINES + "probe:\n  - timeout: 3\n", 5, "probe must be a mapping"),
    ("probe-null", GOOD_LINES + "probe:\n", 4, "probe must be a mapping"),
    ("interval-string", GOOD_LINES + "probe:\n  interval: often\n", 5, "probe.interval"),
    ("down-interval-zero", GOOD_LINES + "probe:\n  down_interval: 0\n", 5, "probe.down_interval"),
    ("latency-unknown", GOOD_LINES + "policy:\n  latency: cold\n", 5, "policy.latency must be fresh (a new connection per request) or warm"),
    ("half-life-zero", GOOD_LINES + "policy:\n  half_life: 0\n", 5, "policy.half_life must be a positive duration"),
    ("watch-interval-word", GOOD_LINES + "probe:\n  watch_interval: often\n", 5, "probe.watch_interval must be a positive duration"),
    ("success-rate-above-one", GOOD_LINES + "policy:\n  min_success_rate: 1.5\n", 5, "policy.min_success_rate must be a number from 0 to 1, got 1.5"),
    ("success-rate-string", GOOD_LINES + "policy:\n  min_success_rate: '0.5'\n", 5, "policy.min_success_rate"),
    ("success-rate-huge-int", GOOD_LINES + "policy:\n  min_success_rate: " + "1" * 400 + "\n", 5, "policy.min_success_rate"),
    ("margin-negative", GOOD_LINES + "policy:\n  margin_ms: -5\n", 5, "policy.margin_ms"),
    ("rise-zero", GOOD_LINES + "policy:\n  rise: 0\n", 5, "policy.rise"),
    ("unknown-policy-key", GOOD_LINES + "policy:\n  windows: 15m\n", 5, "unknown key 'windows' in policy"),
    ("policy-list", GOOD_LINES + "policy: [window, 15m]\n", 4, "policy must be a mapping"),
    ("retention-bad", GOOD_LINES + "retention:\n  raw: forever\n", 5, "retention.raw"),
    ("key-env-holds-a-key", "key_env: sk-abc-123\n" + GOOD_LINES, 1, "must name an environment variable"),
    ("key-env-with-spaces", "key_env: MY KEY\n" + GOOD_LINES, 1, "must name an environment variable"),
    ("key-env-number", "key_env: 123\n" + GOOD_LINES, 1, "key_env must be a non-empty string"),
    ("key-env-mapping", "key_env: {name: K}\n" + GOOD_LINES, 1, "key_env must be a single value"),
    ("exclude-unknown-line", GOOD_LINES + "exclude:\n  - main2\n", 5, "exclude names 'main2', which is not a line"),
    ("exclude-everything", GOOD_LINES + "exclude: [main]\n", 4, "exclude leaves no line"),
    ("exclude-string", GOOD_LINES + "exclude: main\n", 4, "exclude must be a list"),
    ("on-switch-empty-list", GOOD_LINES + "on_switch: []\n", 4, "on_switch must name a command"),
    ("on-switch-unbalanced-quote", GOOD_LINES + "on_switch: \"notify 'oops\"\n", 4, "on_switch"),
    ("on-switch-mapping", GOOD_LINES + "on_switch: {cmd: x}\n", 4, "on_switch must be a single value"),
    ("targets-list", GOOD_LINES + "targets: [.env]\n", 4, "targets must be a mapping"),
    ("targets-unknown", GOOD_LINES + "targets:\n  envrc: .envrc\n", 5, "unknown key 'envrc' in targets"),
    ("targets-empty-list", GOOD_LINES + "targets:\n  dotenv: []\n", 5, "targets.dotenv must name a file"),
    ("targets-number", GOOD_LINES + "targets:\n  dotenv: 3\n", 5, "targets.dotenv must be a non-empty string"),
    ("tag-timestamp", GOOD_LINES + "probe:\n  timeout: !!timestamp soon\n", 5, "probe.timeout"),
    ("tag-bool", GOOD_LINES + "probe:\n  samples: !!bool maybe\n", 5, "probe.samples"),
    ("tag-int-empty", GOOD_LINES + "probe:\n  samples: !!int ''\n", 5, "probe.samples"),
    ("tag-float-empty", GOOD_LINES + "policy:\n  margin_ms: !!float ''\n", 5, "policy.margin_ms"),
    ("tag-python", GOOD_LINES + "probe:\n  timeout: !!python/object:os.system x\n", 5, "could not determine a constructor"),
    ("template-lone-surrogate", GOOD_LINES + 'targets:\n  template:\n    - path: x\n      template: "\\ud83d {url}"\n', 7, "lone UTF-16 surrogate"),
    ("on-switch-lone-surrogate", GOOD_LINES + 'on_switch: ["notify", "\\udc00"]\n', 4, "on_switch entry holds a lone UTF-16 surrogate"),
    ("tag-local", GOOD_LINES + "probe:\n  timeout: !secret x\n", 5, "probe.timeout"),
]


@pytest.mark.parametrize("text, line, words", [case[1:] for case in MISTAKES], ids=[case[0] for case in MISTAKES])
def test_each_mistake_is_one_line_naming_its_line(cfg: Path, text: str, line: int, words: str) -> None:
    message = error_of(text, cfg)
    assert at_line(message, cfg) == line, message
    assert words in message, message


def test_not_utf8_names_the_line_and_byte(cfg: Path) -> None:
    message = error_of(b"key_env: K\nlines:\n  - name: caf\xe9\n", cfg)
    assert at_line(message, cfg) == 3 and "not UTF-8" in message


def test_a_key_put_in_key_env_is_not_echoed_back(cfg: Path) -> None:
    message = error_of("key_env: sk-proj-AbCdEf0123456789\n" + GOOD_LINES, cfg)
    assert "sk-proj" not in message


def test_deep_nesting_is_a_config_error(cfg: Path) -> None:
    message = error_of("lines: " + "[" * 3000 + "]" * 3000 + "\n", cfg)
    assert "invalid YAML" in message or "lines" in message


def test_unreadable_config_is_a_config_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match="cannot read config") as info:
        load_config(missing)
    assert str(info.value).startswith(str(missing)) and "\n" not in str(info.value)


# ---------------------------------------------------------------- lookup order


def _write(path: Path, name: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"lines:\n  - name: {name}\n    url: https://{name}.example\n")
    return path


def test_lookup_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    explicit = _write(tmp_path / "explicit" / "lines.yaml", "explicit")
    from_env = _write(tmp_path / "env" / "lines.yaml", "fromenv")
    cwd = _write(tmp_path / "lines.yaml", "cwd")
    user = _write(tmp_path / "xdg-config" / "linepicker" / "lines.yaml", "user")
    assert user_config_path() == user
    monkeypatch.setenv("LINEPICKER_CONFIG", str(from_env))

    def chosen(explicit_arg: Path | None = None) -> tuple[str, str]:
        config = load_config(explicit_arg)
        return config.lines[0].name, config.origin

    assert find_config(explicit) == (explicit, "--config")
    assert chosen(explicit) == ("explicit", "--config")
    assert chosen() == ("fromenv", "LINEPICKER_CONFIG")
    monkeypatch.delenv("LINEPICKER_CONFIG")
    assert chosen() == ("cwd", "current directory")
    assert load_config().source == cwd
    cwd.unlink()
    assert chosen() == ("user", "user config dir")
    user.unlink()
    assert find_config() == (bundled_config_path(), "bundled default")


def test_empty_linepicker_config_is_ignored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cwd = _write(tmp_path / "lines.yaml", "cwd")
    monkeypatch.setenv("LINEPICKER_CONFIG", "")
    assert find_config() == (cwd, "current directory")


def test_missing_file_named_by_env_var_is_an_error_not_a_silent_fallback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write(tmp_path / "lines.yaml", "cwd")
    monkeypatch.setenv("LINEPICKER_CONFIG", str(tmp_path / "typo.yaml"))
    with pytest.raises(ConfigError, match="typo.yaml"):
        load_config()


def test_config_arguments_expand_tilde(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home_config = _write(Path.home() / "relay" / "lines.yaml", "home")
    assert find_config("~/relay/lines.yaml") == (home_config, "--config")
    monkeypatch.setenv("LINEPICKER_CONFIG", "~/relay/lines.yaml")
    assert find_config() == (home_config, "LINEPICKER_CONFIG")


def test_a_directory_named_lines_yaml_in_cwd_is_skipped(tmp_path: Path) -> None:
    (tmp_path / "lines.yaml").mkdir()
    user = _write(tmp_path / "xdg-config" / "linepicker" / "lines.yaml", "user")
    assert find_config() == (user, "user config dir")


def test_bundled_default_is_the_last_resort() -> None:
    path, origin = find_config()
    assert (path, origin) == (bundled_config_path(), "bundled default")
    assert path.name == "lines.yaml" and path.is_file()


@pytest.mark.parametrize("path", [REPO / "lines.yaml", bundled_config_path()], ids=["repo", "bundled"])
def test_shipped_lines_yaml_parses_cleanly(path: Path) -> None:
    config = parse_config(path.read_bytes(), path, "bundled default")
    assert config.warnings == ()
    assert config.key_env is None, "the bundled relay lines are a third party's: no key goes to them"
    assert config.active_lines and all(line.url.startswith("https://") for line in config.lines)


def test_the_bundled_default_sends_no_key_even_with_a_key_env(relay: Any, tmp_path: Path, run: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """An older or edited bundled file may still name key_env; while it is the config in use, no key leaves."""
    import linepicker.config

    bundled = tmp_path / "site-packages" / "lines.yaml"
    bundled.parent.mkdir()
    bundled.write_text(f"key_env: OPENAI_API_KEY\nprobe: {{timeout: 2, samples: 2}}\nlines:\n  - name: a\n    url: {relay.url('a')}\n")
    monkeypatch.setattr(linepicker.config, "bundled_config_path", lambda: bundled)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-real-openai-key-0123456789")
    result = run("pick")
    assert result.exit_code == 0, result.output
    assert "bundled default" in result.stderr and "is not set" not in result.stderr
    assert len(relay.requests["a"]) == 2
    assert not any("Authorization" in headers or "x-api-key" in headers for headers in relay.requests["a"])

    mine = tmp_path / "lines.yaml"
    mine.write_text(bundled.read_text())
    assert run("pick").exit_code == 0, "./lines.yaml is the user's own"
    assert relay.requests["a"][-1]["Authorization"] == "Bearer sk-real-openai-key-0123456789"


# ---------------------------------------------------------------- the CLI


def test_cli_reports_a_bad_config_in_one_line_and_exits_2(tmp_path: Path, run: Any) -> None:
    (tmp_path / "bad.yaml").write_text("lines:\n  - name: a\n    url: ftp://a.example\n")
    result = run("pick", "--config", "bad.yaml")
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("linepicker: error: bad.yaml:3: url must be an http:// or https:// address")
    assert "Traceback" not in result.output and result.stdout == ""


def test_cli_reports_a_tagged_scalar_without_traceback(tmp_path: Path, run: Any) -> None:
    (tmp_path / "bad.yaml").write_text(GOOD_LINES + "probe:\n  timeout: !!timestamp soon\n")
    result = run("pick", "--config", "bad.yaml")
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert result.stderr.startswith("linepicker: error: bad.yaml:5: probe.timeout")


# ---------------------------------------------------------------- anything at all: Config or ConfigError

TOP_KEYS = ["key_env", "probe", "policy", "lines", "exclude", "targets", "retention", "on_switch"]
SECTION_KEYS = [
    "path", "timeout", "samples", "concurrency", "interval", "down_interval", "watch_interval",
    "window", "min_success_rate", "margin_relative", "margin_ms", "failure_penalty_ms", "rise", "fall", "latency", "half_life",
    "dotenv", "claude_settings", "raw", "hourly", "name", "url", "proxy",
]  # fmt: skip
TAGS = ["tag:yaml.org,2002:" + t for t in ("int", "float", "bool", "null", "timestamp", "binary", "str", "set", "omap", "python/none")] + ["!local"]
PLAUSIBLE = [
    "https://a.example", "http://b.example:8080/x/", "https://a.example/v1/", "http://[::1", "http://[::1]:9",
    "https://a.example?x=1", "none", "5s", "15m", "7d", "500ms", "/v1/models", "sk-abc-123", "OPENAI_API_KEY",
    "main", "a", "~/x/.env", "../.env", "", " ", "echo 'x", "1.5", "-1", "0", "yes",
]  # fmt: skip


class Tagged:
    def __init__(self, tag: str, value: str):
        self.tag, self.value = tag, value


class _Dumper(yaml.SafeDumper):
    pass


_Dumper.add_representer(Tagged, lambda dumper, item: dumper.represent_scalar(item.tag, item.value))

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.sampled_from([10**400, -(10**400), 2**63]),
    st.floats(),
    st.text(max_size=12),
    st.sampled_from(PLAUSIBLE),
    st.builds(Tagged, st.sampled_from(TAGS), st.one_of(st.sampled_from(PLAUSIBLE), st.text(max_size=6))),
)
keys = st.one_of(st.sampled_from(TOP_KEYS + SECTION_KEYS), st.text(max_size=6))
anything = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(keys, inner, max_size=5)), max_leaves=25)
names = st.one_of(st.sampled_from(["main", "hk", "cdn", "main"]), anything)
urls = st.one_of(st.sampled_from(PLAUSIBLE), st.builds(lambda s: "https://" + s, st.text(max_size=12)), anything)
line_like = st.one_of(
    st.fixed_dictionaries({"name": names, "url": urls}, optional={"proxy": st.one_of(st.sampled_from(PLAUSIBLE), anything)}),
    anything,
)
section = st.one_of(st.dictionaries(st.sampled_from(SECTION_KEYS), st.one_of(scalars, anything), max_size=6), anything)
config_like = st.fixed_dictionaries(
    {"lines": st.one_of(st.lists(line_like, min_size=1, max_size=4), anything)},
    optional={
        "key_env": st.one_of(st.sampled_from(PLAUSIBLE), anything),
        "probe": section,
        "policy": section,
        "retention": section,
        "targets": section,
        "exclude": st.one_of(st.lists(names, max_size=3), anything),
        "on_switch": st.one_of(st.sampled_from(PLAUSIBLE), st.lists(st.sampled_from(PLAUSIBLE), max_size=3), anything),
        "bogus": anything,
    },
)
documents = st.one_of(config_like, anything)
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def _parses_or_config_error(data: bytes | str, path: Path) -> None:
    try:
        config = parse_config(data, path)
    except ConfigError as exc:
        message = str(exc)
        assert message.startswith(str(path)) and "\n" not in message, message
        return
    assert config.active_lines, "a config always leaves a line to probe"
    assert len({line.name for line in config.lines}) == len(config.lines)
    assert all(line.url.split("://")[0] in ("http", "https") for line in config.lines)
    assert config.key_env is None or re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", config.key_env)


@FUZZ
@given(data=st.binary(max_size=300))
def test_any_bytes_give_a_config_or_a_config_error(data: bytes) -> None:
    _parses_or_config_error(data, Path("/fuzz/lines.yaml"))


@FUZZ
@given(document=documents, flow=st.booleans())
def test_any_yaml_document_gives_a_config_or_a_config_error(document: Any, flow: bool) -> None:
    text = yaml.dump(document, Dumper=_Dumper, default_flow_style=flow, allow_unicode=True)
    _parses_or_config_error(text, Path("/fuzz/lines.yaml"))


@FUZZ
@given(cut=st.integers(0, len(FULL)), junk=st.text(max_size=8))
def test_a_damaged_real_config_gives_a_config_or_a_config_error(cut: int, junk: str) -> None:
    _parses_or_config_error(FULL[:cut] + junk + FULL[cut:], Path("/fuzz/lines.yaml"))


@pytest.mark.parametrize(
    "text",
    [
        "lines:\n  - name: a\n    url: https://me:s3cr3t-pw@a.example\n",
        "lines:\n  - name: a\n    url: https://a.example\n    proxy: socks5://me:s3cr3t-pw@p.local:1080\n",
        "lines:\n  - name: a\n    url: https://a.example\n    proxy: 'http://me:s3cr3t-pw@[::1'\n",
        "lines:\n  - name: a\n    url: 'https://s3cr3t-pw@a.example/$x'\n",
    ],
    ids=["url-credentials", "socks-proxy", "unclosed-ipv6-proxy", "token-userinfo"],
)
def test_config_errors_mask_a_urls_password(cfg: Path, text: str) -> None:
    message = error_of(text, cfg)
    assert "s3cr3t-pw" not in message and "***@" in message
