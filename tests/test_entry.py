"""The console script answers a plain `linepicker env` without click; it must say exactly what the click CLI says."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from linepicker import clientenv, entry
from linepicker.cli import cli
from linepicker.store import Store

URL = "http://127.0.0.1:9/a;b&c(d)!e*%41"  # shell metacharacters and an escape a line URL may hold: every shell's quoting is exercised


def console_script(argv: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["linepicker", *argv])
    monkeypatch.setattr(sys.modules["__main__"], "__package__", None, raising=False)  # click names the program from argv[0]
    with pytest.raises(SystemExit) as exit_:
        entry.main()
    out = capsys.readouterr()
    return exit_.value.code or 0, out.out, out.err


def click_cli(argv: list[str]) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, argv, prog_name="linepicker")
    return result.exit_code, result.stdout, result.stderr


def chosen(path: Path) -> Path:
    with Store(path) as store:
        store.record_decision("main", URL, None, "test", None)
    return path


@pytest.mark.parametrize("shell", [*clientenv.SHELLS, None])
def test_exports_match_the_click_cli(shell: str | None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["env", "--db", str(chosen(tmp_path / "lp.db"))] + (["--shell", shell] if shell else [])
    monkeypatch.setenv("SHELL", "/usr/bin/fish")
    fast = console_script(argv, monkeypatch, capsys)
    assert fast[0] == 0 and fast == click_cli(argv)


def test_the_default_database_is_the_one_the_cli_uses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """conftest sets XDG_DATA_HOME; the fast path must find the same file platformdirs names."""
    from linepicker.store import default_db_path

    chosen(default_db_path())
    fast = console_script(["env"], monkeypatch, capsys)
    assert fast[0] == 0 and fast == click_cli(["env"])
    monkeypatch.setenv("LINEPICKER_DB", str(chosen(tmp_path / "other.db")))
    assert console_script(["env", "--shell", "fish"], monkeypatch, capsys) == click_cli(["env", "--shell", "fish"])


@pytest.mark.parametrize(
    "xdg, home, plain",
    [
        (None, "/home/u", True),
        ("", "/home/u", True),
        ("/data", "/home/u", True),
        ("relative/dir", "/home/u", False),
        (" /data ", "/home/u", False),
        (None, "relative", False),
        (None, "", False),
    ],
)
def test_the_fast_path_never_names_another_default_database(xdg: str | None, home: str, plain: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """The plain cases are answered fast; where it is unsure it must defer, never guess: a wrong guess says 'no line chosen' beside a choice."""
    from linepicker.store import default_db_path

    monkeypatch.delenv("LINEPICKER_DB", raising=False)
    monkeypatch.setenv("HOME", home)
    if xdg is None:
        monkeypatch.delenv("XDG_DATA_HOME", raising=False)
    else:
        monkeypatch.setenv("XDG_DATA_HOME", xdg)
    quick = entry._quick_db_path(None)
    try:
        expected = str(default_db_path())
    except RuntimeError:  # platformdirs finds no home at all; the fast path must not have invented one
        expected = None
    if plain:
        assert quick == expected
    else:
        assert quick is None or quick == expected


@pytest.mark.parametrize("name", ["we#ird?%20dir", "//double-slash"])
def test_a_database_path_with_uri_characters_is_read(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / name.lstrip("/") / "lp.db"
    db.parent.mkdir()
    chosen(db)
    given = "/" + str(db) if name.startswith("//") else str(db)  # POSIX keeps a leading '//' as it is
    argv = ["env", "--db", given, "--shell", "bash"]
    fast = console_script(argv, monkeypatch, capsys)
    assert fast[0] == 0 and "OPENAI_BASE_URL=" in fast[1]
    assert fast == click_cli(argv)


@pytest.mark.parametrize("content", [None, b"", b"not a database at all, just some bytes" * 100])
def test_no_choice_and_broken_files_fail_alike(content: bytes | None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "lp.db"
    if content is not None:
        db.write_bytes(content)
    fast = console_script(["env", "--db", str(db)], monkeypatch, capsys)
    assert fast[0] in (1, 3) and fast[2].startswith("linepicker: ")
    assert fast == click_cli(["env", "--db", str(db)])


@pytest.mark.parametrize("argv", [["env", "--json"], ["env", "--shell", "tcsh"], ["env", "--db"], ["env", "--db", "."], ["--version"]])
def test_anything_else_is_answered_by_click(argv: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    chosen(tmp_path / "lp.db")
    argv = [a.replace(".", str(tmp_path)) if a == "." else a for a in argv]
    assert console_script(argv, monkeypatch, capsys) == click_cli(argv)


# ---------------------------------------------------------------- env --config


@pytest.mark.parametrize(
    "lines, shown",
    [
        ({"main": URL, "other": "https://other.example"}, "exports"),
        ({"main": "https://moved.example"}, "its url there is now https://moved.example"),
        ({"other": URL}, "is not a line of"),
    ],
)
def test_env_config_hands_out_only_a_line_of_that_config(
    lines: dict[str, str], shown: str, write_config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """One database, several relays' configs: `env --config` must not export the other relay's line."""
    config = write_config(lines)
    argv = ["env", "--db", str(chosen(tmp_path / "lp.db")), "--config", str(config), "--shell", "bash"]
    fast = console_script(argv, monkeypatch, capsys)
    assert fast == click_cli(argv)
    if shown == "exports":
        assert fast[0] == 0 and "export OPENAI_BASE_URL=" in fast[1] and fast[2] == "", "quiet on success: it runs in every new shell"
    else:
        assert fast[0] == 3 and fast[1] == ""
        assert shown in fast[2] and f"run 'linepicker pick --config {config}'" in fast[2]


@pytest.mark.parametrize("content", [None, "lines: [oops\n"])
def test_env_config_that_cannot_be_read_is_a_config_error(
    content: str | None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "lines.yaml"
    if content is not None:
        config.write_text(content)
    argv = ["env", "--db", str(chosen(tmp_path / "lp.db")), "--config", str(config)]
    fast = console_script(argv, monkeypatch, capsys)
    assert fast[0] == 2 and fast[1] == "" and fast[2].startswith(f"linepicker: error: {config}")
    assert fast == click_cli(argv)


def test_env_config_directory_is_click_s_usage_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["env", "--db", str(chosen(tmp_path / "lp.db")), "--config", str(tmp_path)]
    assert console_script(argv, monkeypatch, capsys) == click_cli(argv)
    assert click_cli(argv)[0] == 2


def test_env_with_config_still_imports_no_click_rich_aiohttp_or_sqlite_utils(write_config, tmp_path: Path) -> None:
    """The fast path pays for the YAML parser when asked to read a config, and for nothing else."""
    import os
    import subprocess

    db = chosen(tmp_path / "lp.db")
    config = write_config({"main": URL})
    out = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import sys; from linepicker.entry import main; main()", "env", "--db", str(db), "--config", str(config)],
        capture_output=True, text=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}, timeout=60,
    )
    assert out.returncode == 0 and "OPENAI_BASE_URL" in out.stdout, out.stderr[-2000:]
    imported = {line.rsplit("|", 1)[1].strip() for line in out.stderr.splitlines() if line.startswith("import time:")}
    assert "yaml" in imported
    assert not imported & {"click", "rich", "aiohttp", "sqlite_utils"}
