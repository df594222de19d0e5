"""Creating and editing lines.yaml from the command line keeps the user's file as they wrote it; the CLI explains itself."""

from __future__ import annotations

import difflib
import os
import shutil
import stat
import subprocess
import textwrap
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from conftest import stdout_json
from linepicker import __version__
from linepicker.cli import cli
from linepicker.config import Line, parse_config, user_config_path

HAND_WRITTEN = """\
# my relay, by hand
key_env: RELAY_KEY   # the variable, not the key

lines:
    # the main line
    -   name: main
        url: "https://api.relay.example"   # from the dashboard
    -   name: cdn
        url: https://cdn.relay.example
        proxy: none

    # a note after the lines
exclude:
  - cdn
policy: {window: 10m}
"""


def diff(before: str, after: str) -> list[str]:
    """The changed lines only, marked + or -."""
    return [line for line in difflib.ndiff(before.splitlines(), after.splitlines()) if line[:1] in "+-"]


def lines_of(path: Path) -> tuple[Line, ...]:
    return parse_config(path.read_bytes(), path).lines


# ---------------------------------------------------------------- init


def test_init_writes_a_starter_to_the_user_config_dir_and_never_overwrites(run) -> None:
    result = run("init", db=None)
    path = user_config_path()
    assert result.exit_code == 0, result.output
    assert str(path) in result.stdout
    assert path.parent == Path(os.environ["XDG_CONFIG_HOME"]) / "linepicker"
    config = parse_config(path.read_bytes(), path)
    assert [line.name for line in config.lines] == ["main"] and config.key_env == "OPENAI_API_KEY"
    assert "config: " in run("status").stderr and "(user config dir)" in run("status").stderr

    path.write_text(path.read_text() + "# mine\n")
    again = run("init", db=None)
    assert again.exit_code == 1
    assert again.stderr == f"linepicker: error: {path} already exists; left as it is (edit it, or use linepicker add/remove)\n"
    assert path.read_text().endswith("# mine\n")
    assert [name for name in os.listdir(path.parent)] == ["lines.yaml"], "no temporary file left behind"


def test_init_says_when_another_config_is_read_first(run, tmp_path: Path) -> None:
    (tmp_path / "lines.yaml").write_text("lines: [{name: a, url: 'https://a.example'}]\n")
    result = run("init", "--json", db=None)
    assert result.exit_code == 0
    assert stdout_json(result) == {"path": str(user_config_path()), "in_force": str(tmp_path / "lines.yaml")}
    plain = run("init", "--config", str(tmp_path / "other.yaml"), db=None)
    assert plain.exit_code == 0 and (tmp_path / "other.yaml").exists()
    assert "is read first" not in plain.stderr, "--config names the file a run with --config would read"


# ---------------------------------------------------------------- add


def test_add_inserts_after_the_last_line_in_the_files_own_style(run, tmp_path: Path) -> None:
    config = tmp_path / "lines.yaml"
    config.write_text(HAND_WRITTEN)
    config.chmod(0o640)

    result = run("add", "hk", "https://hk.relay.example", "--proxy", "http://127.0.0.1:7890", db=None)

    assert result.exit_code == 0, result.output
    assert result.stdout == f"added hk https://hk.relay.example to {config}\n"
    assert diff(HAND_WRITTEN, config.read_text()) == [
        "+     -   name: hk",
        "+         url: https://hk.relay.example",
        "+         proxy: http://127.0.0.1:7890",
    ]
    assert config.read_text().index("proxy: none") < config.read_text().index("name: hk") < config.read_text().index("# a note after")
    assert lines_of(config)[-1] == Line("hk", "https://hk.relay.example", "http://127.0.0.1:7890")
    assert stat.S_IMODE(config.stat().st_mode) == 0o640


def test_add_normalises_v1_and_quotes_what_yaml_would_misread(run, tmp_path: Path) -> None:
    config = tmp_path / "lines.yaml"
    config.write_text("lines:\n- name: a\n  url: https://a.example\n")

    first = run("add", "b", "https://b.example/v1/", "--json", db=None)
    second = run("add", "c", "https://c.example/a:b,c]", db=None)
    spaced = run("add", "e", "https://e.example/a: b", db=None)

    assert first.exit_code == 0, first.output
    assert stdout_json(first)["url"] == "https://b.example"
    assert stdout_json(first)["notes"] == ["stored the URL as https://b.example (linepicker adds /v1 where a client needs it)"]
    assert "stored the URL as https://d.example" in run("add", "d", "https://d.example/v1", db=None).stderr
    assert second.exit_code == 0, second.output
    assert spaced.exit_code == 2 and "url contains ' '" in spaced.stderr, "a URL with a space is no BaseURL"
    assert config.read_text() == (
        "lines:\n- name: a\n  url: https://a.example\n- name: b\n  url: https://b.example\n- name: c\n  url: https://c.example/a:b,c]\n"
        "- name: d\n  url: https://d.example\n"
    )
    assert lines_of(config)[-2].url == "https://c.example/a:b,c]"


def test_add_to_a_flow_list_and_a_crlf_file(run, tmp_path: Path) -> None:
    flow = tmp_path / "flow.yaml"
    flow.write_text("lines: [{name: a, url: 'https://a.example'}]  # one line\n")
    assert run("add", "b", "https://b.example", "--config", str(flow), db=None).exit_code == 0
    assert flow.read_text() == "lines: [{name: a, url: 'https://a.example'}, {name: \"b\", url: \"https://b.example\"}]  # one line\n"

    crlf = tmp_path / "crlf.yaml"
    crlf.write_bytes(b"lines:\r\n  - name: a\r\n    url: https://a.example")
    assert run("add", "b", "https://b.example", "--config", str(crlf), db=None).exit_code == 0
    assert crlf.read_bytes() == b"lines:\r\n  - name: a\r\n    url: https://a.example\r\n  - name: b\r\n    url: https://b.example\r\n"


def test_add_through_a_symlink_keeps_the_link(run, tmp_path: Path) -> None:
    real = tmp_path / "dotfiles" / "lines.yaml"
    real.parent.mkdir()
    real.write_text("lines:\n  - name: a\n    url: https://a.example\n")
    link = tmp_path / "lines.yaml"
    link.symlink_to(real)
    assert run("add", "b", "https://b.example", db=None).exit_code == 0
    assert link.is_symlink() and [line.name for line in lines_of(real)] == ["a", "b"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["main", "https://other.example"], "{config}:6: a line named 'main' already exists (https://api.relay.example)"),
        (["hk", "ftp://hk.example"], "{config} left unchanged: url must be an http:// or https:// address, got 'ftp://hk.example'"),
        (["hk", "https://user:pw@hk.example"], "{config} left unchanged: url must be a plain BaseURL without query, fragment or credentials"),
        (["hk", "not a url"], "{config} left unchanged: url must be an http:// or https:// address"),
        (["h k", "https://hk.example"], "{config} left unchanged: line name 'h k' must be 1-64 letters"),
        (["hk", "https://hk.example", "--proxy", "socks5://127.0.0.1:1080"], "{config} left unchanged: proxy must be an http:// proxy URL or 'none'"),
    ],
)
def test_add_refuses_what_the_config_would_refuse_and_leaves_the_file(run, tmp_path: Path, args: list[str], message: str) -> None:
    config = tmp_path / "lines.yaml"
    config.write_text(HAND_WRITTEN)
    result = run("add", *args, db=None)
    assert result.exit_code == 2
    assert result.stderr.startswith("linepicker: error: " + message.format(config=config)), result.stderr
    assert len(result.stderr.splitlines()) == 1 and "Traceback" not in result.output
    assert config.read_text() == HAND_WRITTEN


def test_add_and_remove_need_a_config_of_your_own(run) -> None:
    for args in (["add", "a", "https://a.example"], ["remove", "a"]):
        result = run(*args, db=None)
        assert result.exit_code == 2
        assert "no lines.yaml of your own yet: run 'linepicker init' first" in result.stderr


def test_add_to_a_broken_config_is_refused(run, tmp_path: Path) -> None:
    config = tmp_path / "lines.yaml"
    config.write_text("lines:\n  - name: a\n    url: https://a.example\n    colour: red\n")
    result = run("add", "b", "https://b.example", db=None)
    assert result.exit_code == 2 and f"{config}:4: unknown key 'colour'" in result.stderr


# ---------------------------------------------------------------- remove


def test_remove_cuts_the_line_and_its_exclude_entry_and_nothing_else(run, tmp_path: Path) -> None:
    config = tmp_path / "lines.yaml"
    config.write_text(HAND_WRITTEN)

    result = run("remove", "cdn", "--json", db=None)

    assert result.exit_code == 0, result.output
    assert stdout_json(result) == {"action": "removed", "config": str(config), "name": "cdn", "url": None, "notes": ["also removed 'cdn' from exclude"]}
    assert diff(HAND_WRITTEN, config.read_text()) == [
        "-     -   name: cdn",
        "-         url: https://cdn.relay.example",
        "-         proxy: none",
        "- exclude:",
        "-   - cdn",
    ]


def test_remove_from_the_middle_of_lists_block_and_flow(run, tmp_path: Path) -> None:
    config = tmp_path / "lines.yaml"
    before = textwrap.dedent(
        """\
        lines:
          - name: a
            url: https://a.example
          -
            name: b   # odd but valid
            url: https://b.example
          - {name: c, url: "https://c.example"}
        exclude: [b, c]
        """
    )
    config.write_text(before)
    assert run("remove", "b", db=None).exit_code == 0
    assert config.read_text() == 'lines:\n  - name: a\n    url: https://a.example\n  - {name: c, url: "https://c.example"}\nexclude: [c]\n'
    assert run("remove", "a", db=None).exit_code == 2, "c is excluded, so a is the last line left to probe"
    config.write_text("lines: [{name: a, url: 'https://a.example'}, {name: b, url: 'https://b.example'}]\n")
    assert run("remove", "a", db=None).exit_code == 0
    assert config.read_text() == "lines: [{name: b, url: 'https://b.example'}]\n"


@pytest.mark.parametrize(
    "name, message",
    [("nope", "{config}: no line named 'nope' (lines: a)"), ("a", "{config}: 'a' is the only line, and a config needs at least one")],
)
def test_remove_refusals(run, tmp_path: Path, name: str, message: str) -> None:
    config = tmp_path / "lines.yaml"
    config.write_text("lines:\n  - name: a\n    url: https://a.example\n")
    result = run("remove", name, db=None)
    assert result.exit_code == 2
    assert result.stderr == f"linepicker: error: {message.format(config=config)}\n"
    assert config.read_text() == "lines:\n  - name: a\n    url: https://a.example\n"


def test_init_add_remove_round_trip_leaves_the_starter_as_it_was(run) -> None:
    assert run("init", db=None).exit_code == 0
    path = user_config_path()
    starter = path.read_text()
    for name in ("hk", "cdn", "us"):
        assert run("add", name, f"https://{name}.example", db=None).exit_code == 0
    assert [line.name for line in lines_of(path)] == ["main", "hk", "cdn", "us"]
    for name in ("cdn", "hk", "us"):
        assert run("remove", name, db=None).exit_code == 0
    assert path.read_text() == starter


# ---------------------------------------------------------------- the CLI explains itself


def test_version(run) -> None:
    result = run("--version", db=None)
    assert result.exit_code == 0 and result.stdout == f"linepicker, version {__version__}\n"


def all_commands(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], click.Command]]:
    found = [(prefix, group)]
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            found += all_commands(command, prefix + (name,))
        else:
            found.append((prefix + (name,), command))
    return found


@pytest.mark.parametrize("path", [" ".join(path) or "(top)" for path, _ in all_commands(cli)])
def test_every_commands_help_has_an_example(path: str) -> None:
    args = [] if path == "(top)" else path.split()
    result = CliRunner().invoke(cli, [*args, "--help"])
    assert result.exit_code == 0
    assert "Example" in result.output, f"linepicker {path} --help shows no example"
    example = result.output[result.output.index("Example") :]
    assert "linepicker" in example, "the example is a command line"


def completion(env: dict[str, str]):
    return CliRunner().invoke(cli, [], prog_name="linepicker", env=env)


def test_bash_completion_script_is_valid_bash_and_completes_commands_and_line_names(tmp_path: Path) -> None:
    script = completion({"_LINEPICKER_COMPLETE": "bash_source"}).output
    assert "_linepicker_completion" in script
    checked = subprocess.run(["bash", "-c", f"{script}\ncomplete -p linepicker"], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr
    assert "-F _linepicker_completion" in checked.stdout

    commands = completion({"_LINEPICKER_COMPLETE": "bash_complete", "COMP_WORDS": "linepicker do", "COMP_CWORD": "1"}).output
    assert commands.split() == ["plain,doctor"]

    (tmp_path / "lines.yaml").write_text("lines: [{name: hk, url: 'https://hk.example'}, {name: home, url: 'https://h.example'}, {name: us, url: 'https://us.example'}]\n")
    for command in ("remove", "pin"):
        names = completion({"_LINEPICKER_COMPLETE": "bash_complete", "COMP_WORDS": f"linepicker {command} h", "COMP_CWORD": "2"}).output
        assert names.split() == ["plain,hk", "plain,home"]


@pytest.mark.parametrize("shell, check", [("zsh", ["zsh", "-n", "-c"]), ("fish", ["fish", "--no-execute", "-c"])])
def test_zsh_and_fish_completion_scripts_parse(shell: str, check: list[str]) -> None:
    if shutil.which(shell) is None:
        pytest.skip(f"{shell} is not installed (CI installs it)")
    script = completion({"_LINEPICKER_COMPLETE": f"{shell}_source"}).output
    assert "linepicker" in script
    checked = subprocess.run([*check, script], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr


YAML_BREAKS = {"line-separator": "\u2028", "paragraph-separator": "\u2029", "next-line": "\x85", "lone-cr": "\r", "crlf": "\r\n"}


@pytest.mark.parametrize("brk", list(YAML_BREAKS.values()), ids=list(YAML_BREAKS))
def test_remove_and_add_count_lines_as_yaml_does(run, tmp_path: Path, brk: str) -> None:
    """A line break that str.count('\\n') misses once made `remove b` take a's `proxy:` with it."""
    config = tmp_path / "lines.yaml"
    text = (
        f"# relay{brk}# notes\nkey_env: K\nlines:\n  - name: a\n    url: https://a.example\n    proxy: http://127.0.0.1:1\n"
        f"  - name: b # second{brk}    url: https://b.example\n    proxy: http://127.0.0.1:2\n  - name: c\n    url: https://c.example\n    proxy: none\n"
    )
    config.write_bytes(text.encode())
    before = {line.name: line for line in lines_of(config)}
    assert set(before) == {"a", "b", "c"}

    removed = run("remove", "b", db=None)
    assert removed.exit_code == 0, removed.output
    assert lines_of(config) == (before["a"], before["c"])
    assert config.read_bytes().decode().startswith(f"# relay{brk}# notes\n"), "the comment before stays as it was"

    added = run("add", "d", "https://d.example", "--proxy", "http://127.0.0.1:4", db=None)
    assert added.exit_code == 0, added.output
    assert lines_of(config) == (before["a"], before["c"], Line("d", "https://d.example", "http://127.0.0.1:4"))
    assert run("remove", "a", db=None).exit_code == 0
    assert lines_of(config) == (before["c"], Line("d", "https://d.example", "http://127.0.0.1:4"))
