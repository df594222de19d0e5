"""The package's structure: dependencies point one way, and the `env` path stays light.

The core (config, probe, store, policy, picker, targets and the small stdlib
modules under them) is what the CLI and the daemon call; if it imported
either, a change to the presentation could break a decision, and `status`
would pay for the daemon's imports. These tests read the imports with `ast`,
so they hold for lazy imports inside functions too (only imports under
`if TYPE_CHECKING:` are left out: they never run).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from linepicker.store import Store

PACKAGE = Path(__file__).resolve().parent.parent / "linepicker"

CORE = (
    "config", "probe", "store", "policy", "picker", "targets", "clientenv", "lastchoice", "errors", "fsutil", "traffic", "gatewaylease",
    "dotenvedit", "jsonedit", "urlmask", "words", "configedit", "doctor", "service",
)
PRESENTATION = ("cli", "entry", "report.terminal", "daemon")


def module_names() -> dict[str, Path]:
    names = {}
    for path in PACKAGE.rglob("*.py"):
        parts = ("linepicker", *path.relative_to(PACKAGE).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names[".".join(parts)] = path
    return names


def runtime_imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Every linepicker module this one imports when it runs, relative imports resolved."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            if isinstance(child, ast.Import):
                found.update(alias.name for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    anchor = package.split(".")[: len(package.split(".")) - child.level + 1]
                    base = ".".join(anchor + ([child.module] if child.module else []))
                found.add(base)
                found.update(f"{base}.{alias.name}" for alias in child.names)
            visit(child)

    visit(tree)
    with_parents = set()
    for target in found:
        parts = target.split(".")
        with_parents.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
    return {target for target in with_parents if target in known and target != name and not name.startswith(target + ".")}


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    names = module_names()
    return {name: runtime_imports(name, path, set(names)) for name, path in names.items()}


def within(name: str, group: tuple[str, ...]) -> bool:
    short = name.removeprefix("linepicker.")
    return any(short == member or short.startswith(member + ".") for member in group)


def test_there_is_no_import_cycle(graph: dict[str, set[str]]) -> None:
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def walk(name: str, stack: list[str]) -> None:
        state[name] = 1
        for target in sorted(graph[name]):
            if state.get(target) == 1:
                cycles.append(stack[stack.index(target):] + [target])
            elif target not in state:
                walk(target, stack + [target])
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            walk(name, [name])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(cycle) for cycle in cycles)


def test_the_core_imports_neither_the_cli_nor_the_daemon_nor_rendering(graph: dict[str, set[str]]) -> None:
    wrong = sorted(f"{name} -> {target}" for name, targets in graph.items() if within(name, CORE) for target in targets if within(target, PRESENTATION + ("report",)))
    assert not wrong, wrong


def test_the_daemon_never_imports_the_cli_or_its_terminal_rendering(graph: dict[str, set[str]]) -> None:
    wrong = sorted(f"{name} -> {target}" for name, targets in graph.items() if within(name, ("daemon",)) for target in targets if within(target, ("cli", "entry", "report.terminal")))
    assert not wrong, wrong


def test_reports_import_neither_the_cli_nor_the_daemon(graph: dict[str, set[str]]) -> None:
    wrong = sorted(f"{name} -> {target}" for name, targets in graph.items() if within(name, ("report",)) for target in targets if within(target, ("cli", "entry", "daemon")))
    assert not wrong, wrong


def test_the_console_script_is_imported_by_nothing(graph: dict[str, set[str]]) -> None:
    assert not [name for name, targets in graph.items() if "linepicker.entry" in targets]


def test_the_checker_sees_a_cycle_and_a_wrong_direction(tmp_path: Path) -> None:
    """The checks above must be able to fail: two modules that import each other, one lazily."""
    (tmp_path / "a.py").write_text("from . import b\n")
    (tmp_path / "b.py").write_text("def f():\n    from .a import x\n    return x\n")
    (tmp_path / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from . import a\n")
    known = {"linepicker.a", "linepicker.b", "linepicker.c"}
    assert runtime_imports("linepicker.a", tmp_path / "a.py", known) == {"linepicker.b"}
    assert runtime_imports("linepicker.b", tmp_path / "b.py", known) == {"linepicker.a"}
    assert runtime_imports("linepicker.c", tmp_path / "c.py", known) == set()
    assert within("linepicker.daemon.web", ("daemon",)) and not within("linepicker.daemonic", ("daemon",))


def test_every_module_says_its_concern() -> None:
    missing = [name for name, path in module_names().items() if not ast.get_docstring(ast.parse(path.read_text(encoding="utf-8")))]
    assert not missing, missing


HEAVY = ("click", "aiohttp", "yaml", "sqlite_utils", "rich", "apscheduler", "asyncio", "ssl")


def test_the_env_fast_path_imports_nothing_heavy(tmp_path: Path) -> None:
    """`eval "$(linepicker env --shell bash)"` runs in every new shell: it must print the choice
    while loading none of the libraries the rest of linepicker needs."""
    db = tmp_path / "lp.db"
    with Store(db) as store:
        store.record_decision("main", "https://main.example", None, "test", None)
    code = (
        "import sys\n"
        "from linepicker.entry import main\n"
        f"sys.argv = ['linepicker', 'env', '--shell', 'bash', '--db', {str(db)!r}]\n"
        "try:\n    main()\nexcept SystemExit as exit:\n    code = exit.code\n"
        f"print('\\n#', code, ' '.join(sorted(name for name in sys.modules if name.split('.')[0] in {HEAVY!r})))\n"
    )
    shown = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    exports, _, summary = shown.stdout.rpartition("\n# ")
    assert "export OPENAI_BASE_URL='https://main.example/v1'" in exports
    status, _, loaded = summary.strip().partition(" ")
    assert status == "0" and loaded == "", f"env loaded {loaded}"
