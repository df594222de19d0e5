"""Every start-up line linepicker shows (README, `env --help`, `init`, doctor's fixes) works in the shell it names,
whatever $SHELL says: each is run by the real bash, zsh and fish, through the installed console script."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import stdout_json
from linepicker.clientenv import RC_LINES
from linepicker.store import Store

README = Path(__file__).resolve().parent.parent / "README.md"
BIN = Path(sys.executable).parent  # the venv's bin, where pip put the `linepicker` console script
URL = "http://127.0.0.1:9/line/a;b&c(d)!e*"  # shell metacharacters a line URL may hold: every shell's quoting is exercised
SHOW = {
    "bash": 'printf "%s|%s|%s" "$OPENAI_BASE_URL" "$OPENAI_API_BASE" "$ANTHROPIC_BASE_URL"',
    "zsh": 'printf "%s|%s|%s" "$OPENAI_BASE_URL" "$OPENAI_API_BASE" "$ANTHROPIC_BASE_URL"',
    "fish": 'printf "%s|%s|%s" "$OPENAI_BASE_URL" "$OPENAI_API_BASE" "$ANTHROPIC_BASE_URL"',
}
OTHER = {"bash": "/usr/bin/fish", "zsh": "/usr/bin/fish", "fish": "/bin/bash"}  # the $SHELL that used to break it
EXPORTED = f"{URL}/v1|{URL}/v1|{URL}"


def needs(shell: str) -> None:
    if not shutil.which(shell):
        pytest.skip(f"{shell} is not installed (.ci/run installs it)")


def start_shell(shell: str, rc: Path, login_shell: str) -> subprocess.CompletedProcess[str]:
    """Read `rc` as the shell reads its start-up file, then print what it exported."""
    argv = {
        "bash": ["bash", "--norc", "--noprofile", "-c", f'. "$1"; {SHOW["bash"]}', "_", str(rc)],
        "zsh": ["zsh", "-f", "-c", f'. "$1"; {SHOW["zsh"]}', "_", str(rc)],
        "fish": ["fish", "--no-config", "-c", f'source $argv[1]; {SHOW["fish"]}', str(rc)],
    }[shell]
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "SHELL": login_shell}
    for name in ("OPENAI_BASE_URL", "OPENAI_API_BASE", "ANTHROPIC_BASE_URL"):
        env.pop(name, None)
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)


@pytest.fixture
def chosen_db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A database with a choice, found the way a start-up file finds it: $LINEPICKER_DB."""
    path = tmp_path / "lp.db"
    with Store(path) as store:
        store.record_decision("main", URL, None, "test", None)
    monkeypatch.setenv("LINEPICKER_DB", str(path))
    return path


def readme_snippets() -> dict[str, str]:
    """The lines the README tells users to put in a start-up file, by the shell they name."""
    found: dict[str, str] = {}
    for match in re.finditer(r'eval "\$\(linepicker env --shell (\w+)\)"|linepicker env --shell (\w+) \|[^`\n]*', README.read_text(encoding="utf-8")):
        found.setdefault(match.group(1) or match.group(2), match.group(0).strip())
    return found


def test_every_evaluated_linepicker_env_in_the_readme_names_its_shell() -> None:
    text = README.read_text(encoding="utf-8")
    evaluated = re.findall(r"(?:eval \"\$\(linepicker env[^)]*\)\"|linepicker env[^\n|`]*\| *(?:source|Out-String|Invoke-Expression))", text)
    assert evaluated, "the README shows how to load the choice in a shell"
    assert all("--shell " in snippet for snippet in evaluated), evaluated
    assert "2>/dev/null" not in text, "an error of `linepicker env` must reach the user, not vanish"
    snippets = readme_snippets()
    for shell in ("bash", "zsh", "fish", "powershell"):
        assert snippets.get(shell) == RC_LINES[shell][1], f"README's {shell} line is the one help, init and doctor show"


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_the_readme_line_exports_the_choice_whatever_shell_is_the_login_shell(shell: str, chosen_db: Path, tmp_path: Path) -> None:
    needs(shell)
    rc = tmp_path / f"rc.{shell}"
    rc.write_text(readme_snippets()[shell] + "\n")

    started = start_shell(shell, rc, login_shell=OTHER[shell])

    assert started.stdout == EXPORTED, started.stderr
    assert started.stderr == ""


@pytest.mark.parametrize("shell", ["bash", "fish"])
def test_before_any_choice_a_new_shell_says_why_nothing_was_exported(shell: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    needs(shell)
    monkeypatch.setenv("LINEPICKER_DB", str(tmp_path / "empty.db"))
    rc = tmp_path / f"rc.{shell}"
    rc.write_text(readme_snippets()[shell] + "\n")

    started = start_shell(shell, rc, login_shell=OTHER[shell])

    assert started.stdout == "||"
    assert "no line chosen yet: run 'linepicker pick'" in started.stderr


def test_env_help_shows_a_working_line_for_each_shell(run, chosen_db: Path, tmp_path: Path) -> None:
    help_text = run("env", "--help", db=None).stdout
    for shell in ("bash", "zsh", "fish"):
        needs(shell)
        [line] = [text.split(None, 1)[1] for text in help_text.splitlines() if f"--shell {shell})" in text or f"--shell {shell} |" in text]
        rc = tmp_path / f"help.{shell}"
        rc.write_text(line + "\n")
        assert start_shell(shell, rc, login_shell=OTHER[shell]).stdout == EXPORTED, line


@pytest.mark.parametrize("login_shell, shell", [("/usr/bin/fish", "fish"), ("/bin/bash", "bash"), ("/usr/bin/zsh", "zsh")])
def test_init_ends_with_the_start_up_line_for_the_users_shell(login_shell: str, shell: str, run, chosen_db: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    needs(shell)
    monkeypatch.setenv("SHELL", login_shell)
    result = run("init", db=None)
    assert result.exit_code == 0, result.output
    steps = result.stdout.split("next:\n", 1)[1].splitlines()
    assert [step.split("  #")[0].strip() for step in steps] == ["linepicker add NAME URL", "linepicker pick", RC_LINES[shell][1]]
    rc = tmp_path / "from-init"
    rc.write_text(RC_LINES[shell][1] + "\n")
    assert start_shell(shell, rc, login_shell="/bin/sh").stdout == EXPORTED


def test_init_elsewhere_says_to_pass_config(run, tmp_path: Path) -> None:
    other = tmp_path / "my relay.yaml"
    result = run("init", "--config", str(other), db=None)
    assert f"linepicker add --config '{other}' NAME URL" in result.stdout
    assert f"linepicker pick --config '{other}'" in result.stdout


def test_doctor_finds_a_start_up_line_that_prints_another_shells_syntax_and_its_fix_works(
    write_config, run, chosen_db: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The issue's case: fish is the login shell, bash reads ~/.bashrc, `eval "$(linepicker env)"` gets fish syntax."""
    needs("bash")
    home = Path(os.environ["HOME"])
    home.mkdir(exist_ok=True)
    bashrc = home / ".bashrc"
    bashrc.write_text('export OPENAI_BASE_URL=https://old.example/v1\neval "$(linepicker env)"\n')
    monkeypatch.setenv("SHELL", "/usr/bin/fish")
    assert start_shell("bash", bashrc, "/usr/bin/fish").stdout.startswith("https://old.example/v1|"), "the bug: bash cannot run fish's set -gx"
    config = write_config({"main": URL})

    findings = stdout_json(run("doctor", "--config", str(config), "--json", db=chosen_db))["findings"]

    by_where = {finding["where"]: finding for finding in findings}
    wrong = by_where[f"{bashrc}:2"]
    assert wrong["severity"] == "error"
    assert "prints fish syntax" in wrong["what"] and "$SHELL=/usr/bin/fish" in wrong["what"]
    assert by_where[f"{bashrc}:1"]["severity"] == "error", "a line that exports nothing does not override the fixed value before it"
    fixed = wrong["fix"].removeprefix("replace it with: ")
    assert fixed == 'eval "$(linepicker env --shell bash)"'
    bashrc.write_text(f"export OPENAI_BASE_URL=https://old.example/v1\n{fixed}\n")
    assert start_shell("bash", bashrc, "/usr/bin/fish").stdout == EXPORTED
    assert stdout_json(run("doctor", "--config", str(config), "--json", db=chosen_db))["findings"] == []


def test_doctor_fixes_name_the_shell_of_the_file(write_config, run, chosen_db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = Path(os.environ["HOME"])
    home.mkdir(exist_ok=True)
    (home / ".bashrc").write_text("export OPENAI_BASE_URL=https://old.example/v1\n")
    (home / ".zshrc").write_text("export OPENAI_BASE_URL=https://old.example/v1\n")
    monkeypatch.setenv("SHELL", "/usr/bin/fish")
    monkeypatch.setenv("OPENAI_API_BASE", "https://old.example/v1")
    config = write_config({"main": URL})
    findings = {f["where"]: f["fix"] for f in stdout_json(run("doctor", "--config", str(config), "--json", db=chosen_db))["findings"]}
    assert findings[f"{home}/.bashrc:1"].endswith('eval "$(linepicker env --shell bash)"')
    assert findings[f"{home}/.zshrc:1"].endswith('eval "$(linepicker env --shell zsh)"')
    assert "linepicker env --shell fish | source" in findings["environment: OPENAI_API_BASE"], "this shell's fix follows $SHELL, named"
