#!/usr/bin/env python3
"""Generate regctl's shell completions and the man pages regctl(1) and regd(8).

Everything comes from the typer apps, so the documents cannot drift from the code:
`scripts/gendocs.py` rewrites them, `scripts/gendocs.py --check` exits 1 when a committed
file differs from what the code would generate now.
"""

from __future__ import annotations

import argparse
import enum
import os
import subprocess
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import typer
from rich.text import Text

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

COMPLETIONS = {"bash": "regctl.bash", "zsh": "_regctl", "fish": "regctl.fish"}

REGCTL_EXTRA: list[tuple[str, str]] = [
    (
        "REFERENCES",
        "A reference is [HOST[:PORT]/]REPO[:TAG][@DIGEST], parsed as docker does: the first "
        "path component is a host when it contains a dot or a colon or is localhost. Without "
        "a host, a reference names the regd that regctl start runs ($REGCTL_REGISTRY "
        "overrides it). Loopback addresses and localhost are spoken to over HTTP, every "
        "other registry over HTTPS unless --plain-http is given.",
    ),
    (
        "ENVIRONMENT",
        "\n".join(
            [
                "REGCTL_REGISTRY\tregistry for references without a host",
                "REGCTL_PLAIN_HTTP\tsame as --plain-http",
                "REGCTL_INSECURE\tsame as --insecure",
                "REGCTL_CA_CERT\tsame as --ca-cert",
                "REGCTL_DEBUG\tsame as --debug",
                "REGD_DATA_DIR\tregd's data directory (default ~/.local/share/regd)",
                "DOCKER_CONFIG\tdirectory of config.json (default ~/.docker)",
                "REGISTRY_AUTH_FILE\tan extra auth file to read (podman's variable)",
                "NO_COLOR\tdisable colours",
            ]
        ),
    ),
    (
        "FILES",
        "\n".join(
            [
                "~/.docker/config.json\tcredentials, shared with docker, podman and skopeo",
                "DATA_DIR/regd.pid\tpid of the daemon regctl start runs",
                "DATA_DIR/regd.log\tits output",
                "DATA_DIR/regctl.json\tits URL, used for references without a host",
            ]
        ),
    ),
    (
        "EXIT STATUS",
        "\n".join(
            [
                "0\tsuccess",
                "1\tfailure (the error is one line naming the URL, HTTP status and "
                "registry error code); regctl status: regd is not running",
                "2\tusage error",
            ]
        ),
    ),
    (
        "EXAMPLES",
        "\n".join(
            [
                "regctl start --addr 127.0.0.1:5000",
                "regctl copy docker.io/library/alpine:3.20 alpine:3.20 --platform linux/amd64",
                "regctl ls",
                "regctl ls alpine --json",
                "regctl inspect alpine:3.20",
                "regctl copy registry.example.com/team/app --all-tags --referrers "
                "127.0.0.1:5000/team/app",
                "regctl rm alpine@sha256:...",
            ]
        ),
    ),
    ("SEE ALSO", "regd(8), skopeo(1), docker-login(1)"),
]

REGD_EXTRA: list[tuple[str, str]] = [
    (
        "ENVIRONMENT",
        "Every setting of the configuration file can also be given as a REGD_* variable "
        "(REGD_ADDR, REGD_DATA_DIR, REGD_DATABASE, REGD_WORKERS, REGD_LOG_LEVEL, "
        "REGD_CONFIG, ...). Precedence, lowest to highest: defaults, the file, the "
        "environment, the command line.",
    ),
    ("SIGNALS", "SIGTERM and SIGINT stop regd gracefully."),
    ("SEE ALSO", "regctl(1)"),
]


def roff_escape(text: str) -> str:
    out = text.replace("\\", "\\e").replace("-", "\\-")
    lines = []
    for line in out.splitlines():
        if line.startswith((".", "'")):
            line = "\\&" + line
        lines.append(line)
    return "\n".join(lines)


def plain(text: str) -> str:
    """Help is rich text (a literal bracket is escaped); a man page shows what --help shows."""
    return Text.from_markup(text).plain


def paragraphs(text: str | None) -> list[str]:
    if not text:
        return []
    text = plain(text)
    chunks = [" ".join(part.split()) for part in text.strip().split("\n\n")]
    return [c for c in chunks if c]


def metavar(param: Any) -> str:
    if getattr(param, "is_flag", False):
        return ""
    if param.metavar:
        return str(param.metavar)
    for holder in (getattr(param, "type", None), getattr(param, "type_descriptor", None)):
        choices = getattr(holder, "choices", None)
        if choices:
            names = [c.value if isinstance(c, enum.Enum) else str(c) for c in choices]
            return "[" + "|".join(names) + "]"
    return str(param.name).upper()


def option_label(param: Any) -> str:
    names = sorted(param.opts, key=len) + list(param.secondary_opts)
    label = ", ".join(f"\\fB{roff_escape(n)}\\fR" for n in names)
    value = metavar(param)
    if value:
        label += f" \\fI{roff_escape(value)}\\fR"
    return label


def option_help(param: Any) -> str:
    text = " ".join(plain(param.help or "").split())
    default = param.default
    show_default = getattr(param, "show_default", True)
    if (
        show_default is not False
        and not getattr(param, "is_flag", False)
        and default not in (None, (), [], False)
        and not callable(default)
    ):
        shown = default.value if isinstance(default, enum.Enum) else default
        text += f" (default: {shown})"
    if getattr(param, "envvar", None) and isinstance(param.envvar, str):
        text += f" (env: {param.envvar})"
    return roff_escape(text.strip())


def synopsis(path: Sequence[str], command: Any) -> str:
    parts = [f"\\fB{roff_escape(' '.join(path))}\\fR"]
    if any(p.param_type_name == "option" and not p.hidden for p in command.params):
        parts.append("[\\fIOPTIONS\\fR]")
    for param in command.params:
        if param.param_type_name != "argument":
            continue
        name = f"\\fI{roff_escape(str(param.name).upper())}\\fR"
        if param.nargs == -1:
            name += "..."
        parts.append(name if param.required else f"[{name}]")
    if hasattr(command, "commands"):
        parts.append("\\fICOMMAND\\fR [\\fIARGS\\fR]...")
    return " ".join(parts)


def describe_options(params: Iterable[Any]) -> list[str]:
    lines: list[str] = []
    for param in params:
        if param.param_type_name != "option" or getattr(param, "hidden", False):
            continue
        lines += [".TP", option_label(param), option_help(param)]
    return lines


def describe_arguments(params: Iterable[Any]) -> list[str]:
    lines: list[str] = []
    for param in params:
        if param.param_type_name != "argument":
            continue
        help_text = getattr(param, "help", None) or ""
        lines += [
            ".TP",
            f"\\fI{roff_escape(str(param.name).upper())}\\fR",
            roff_escape(" ".join(plain(help_text).split())),
        ]
    return lines


def walk(path: list[str], command: Any) -> Iterable[tuple[list[str], Any]]:
    for name, sub in command.commands.items():
        if getattr(sub, "hidden", False):
            continue
        if hasattr(sub, "commands"):
            yield from walk([*path, name], sub)
        else:
            yield [*path, name], sub


def extra_section(title: str, body: str) -> list[str]:
    lines = [f".SH {title}"]
    for row in body.splitlines():
        if "\t" in row:
            term, text = row.split("\t", 1)
            lines += [".TP", f"\\fB{roff_escape(term)}\\fR", roff_escape(text)]
        elif title == "EXAMPLES":
            lines += [".PP", ".nf", roff_escape(row), ".fi"]
        else:
            lines += [".PP", roff_escape(row)]
    return lines


def _description(app: typer.Typer) -> str | None:
    """The root callback's docstring says more than the one-line app help."""
    info = app.registered_callback
    callback = info.callback if info is not None else None
    return callback.__doc__ if callback is not None else None


def man_page(
    app: typer.Typer,
    name: str,
    section: int,
    version: str,
    summary: str,
    extra: list[tuple[str, str]],
) -> str:
    root = typer.main.get_command(app)
    lines = [
        f'.TH {name.upper()} {section} "" "{name} {version}" '
        f'"{"User Commands" if section == 1 else "System Administration"}"',
        ".SH NAME",
        f"{name} \\- {roff_escape(summary)}",
        ".SH SYNOPSIS",
        synopsis([name], root),
        ".SH DESCRIPTION",
    ]
    for chunk in paragraphs(_description(app) or root.help):
        lines += [".PP", roff_escape(chunk)]
    global_options = describe_options(root.params)
    if global_options:
        lines += [".SH OPTIONS", *global_options]
    lines.append(".SH COMMANDS")
    for path, command in walk([name], root):
        lines += [
            ".SS " + '"' + roff_escape(" ".join(path[1:])) + '"',
            ".PP",
            synopsis(path, command),
        ]
        for chunk in paragraphs(command.help):
            lines += [".PP", roff_escape(chunk)]
        lines += describe_arguments(command.params)
        lines += describe_options(command.params)
    for title, body in extra:
        lines += extra_section(title, body)
    return "\n".join(lines) + "\n"


def completion_script(shell: str) -> str:
    env = dict(os.environ, _REGCTL_COMPLETE=f"source_{shell}")
    done = subprocess.run(
        [sys.executable, "-m", "regctl.main"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout if done.stdout.endswith("\n") else done.stdout + "\n"


def generate() -> tuple[dict[Path, str], list[str]]:
    from regctl import __version__ as regctl_version
    from regctl.main import app as regctl_app

    files: dict[Path, str] = {}
    notes: list[str] = []
    for shell, filename in COMPLETIONS.items():
        files[ROOT / "completions" / filename] = completion_script(shell)
    files[ROOT / "man" / "regctl.1"] = man_page(
        regctl_app,
        "regctl",
        1,
        regctl_version,
        "operate regd and any OCI registry",
        REGCTL_EXTRA,
    )
    try:
        from regd import __version__ as regd_version
        from regd.cli import app as regd_app
    except ImportError as exc:
        notes.append(f"regd.cli cannot be imported ({exc}); man/regd.8 not generated")
    else:
        files[ROOT / "man" / "regd.8"] = man_page(
            regd_app, "regd", 8, regd_version, "a container registry (OCI Distribution)", REGD_EXTRA
        )
    return files, notes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--check", action="store_true", help="exit 1 if a generated file is missing or stale"
    )
    options = parser.parse_args()
    files, notes = generate()
    for note in notes:
        print(f"gendocs: {note}", file=sys.stderr)
    stale = []
    for path, text in files.items():
        current = path.read_text() if path.exists() else None
        if current == text:
            continue
        stale.append(path)
        if not options.check:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            print(f"gendocs: wrote {path.relative_to(ROOT)}")
    if options.check and stale:
        names = ", ".join(str(p.relative_to(ROOT)) for p in stale)
        print(f"gendocs: stale or missing: {names}; run scripts/gendocs.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
