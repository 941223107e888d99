"""Rendering for people (rich, colours on a terminal) and for scripts (`--json`)."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from rich.console import Console
from rich.table import Table

from regd.oci import mediatypes as mt

_SHORT_TYPES = {
    mt.OCI_MANIFEST: "oci manifest",
    mt.OCI_INDEX: "oci index",
    mt.DOCKER_MANIFEST: "docker manifest",
    mt.DOCKER_MANIFEST_LIST: "docker manifest list",
}


def stdout() -> Console:
    return Console(highlight=False, soft_wrap=True)


def stderr() -> Console:
    return Console(stderr=True, highlight=False, soft_wrap=True)


def emit_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2) + "\n")


def short_type(media_type: str) -> str:
    return _SHORT_TYPES.get(media_type, media_type)


def human_size(size: int | None) -> str:
    if size is None:
        return "-"
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"


def iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment is not None else None


def iso_from_epoch(seconds: float | None) -> str | None:
    """regd's admin API gives times as epoch seconds; regctl shows ISO 8601 everywhere."""
    return iso(datetime.fromtimestamp(seconds, UTC)) if seconds is not None else None


def count(n: int, noun: str, plural: str | None = None) -> str:
    """`1 tag`, `2 tags`."""
    return f"{n} {noun if n == 1 else plural or noun + 's'}"


def table(
    headers: Sequence[str], rows: Sequence[Sequence[str]], *, title: str | None = None
) -> None:
    """A rich table on a terminal; plain aligned columns (greppable, never wrapped) otherwise."""
    console = stdout()
    if console.is_terminal:
        grid = Table(title=title, header_style="bold cyan", show_edge=False)
        for header in headers:
            grid.add_column(header, overflow="fold")
        for row in rows:
            grid.add_row(*row)
        console.print(grid)
        return
    if title:
        sys.stdout.write(title + "\n")
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]
    for row in [list(headers), *rows]:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=True)]
        sys.stdout.write("  ".join(cells).rstrip() + "\n")
