"""Rooms a reader can hold (issue 36): no module over 500 lines, no function over 60 lines or over 7
parameters (a parameter object counts as one; a typer command's parameters are its flags)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "mbsearch"
MAX_MODULE_LINES, MAX_FUNCTION_LINES, MAX_PARAMETERS = 500, 60, 7


def _commands() -> set[str]:
    """The typer commands' function names: their parameters are the command's flags."""
    from mbsearch.cli.app import app
    from mbsearch.cli.training import supernet_app

    return {command.callback.__name__ for typer_app in (app, supernet_app) for command in typer_app.registered_commands}


def _functions(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            arguments = node.args
            names = [a.arg for a in arguments.posonlyargs + arguments.args + arguments.kwonlyargs]
            count = len([name for name in names if name not in ("self", "cls")])
            count += bool(arguments.vararg) + bool(arguments.kwarg)
            yield node.name, count, node.end_lineno - node.lineno + 1


def test_no_module_is_over_500_lines() -> None:
    long = {
        str(p.relative_to(PACKAGE)): n
        for p in PACKAGE.rglob("*.py")
        if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES
    }
    assert long == {}


def test_no_function_is_over_60_lines_or_7_parameters() -> None:
    commands = _commands()
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for name, parameters, lines in _functions(path):
            command = path.parent.name == "cli" and name in commands
            if lines > MAX_FUNCTION_LINES or (parameters > MAX_PARAMETERS and not command):
                found.append(f"{path.relative_to(PACKAGE)}:{name} ({parameters} parameters, {lines} lines)")
    assert found == []
