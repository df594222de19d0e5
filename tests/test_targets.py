"""The files linepicker writes belong to the user: every test here uses real files and real shells."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import stat
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from linepicker.config import Targets
from linepicker.errors import TargetError
from linepicker.clientenv import SHELLS, client_env, detect_shell, shell_exports
from linepicker.fsutil import atomic_write
from linepicker.targets import render_dotenv, update_claude_settings, update_dotenv, write_targets

URL = "https://new.example"
OLD = "https://old.example"
HOSTILE_URLS = [
    URL,
    "https://relay.example/it's",
    "https://relay.example/$HOME/`id`/$(touch pwned)",
    'https://relay.example/a "b" c',
    "https://relay.example/back\\slash\\",
    "https://relay.example/100%25/%PATH%/!x!",
]


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def leftovers(directory: Path) -> list[str]:
    return sorted(name for name in os.listdir(directory) if name.endswith(".tmp"))


# ---------------------------------------------------------------- shell exports


def test_client_env_gives_openai_clients_v1_and_claude_the_bare_host() -> None:
    assert client_env(URL) == {
        "OPENAI_BASE_URL": f"{URL}/v1",
        "OPENAI_API_BASE": f"{URL}/v1",
        "ANTHROPIC_BASE_URL": URL,
    }


def _evaluated(shell: str, exports: str, directory: Path) -> list[str] | None:
    """Run the exports in the real shell and read the three variables back; None if it is not installed."""
    names = list(client_env(URL))
    if shell == "bash":
        script = 'eval "$1"; printf "%s\\0" ' + " ".join(f'"${n}"' for n in names)
        argv = ["bash", "-c", script, "linepicker-test", exports]
    elif shell == "zsh":
        script = 'eval "$1"; printf "%s\\0" ' + " ".join(f'"${n}"' for n in names)
        argv = ["zsh", "-f", "-c", script, "linepicker-test", exports]
    elif shell == "fish":
        source = directory / "exports.fish"
        source.write_text(exports)
        argv = ["fish", "--no-config", "-c", f"source {source}; printf '%s\\0' " + " ".join(f"${n}" for n in names)]
    elif shell == "powershell":
        source = directory / "exports.ps1"
        source.write_text(exports)
        reads = " + [char]0 + ".join(f"$env:{n}" for n in names)
        argv = ["pwsh", "-NoProfile", "-NonInteractive", "-Command", f". '{source}'; [Console]::Out.Write({reads} + [char]0)"]
    else:
        return None
    if shutil.which(argv[0]) is None:
        return None
    done = subprocess.run(argv, capture_output=True, cwd=directory, timeout=30, env={"PATH": os.environ["PATH"], "HOME": str(directory)})
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    return done.stdout.decode().split("\0")[:-1]


@pytest.mark.parametrize("url", HOSTILE_URLS)
def test_bash_exports_evaluate_to_exactly_the_urls(url: str, tmp_path: Path) -> None:
    values = _evaluated("bash", shell_exports(url, "bash"), tmp_path)
    assert values == [f"{url}/v1", f"{url}/v1", url]
    assert not (tmp_path / "pwned").exists(), "a URL must never run a command"


@pytest.mark.parametrize("shell", ["zsh", "fish", "powershell"])
def test_other_shells_evaluate_to_exactly_the_urls_when_installed(shell: str, tmp_path: Path) -> None:
    for url in HOSTILE_URLS:
        values = _evaluated(shell, shell_exports(url, shell), tmp_path)
        if values is None:
            pytest.skip(f"{shell} is not installed; its text is checked by the tests below")
        assert values == [f"{url}/v1", f"{url}/v1", url], url
        assert not (tmp_path / "pwned").exists()


def test_every_shell_gets_one_line_per_variable() -> None:
    for shell in SHELLS:
        lines = shell_exports(URL, shell).splitlines()
        assert len(lines) == 3, shell
        for line, (name, value) in zip(lines, client_env(URL).items()):
            assert name in line and value in line, (shell, line)


def test_export_text_per_shell() -> None:
    assert shell_exports(URL, "bash") == (
        f"export OPENAI_BASE_URL='{URL}/v1'\nexport OPENAI_API_BASE='{URL}/v1'\nexport ANTHROPIC_BASE_URL='{URL}'\n"
    )
    assert shell_exports(URL, "zsh") == shell_exports(URL, "bash")
    assert shell_exports(URL, "fish").splitlines()[2] == f"set -gx ANTHROPIC_BASE_URL '{URL}';"
    assert shell_exports(URL, "powershell").splitlines()[2] == f"$env:ANTHROPIC_BASE_URL = '{URL}'"
    assert shell_exports(URL, "cmd").splitlines()[2] == f'set "ANTHROPIC_BASE_URL={URL}"'


def test_single_quote_in_url_is_quoted_for_each_shell() -> None:
    url = "https://relay.example/it's"
    assert shell_exports(url, "bash").splitlines()[2] == "export ANTHROPIC_BASE_URL='https://relay.example/it'\\''s'"
    assert shell_exports(url, "fish").splitlines()[2] == "set -gx ANTHROPIC_BASE_URL 'https://relay.example/it\\'s';"
    assert shell_exports(url, "powershell").splitlines()[2] == "$env:ANTHROPIC_BASE_URL = 'https://relay.example/it''s'"


@pytest.mark.parametrize(
    "url, line",
    [
        ("https://r.example/a%41b", 'set "ANTHROPIC_BASE_URL=https://r.example/a%%41b"'),
        ("https://r.example/%PATH%", 'set "ANTHROPIC_BASE_URL=https://r.example/%%PATH%%"'),
        ("https://r.example/a&b|c<d>e^f!g(h)", 'set "ANTHROPIC_BASE_URL=https://r.example/a&b|c<d>e^f!g(h)"'),
        ('https://r.example/a"&b|c<d>e^f!g(h)"&i', 'set "ANTHROPIC_BASE_URL=https://r.example/a"^&b^|c^<d^>e^^f^!g^(h^)"&i"'),
        ('https://r.example/"%&', 'set "ANTHROPIC_BASE_URL=https://r.example/"%%^&"'),
    ],
    ids=["percent-escape", "variable", "specials-inside-quotes", "specials-after-a-quote", "quote-percent-ampersand"],
)
def test_cmd_exports_escape_what_a_batch_file_would_act_on(url: str, line: str) -> None:
    """cmd expands % even inside quotes; each " in the value turns quoting off or on, and outside it & | < > ^ ( ) ! need ^."""
    assert shell_exports(url, "cmd").splitlines()[2] == line


@pytest.mark.parametrize("quote", ["'", "\u2018", "\u2019", "\u201a", "\u201b"], ids=["apostrophe", "left", "right", "low", "reversed"])
def test_powershell_doubles_every_character_it_takes_for_a_single_quote(quote: str) -> None:
    url = f"https://r.example/it{quote}s;Remove-Item x"
    assert shell_exports(url, "powershell").splitlines()[2] == f"$env:ANTHROPIC_BASE_URL = 'https://r.example/it{quote * 2}s;Remove-Item x'"


def test_fish_quoting_escapes_backslashes_that_fish_reads_inside_single_quotes() -> None:
    """In fish, '\\\\' inside single quotes is one backslash, and a trailing '\\' would escape the closing quote."""
    line = shell_exports("https://relay.example/a\\b\\", "fish").splitlines()[2]
    assert line == "set -gx ANTHROPIC_BASE_URL 'https://relay.example/a\\\\b\\\\';"


def test_unknown_shell_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="tcsh"):
        shell_exports(URL, "tcsh")


@pytest.mark.parametrize("login_shell, expected", [("/usr/bin/fish", "fish"), ("/bin/zsh", "zsh"), ("/usr/local/bin/bash", "bash")])
def test_detect_shell_follows_dollar_shell(login_shell: str, expected: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHELL", login_shell)
    assert detect_shell() == expected


# ---------------------------------------------------------------- .env

USER_DOTENV = """\
# my project settings
export OPENAI_BASE_URL="https://old.example/v1"

DATABASE_URL=postgres://db/app   # production
  OPENAI_API_BASE='https://old.example/v1'
ANTHROPIC_BASE_URL=https://old.example # relay line, see wiki
# OPENAI_BASE_URL=https://commented.example/v1
OTHER_KEY=1
"""

EXPECTED_DOTENV = """\
# my project settings
export OPENAI_BASE_URL="https://new.example/v1"

DATABASE_URL=postgres://db/app   # production
  OPENAI_API_BASE='https://new.example/v1'
ANTHROPIC_BASE_URL=https://new.example # relay line, see wiki
# OPENAI_BASE_URL=https://commented.example/v1
OTHER_KEY=1
"""


def test_dotenv_replaces_our_keys_in_place_and_keeps_everything_else(tmp_path: Path) -> None:
    env = tmp_path / ".env"
    env.write_text(USER_DOTENV)
    result = update_dotenv(env, URL)
    assert (result.kind, result.path, result.changed) == ("dotenv", env, True)
    assert env.read_text() == EXPECTED_DOTENV


def test_dotenv_inline_comment_after_a_quoted_value_survives(tmp_path: Path) -> None:
    env = tmp_path / ".env"
    env.write_text('OPENAI_BASE_URL="https://old.example/v1 # not a comment" # mine\nANTHROPIC_BASE_URL=x#y\n')
    update_dotenv(env, URL)
    assert env.read_text().splitlines()[:2] == [f'OPENAI_BASE_URL="{URL}/v1" # mine', f"ANTHROPIC_BASE_URL={URL}"]


def test_dotenv_appends_missing_keys_after_the_users_lines(tmp_path: Path) -> None:
    env = tmp_path / ".env"
    env.write_text("# keep me\nOPENAI_BASE_URL=https://old.example/v1\nDEBUG=1\n")
    update_dotenv(env, URL)
    assert env.read_text() == (
        f"# keep me\nOPENAI_BASE_URL={URL}/v1\nDEBUG=1\nOPENAI_API_BASE={URL}/v1\nANTHROPIC_BASE_URL={URL}\n"
    )


def test_dotenv_without_final_newline_gets_keys_on_their_own_lines(tmp_path: Path) -> None:
    env = tmp_path / ".env"
    env.write_text("DEBUG=1")
    update_dotenv(env, URL)
    assert env.read_text() == f"DEBUG=1\nOPENAI_BASE_URL={URL}/v1\nOPENAI_API_BASE={URL}/v1\nANTHROPIC_BASE_URL={URL}\n"


def test_dotenv_replacing_the_last_line_without_newline_adds_none(tmp_path: Path) -> None:
    env = tmp_path / ".env"
    env.write_text(f"OPENAI_BASE_URL=a\nOPENAI_API_BASE=b\nANTHROPIC_BASE_URL=c")
    update_dotenv(env, URL)
    assert env.read_text() == f"OPENAI_BASE_URL={URL}/v1\nOPENAI_API_BASE={URL}/v1\nANTHROPIC_BASE_URL={URL}"


def test_crlf_dotenv_stays_crlf(tmp_path: Path) -> None:
    env = tmp_path / ".env"
    env.write_bytes(b"# windows\r\nOPENAI_BASE_URL=https://old.example/v1\r\nDEBUG=1\r\n")
    update_dotenv(env, URL)
    data = env.read_bytes()
    assert data == (
        b"# windows\r\nOPENAI_BASE_URL=https://new.example/v1\r\nDEBUG=1\r\n"
        b"OPENAI_API_BASE=https://new.example/v1\r\nANTHROPIC_BASE_URL=https://new.example\r\n"
    )
    assert b"\n" not in data.replace(b"\r\n", b""), "no bare LF mixed into a CRLF file"


def test_dotenv_keeps_the_files_mode(tmp_path: Path) -> None:
    env = tmp_path / ".env"
    env.write_text(USER_DOTENV)
    os.chmod(env, 0o640)
    update_dotenv(env, URL)
    assert mode(env) == 0o640
    os.chmod(env, 0o604)
    update_dotenv(env, OLD)
    assert mode(env) == 0o604


def test_new_dotenv_is_private_whatever_the_umask(tmp_path: Path) -> None:
    env = tmp_path / ".env"
    previous = os.umask(0o002)
    try:
        update_dotenv(env, URL)
    finally:
        os.umask(previous)
    assert mode(env) == 0o600
    assert env.read_text() == f"OPENAI_BASE_URL={URL}/v1\nOPENAI_API_BASE={URL}/v1\nANTHROPIC_BASE_URL={URL}\n"


def test_symlinked_dotenv_is_updated_through_the_link(tmp_path: Path) -> None:
    dotfiles = tmp_path / "dotfiles"
    dotfiles.mkdir()
    real = dotfiles / "project.env"
    real.write_text(USER_DOTENV)
    os.chmod(real, 0o640)
    project = tmp_path / "project"
    project.mkdir()
    link = project / ".env"
    link.symlink_to(real)
    assert update_dotenv(link, URL).changed
    assert link.is_symlink() and os.readlink(link) == str(real), "the dotfile manager's link stays"
    assert real.read_text() == EXPECTED_DOTENV
    assert mode(real) == 0o640
    assert leftovers(dotfiles) == [] and leftovers(project) == []


def test_dotenv_updates_leave_no_temp_files(tmp_path: Path) -> None:
    env = tmp_path / ".env"
    env.write_text(USER_DOTENV)
    for url in (URL, OLD, URL):
        update_dotenv(env, url)
    assert sorted(os.listdir(tmp_path)) == [".env"]


def test_same_url_again_is_not_a_rewrite(tmp_path: Path) -> None:
    env = tmp_path / ".env"
    env.write_text(USER_DOTENV)
    update_dotenv(env, URL)
    os.utime(env, ns=(1_000_000_000, 1_000_000_000))
    before = env.stat()
    result = update_dotenv(env, URL)
    after = env.stat()
    assert result.changed is False
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def test_dotenv_that_is_not_utf8_is_refused_and_untouched(tmp_path: Path) -> None:
    env = tmp_path / ".env"
    original = b"NAME=caf\xe9\nOPENAI_BASE_URL=x\n"
    env.write_bytes(original)
    with pytest.raises(TargetError, match=r"\.env"):
        update_dotenv(env, URL)
    assert env.read_bytes() == original


def test_render_dotenv_of_its_own_output_is_stable() -> None:
    once = render_dotenv(USER_DOTENV, client_env(URL))
    assert render_dotenv(once, client_env(URL)) == once


# ---------------------------------------------------------------- Claude Code settings.json

SETTINGS = {
    "model": "opus",
    "env": {"FOO": "bar", "ANTHROPIC_BASE_URL": OLD, "ZED": "名字"},
    "permissions": {"allow": ["Bash(ls:*)"], "deny": []},
    "apiKeyHelper": None,
}


def test_claude_settings_keeps_every_other_key_and_the_order(tmp_path: Path) -> None:
    path = tmp_path / "settings.json"
    path.write_text(json.dumps(SETTINGS, indent=4, ensure_ascii=False))
    result = update_claude_settings(path, URL)
    assert (result.kind, result.changed) == ("claude_settings", True)
    text = path.read_text(encoding="utf-8")
    data = json.loads(text)
    assert list(data) == list(SETTINGS)
    assert list(data["env"]) == ["FOO", "ANTHROPIC_BASE_URL", "ZED"]
    assert data == {**SETTINGS, "env": {**SETTINGS["env"], "ANTHROPIC_BASE_URL": URL}}
    assert "名字" in text, "non-ASCII stays readable"


def test_claude_settings_without_env_gains_one(tmp_path: Path) -> None:
    path = tmp_path / "settings.json"
    path.write_text('{"model": "opus"}')
    update_claude_settings(path, URL)
    assert json.loads(path.read_text()) == {"model": "opus", "env": {"ANTHROPIC_BASE_URL": URL}}


@pytest.mark.parametrize(
    "content, words",
    [
        (b'{"model": "opus",, }', "not valid JSON"),
        (b'[{"env": {}}]', "JSON object"),
        (b'{"env": "ANTHROPIC_BASE_URL=x"}', "'env'"),
        (b"\xff\xfe{}", "cannot read"),
        (b'{"big": NaN, "env": {}}', "not valid JSON"),
        (b'{"big": Infinity}', "not valid JSON"),
        (b'{"small": -Infinity}', "not valid JSON"),
        (b'{"emoji": "\\ud83d", "env": {"ANTHROPIC_BASE_URL": "x"}}', "surrogate"),
        (b'{"env": {"\\udc00": 1}}', "surrogate"),
        (b'{"model": "opus",}', "not valid JSON"),
        (b'{"model": "opus"}\x0c', "not valid JSON"),
    ],
    ids=["invalid-json", "array", "env-not-object", "not-utf8", "nan", "infinity", "minus-infinity", "lone-surrogate", "surrogate-key", "trailing-comma", "form-feed"],
)
def test_claude_settings_that_cannot_be_understood_are_left_byte_for_byte(tmp_path: Path, content: bytes, words: str) -> None:
    path = tmp_path / "settings.json"
    path.write_bytes(content)
    os.utime(path, ns=(1_000_000_000, 1_000_000_000))
    before = path.stat()
    with pytest.raises(TargetError) as info:
        update_claude_settings(path, URL)
    message = str(info.value)
    assert words in message and str(path) in message and "\n" not in message
    assert path.read_bytes() == content
    assert (path.stat().st_ino, path.stat().st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert leftovers(tmp_path) == []


# Values that no parse/serialise round trip keeps as written.
TRICKY = (
    '{\r\n\t"big": 1e400,\r\n\t"huge": ' + "9" * 5000 + ',\r\n\t"zero": -0.0, "one": 1.0, "int": 1, "exp": 2E-3,\r\n'
    '\t"text": "caf\\u00e9 \\/ \\ud83d\\ude00 名字",   "order": {"z": [], "a": {}},\r\n'
    '\t"env": {"ANTHROPIC_BASE_URL": "https:\\/\\/old.example", "FOO": "1"},\r\n'
    '\t"dup": 1, "dup": 2,\r\n'
    '\t"env": {\r\n\t\t"ANTHROPIC_BASE_URL" :  "https://old.example" ,\r\n\t\t"BAR": null\r\n\t}\r\n}\r\n'
)


def test_claude_settings_keep_every_byte_but_the_value_they_set(tmp_path: Path) -> None:
    path = tmp_path / "settings.json"
    path.write_bytes(TRICKY.encode())
    update_claude_settings(path, URL)
    # JSON.parse and Python keep the last of duplicate keys, so the last env is the one Claude Code reads.
    assert path.read_bytes().decode() == TRICKY.replace('  "https://old.example" ,', f'  "{URL}" ,')
    assert update_claude_settings(path, URL).changed is False


NODE_READS = r"""
const fs = require("fs");
const [before, after] = process.argv.slice(1).map((p) => JSON.parse(fs.readFileSync(p, "utf8")));
const url = after.env.ANTHROPIC_BASE_URL;
before.env.ANTHROPIC_BASE_URL = url;
console.log(JSON.stringify({url, same: JSON.stringify(before) === JSON.stringify(after)}));
"""


@pytest.mark.skipif(not shutil.which("node"), reason="node (Claude Code's runtime) is not installed")
def test_claude_code_reads_the_new_url_and_every_value_it_read_before(tmp_path: Path) -> None:
    before, after = tmp_path / "before.json", tmp_path / "settings.json"
    before.write_bytes(TRICKY.encode())
    after.write_bytes(TRICKY.encode())
    update_claude_settings(after, URL)
    read = subprocess.run(["node", "-e", NODE_READS, str(before), str(after)], capture_output=True, text=True, check=True)
    assert json.loads(read.stdout) == {"url": URL, "same": True}


@pytest.mark.parametrize(
    "before, after",
    [
        ('{\n    "model": "opus"\n}\n', '{\n    "model": "opus",\n    "env": {\n        "ANTHROPIC_BASE_URL": "NEWURL"\n    }\n}\n'),
        ('{\n\t"model": 1.0,\n\t"env": {}\n}', '{\n\t"model": 1.0,\n\t"env": {\n\t\t"ANTHROPIC_BASE_URL": "NEWURL"\n\t}\n}'),
        ('{\r\n  "env": {\r\n    "FOO": 1e400\r\n  }\r\n}\r\n', '{\r\n  "env": {\r\n    "FOO": 1e400,\r\n    "ANTHROPIC_BASE_URL": "NEWURL"\r\n  }\r\n}\r\n'),
        ('{"model": -0.0}', '{"model": -0.0, "env": {"ANTHROPIC_BASE_URL": "NEWURL"}}'),
        ('{}', '{"env": {"ANTHROPIC_BASE_URL": "NEWURL"}}'),
        ("  \n", '{\n  "env": {\n    "ANTHROPIC_BASE_URL": "NEWURL"\n  }\n}\n'),
    ],
    ids=["four-spaces", "tabs-empty-env", "crlf-env-without-key", "one-line", "empty-object", "blank-file"],
)
def test_claude_settings_gain_the_key_in_the_files_own_layout(tmp_path: Path, before: str, after: str) -> None:
    path = tmp_path / "settings.json"
    path.write_bytes(before.encode())
    update_claude_settings(path, URL)
    text = path.read_bytes().decode()
    assert text == after.replace("NEWURL", URL)
    assert json.loads(text)["env"]["ANTHROPIC_BASE_URL"] == URL


def test_claude_settings_keep_their_mode(tmp_path: Path) -> None:
    path = tmp_path / "settings.json"
    path.write_text(json.dumps(SETTINGS))
    os.chmod(path, 0o640)
    update_claude_settings(path, URL)
    assert mode(path) == 0o640


def test_new_claude_settings_are_private_and_their_dir_is_created(tmp_path: Path) -> None:
    path = tmp_path / "home" / ".claude" / "settings.json"
    previous = os.umask(0o002)
    try:
        update_claude_settings(path, URL)
    finally:
        os.umask(previous)
    assert json.loads(path.read_text()) == {"env": {"ANTHROPIC_BASE_URL": URL}}
    assert mode(path) == 0o600


def test_claude_settings_with_the_same_url_are_not_rewritten(tmp_path: Path) -> None:
    path = tmp_path / "settings.json"
    path.write_text(json.dumps({"env": {"ANTHROPIC_BASE_URL": URL}}, indent=8))
    before = path.read_bytes(), path.stat().st_ino
    assert update_claude_settings(path, URL).changed is False
    assert (path.read_bytes(), path.stat().st_ino) == before


# ---------------------------------------------------------------- write_targets and atomic_write


def test_one_broken_target_does_not_stop_the_others(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where a directory should be")
    broken_dotenv = blocker / ".env"
    good_dotenv = tmp_path / "app" / ".env"
    good_dotenv.parent.mkdir()
    good_dotenv.write_text("DEBUG=1\n")
    bad_json = tmp_path / "bad.json"
    bad_json.write_text("{oops")
    good_json = tmp_path / "claude" / "settings.json"
    targets = Targets(dotenv=(broken_dotenv, good_dotenv), claude_settings=(bad_json, good_json))

    results, errors = write_targets(targets, "main", URL)

    assert [(r.kind, r.path, r.changed) for r in results] == [("dotenv", good_dotenv, True), ("claude_settings", good_json, True)]
    assert len(errors) == 2
    assert str(broken_dotenv) in errors[0] and str(bad_json) in errors[1]
    assert all("\n" not in error for error in errors)
    assert f"ANTHROPIC_BASE_URL={URL}" in good_dotenv.read_text()
    assert json.loads(good_json.read_text())["env"]["ANTHROPIC_BASE_URL"] == URL
    assert bad_json.read_text() == "{oops"
    assert blocker.read_text() == "a file where a directory should be"


def test_symlink_loop_is_a_target_error_not_a_crash(tmp_path: Path) -> None:
    loop = tmp_path / ".env"
    loop.symlink_to(loop)
    results, errors = write_targets(Targets(dotenv=(loop,)), "main", URL)
    assert results == [] and len(errors) == 1 and str(loop) in errors[0]


def test_failed_atomic_write_leaves_no_temp_file(tmp_path: Path) -> None:
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    with pytest.raises(TargetError, match="occupied"):
        atomic_write(occupied, b"data")
    assert occupied.is_dir()
    assert leftovers(tmp_path) == []


def test_no_targets_means_nothing_written(tmp_path: Path) -> None:
    assert write_targets(Targets(), "main", URL) == ([], [])
    assert not Targets()


# ---------------------------------------------------------------- crash safety

CHILD = r"""
import json, sys
from pathlib import Path
from linepicker.fsutil import atomic_write
from linepicker.targets import update_dotenv

env, big, url_a, url_b = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], sys.argv[4]
payloads = [json.dumps({"gen": n, "pad": str(n) * 300_000}).encode() for n in (0, 1)]
sys.stdout.write("ready\n")
sys.stdout.flush()
n = 0
while True:
    update_dotenv(env, (url_a, url_b)[n % 2])
    atomic_write(big, payloads[n % 2])
    n += 1
"""

CRASH_DOTENV = "# keep me\nexport SECRET_TOKEN='abc'\nOPENAI_BASE_URL=\"x\"\r\nDEBUG=1 # on\n"
URL_A, URL_B = "https://a.example", "https://b.example"


def _parse_dotenv(text: str) -> dict[str, str]:
    pairs = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.removeprefix("export ").partition("=")
            pairs[key] = value
    return pairs


def _kill_loop(directory: Path, kills: int, seed: int) -> set[str]:
    """Kill a writer at random moments; after each kill both files must be whole, old or new."""
    rng = random.Random(seed)
    directory.mkdir()
    env, big = directory / ".env", directory / "settings.json"
    states = {render_dotenv(CRASH_DOTENV, client_env(url)): url for url in (URL_A, URL_B)}
    payloads = {json.dumps({"gen": n, "pad": str(n) * 300_000}) for n in (0, 1)}
    env.write_text(next(iter(states)), newline="")
    os.chmod(env, 0o640)
    atomic_write(big, min(payloads).encode())
    seen: set[str] = set()
    for _ in range(kills):
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(env), str(big), URL_A, URL_B],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            assert child.stdout is not None and child.stdout.readline() == b"ready\n", child.stderr.read() if child.stderr else ""
            time.sleep(rng.choice([0, rng.uniform(0, 0.003), rng.uniform(0, 0.02)]))
            assert child.poll() is None, child.stderr.read() if child.stderr else ""
        finally:
            child.send_signal(signal.SIGKILL)
            child.communicate()
        text = env.read_bytes().decode()
        assert text in states, f"torn .env after a kill: {text!r}"
        seen.add(states[text])
        assert _parse_dotenv(text)["SECRET_TOKEN"] == "'abc'"
        assert mode(env) == 0o640
        assert json.dumps(json.loads(big.read_bytes())) in payloads, "torn settings.json after a kill"
    return seen


def test_killing_a_writer_at_any_moment_leaves_old_or_new_content(tmp_path: Path) -> None:
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = [pool.submit(_kill_loop, tmp_path / f"w{n}", 110, seed=n) for n in range(2)]
        seen = set().union(*(future.result() for future in futures))
    assert seen == {URL_A, URL_B}, "the writer must have been caught both before and after a switch"
    assert time.monotonic() - started < 30


# ---------------------------------------------------------------- .env as its readers read it


def read_back_by_shell(shell: str, path: Path, names: list[str]) -> dict[str, str]:
    """What `set -a; . ./.env` gives a POSIX shell, NUL-separated so any value comes back whole."""
    script = f'set -a; . "{path}"; ' + " ".join(f'printf "%s\\0" "${name}";' for name in names)
    out = subprocess.run([shell, "-c", script], capture_output=True, cwd=path.parent, check=True).stdout
    return dict(zip(names, out.decode().split("\0")))


def read_back_by_dotenv(path: Path) -> dict[str, str | None]:
    from dotenv import dotenv_values

    return dict(dotenv_values(path))


DOTENV_SHELLS = [shell for shell in ("sh", "bash", "zsh") if shutil.which(shell)]


def test_dotenv_lines_end_where_dotenv_and_sh_end_them(tmp_path: Path) -> None:
    """\\x0c, \\x1c-\\x1e, \\x85 and U+2028 end a line for str.splitlines() only: the rest of that line is not a binding."""
    env = tmp_path / ".env"
    original = "NOTE='a\x0cOPENAI_BASE_URL=glued'\nWIDE='b\u2028ANTHROPIC_BASE_URL=glued\x85c'\nSEP='d\x1cOPENAI_API_BASE=glued'\n"
    env.write_text(original)
    before = read_back_by_dotenv(env)
    update_dotenv(env, URL)
    text = env.read_text()
    assert text.startswith(original)
    after = read_back_by_dotenv(env)
    assert {key: after[key] for key in before} == before
    assert after == {**before, **client_env(URL)}
    for shell in DOTENV_SHELLS:
        assert read_back_by_shell(shell, env, list(after)) == after, shell


def test_a_matching_line_inside_another_keys_multiline_value_is_left_alone(tmp_path: Path) -> None:
    env = tmp_path / ".env"
    original = (
        'CERT="-----BEGIN-----\nOPENAI_BASE_URL=https://inside.example/v1\n-----END-----"\n'
        "NOTE='first\nexport ANTHROPIC_BASE_URL=https://inside.example\n'\n"
        "export OPENAI_API_BASE='https://old.example/v1' # mine\n"
    )
    env.write_bytes(original.encode())
    update_dotenv(env, URL)
    text = env.read_bytes().decode()
    assert text.startswith(original.split("export OPENAI_API_BASE")[0])
    assert f"export OPENAI_API_BASE='{URL}/v1' # mine\n" in text
    values = read_back_by_dotenv(env)
    assert values["CERT"] == "-----BEGIN-----\nOPENAI_BASE_URL=https://inside.example/v1\n-----END-----"
    assert values["NOTE"] == "first\nexport ANTHROPIC_BASE_URL=https://inside.example\n"
    assert {key: values[key] for key in client_env(URL)} == client_env(URL)
    for shell in DOTENV_SHELLS:
        assert read_back_by_shell(shell, env, list(values)) == values, shell


NASTY_URLS = [
    "https://a.example/$(touch pwned)",
    "https://a.example/`touch pwned`",
    "https://a.example/x;touch pwned",
    "https://a.example/x&&touch pwned",
    "https://a.example/x|touch pwned",
    "https://a.example/a'b",
    'https://a.example/a"b',
    "https://a.example/a\\b",
    "https://a.example/${HOME}",
    "https://a.example/$HOME",
    "https://a.example/x #not-a-comment",
    "https://a.example/*?[a]~!#%41(x)<y>{z}",
    "https://a.example/a'b\"c",
    "https://a.example/\nEVIL=1",
]


@pytest.mark.parametrize("style", ["bare", "single", "double", "export", "new"])
def test_dotenv_values_read_back_exactly_in_sh_and_dotenv_or_are_refused(tmp_path: Path, style: str) -> None:
    """Each URL is written in each quoting a user may have chosen; it reads back as written, or the file is left alone."""
    written = refused = 0
    for n, url in enumerate(NASTY_URLS):
        env = tmp_path / f"{n}.env"
        old = {"bare": "OPENAI_BASE_URL=old", "single": "OPENAI_BASE_URL='old'", "double": 'OPENAI_BASE_URL="old"', "export": "export OPENAI_BASE_URL=old", "new": "OTHER=1"}[style]
        env.write_text(old + "\n")
        try:
            update_dotenv(env, url)
        except TargetError as exc:
            assert env.read_text() == old + "\n" and "\n" not in str(exc)
            refused += 1
            continue
        written += 1
        expected = client_env(url)
        assert {key: read_back_by_dotenv(env)[key] for key in expected} == expected, env.read_text()
        for shell in DOTENV_SHELLS:
            assert read_back_by_shell(shell, env, list(expected)) == expected, (shell, env.read_text())
    assert not (tmp_path / "pwned").exists()
    assert written >= 10 and refused <= 4
