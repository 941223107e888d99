"""Every command of both command lines prints its help, with the installed typer, click and
rich, and the man pages and completions generate from them.

The command lists come from walking each app's click tree, so a new command is covered
without touching this file. Help runs in a subprocess of the installed entry point, the way
a person runs it.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer
from rich.text import Text

from regctl.main import app as regctl_app
from regd.cli import app as regd_app

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


# Recent typer versions carry their own click, so commands are recognised by shape.
def _tree(app: typer.Typer, prog: str) -> Iterator[tuple[list[str], Any]]:
    root = typer.main.get_command(app)

    def walk(path: list[str], command: Any) -> Iterator[tuple[list[str], Any]]:
        yield path, command
        if hasattr(command, "commands"):
            for name, sub in sorted(command.commands.items()):
                yield from walk([*path, name], sub)

    yield from walk([prog], root)


COMMANDS = [*_tree(regctl_app, "regctl"), *_tree(regd_app, "regd")]


def _help_texts(command: Any) -> Iterator[tuple[str, str]]:
    if command.help:
        yield "the command's help", command.help
    for param in command.params:
        text: Any = getattr(param, "help", None)
        if text:
            yield f"the help of {param.name}", text


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "100", "NO_COLOR": "1", "TERM": "dumb"}
    return subprocess.run(
        [str(BIN / argv[0]), *argv[1:]],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        stdin=subprocess.DEVNULL,
        check=False,
    )


def test_the_tree_is_walked() -> None:
    # A walk that found nothing would make every other test here vacuous.
    names = {" ".join(path) for path, _ in COMMANDS}
    assert {"regctl", "regctl copy", "regctl inspect", "regctl tag rm", "regd serve"} <= names


@pytest.mark.parametrize(
    ("path", "command"), COMMANDS, ids=[" ".join(path) for path, _ in COMMANDS]
)
def test_help(path: list[str], command: Any) -> None:
    result = _run([*path, "--help"])
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert "Usage:" in result.stdout
    # Help is literal text: brackets such as [/variant] or [@DIGEST] must reach the reader
    # rather than be taken for rich markup (an error, or text silently dropped).
    for what, text in _help_texts(command):
        shown = Text.from_markup(text).plain
        assert shown == re.sub(r"\\(\[)", r"\1", text), f"{' '.join(path)}: {what} has markup"


def test_man_pages_and_completions_generate() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gendocs.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "cannot" not in result.stderr, result.stderr
