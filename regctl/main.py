"""The regctl command tree, and `main()`: the one place errors become an exit code.

Exit codes: 0 success, 1 failure, 2 usage error.
"""

from __future__ import annotations

import os
import sys
import traceback
from typing import Annotated

import typer

from regctl import __version__
from regctl.commands import (
    audit,
    auth,
    blob,
    cache,
    copy,
    daemon,
    delete,
    events,
    inspect,
    listing,
    maintenance,
    manifest,
    storage,
    tokens,
    users,
)
from regctl.runtime import CommandError, Globals
from regd.client import AuthError, ClientError
from regd.client.tasks import first_error

app = typer.Typer(
    name="regctl",
    # Explicit, as typer's default changed between versions: help text is rich text, so a
    # literal "[" that could open a tag is written "\\[".
    rich_markup_mode="rich",
    help="Operate regd and any OCI registry: list, inspect, copy, delete, run the daemon.",
    no_args_is_help=True,
    add_completion=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)

_debug_requested = False
_subcommand: str | None = None


def _version(value: bool) -> None:
    if value:
        typer.echo(f"regctl {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    ctx: typer.Context,
    debug: Annotated[
        bool, typer.Option("--debug", help="Show a traceback when a command fails.")
    ] = False,
    plain_http: Annotated[
        bool,
        typer.Option(
            "--plain-http",
            envvar="REGCTL_PLAIN_HTTP",
            help="Use HTTP for every registry (loopback and localhost always use it).",
        ),
    ] = False,
    insecure: Annotated[
        bool,
        typer.Option(
            "--insecure",
            envvar="REGCTL_INSECURE",
            help="Do not verify registries' TLS certificates.",
        ),
    ] = False,
    ca_cert: Annotated[
        str | None,
        typer.Option(
            "--ca-cert",
            envvar="REGCTL_CA_CERT",
            metavar="FILE",
            help="Also trust the CA certificates in FILE (PEM) besides the system's.",
        ),
    ] = None,
    admin_token: Annotated[
        str | None,
        typer.Option(
            "--admin-token",
            envvar="REGCTL_ADMIN_TOKEN",
            metavar="TOKEN",
            help="regd's admin_token for gc, du, prune, rm-repo, verify and "
            "import-registry2 (a regd without one answers loopback clients only).",
            show_default=False,
        ),
    ] = None,
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    r"""Operate regd and any OCI registry.

    A reference is [HOST[:PORT]/]REPO[:TAG]\[@DIGEST], as docker spells it (a docker://
    prefix is accepted). A reference without a host means the local regd, found in this
    order: $REGCTL_REGISTRY; the regd that `regctl start` runs for $REGD_DATA_DIR, for the
    --data-dir of the latest `regctl start`, or for ~/.local/share/regd; else
    127.0.0.1:5000, however regd was started there.
    """
    global _debug_requested, _subcommand
    _debug_requested = _debug_requested or debug
    _subcommand = ctx.invoked_subcommand
    ctx.obj = Globals(
        debug=debug,
        plain_http=plain_http,
        insecure=insecure,
        ca_cert=ca_cert,
        admin_token=admin_token,
    )


# Daemon control, then reading, then writing, then storage lifecycle.
daemon.register(app)
auth.register(app)
listing.register(app)
inspect.register(app)
manifest.register(app)
blob.register(app)
copy.register(app)
delete.register(app)
storage.register(app)
cache.register(app)
maintenance.register(app)
# Accounts, machine tokens and the audit trail of a regd.
users.register(app)
tokens.register(app)
audit.register(app)
events.register(app)


def _fail(message: str, code: int) -> int:
    first = message.strip().splitlines()[0] if message.strip() else "unknown error"
    sys.stderr.write(f"regctl: error: {first}\n")
    return code


def _auth_hint(exc: AuthError) -> str:
    """What cures a refusal: regd's admin API takes its own token, not registry logins."""
    path = "/" + exc.url.split("://", 1)[-1].split("/", 1)[-1]
    if path.startswith("/admin/"):
        return " (give regd's admin token: --admin-token TOKEN or $REGCTL_ADMIN_TOKEN)"
    host = exc.url.split("://", 1)[-1].split("/", 1)[0]
    return f" (check credentials: regctl login {host})"


def main(argv: list[str] | None = None) -> int:
    global _debug_requested, _subcommand
    args = list(sys.argv[1:] if argv is None else argv)
    _debug_requested = "--debug" in args or os.environ.get("REGCTL_DEBUG", "") not in ("", "0")
    _subcommand = None
    command = typer.main.get_command(app)
    try:
        try:
            result = command.main(args=args, prog_name="regctl", standalone_mode=False)
        except BaseExceptionGroup as group:
            raise first_error(group) from group
    except typer.TyperException as exc:
        # typer has already printed the help for a bare group; the class is private.
        if type(exc).__name__ == "NoArgsIsHelpError":
            return 2
        message = exc.format_message()
        if exc.exit_code == 2:
            ctx = getattr(exc, "ctx", None)
            where = getattr(ctx, "command_path", None) or " ".join(
                p for p in ("regctl", _subcommand) if p
            )
            message += f" (see '{where} --help')"
        return _fail(message, exc.exit_code)
    except typer.Abort:
        return _fail("aborted", 1)
    except KeyboardInterrupt:
        sys.stderr.write("regctl: interrupted\n")
        return 130
    except (ClientError, CommandError, OSError) as exc:
        if _debug_requested:
            traceback.print_exc()
        message = str(exc)
        if isinstance(exc, OSError) and exc.filename:
            message = f"{exc.filename}: {exc.strerror}"
        if isinstance(exc, AuthError):
            message += _auth_hint(exc)
        return _fail(message, 1)
    except Exception as exc:
        if _debug_requested:
            traceback.print_exc()
            return _fail(f"{type(exc).__name__}: {exc}", 1)
        return _fail(f"unexpected {type(exc).__name__}: {exc} (run with --debug for details)", 1)
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
