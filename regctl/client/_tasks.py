"""A nursery that fails with the task's own error rather than an exception group.

Callers (and people reading an error line) care about the first thing that went wrong;
the sibling tasks it cancelled are noise.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio


def first_error(error: BaseException) -> BaseException:
    """The most telling leaf of a (possibly nested) exception group."""
    leaves: list[BaseException] = []

    def walk(exc: BaseException) -> None:
        if isinstance(exc, BaseExceptionGroup):
            for inner in exc.exceptions:
                walk(inner)
        else:
            leaves.append(exc)

    walk(error)
    for kind in (KeyboardInterrupt, Exception):
        for leaf in leaves:
            if isinstance(leaf, kind):
                return leaf
    return leaves[0] if leaves else error


@asynccontextmanager
async def task_group() -> AsyncIterator[trio.Nursery]:
    try:
        async with trio.open_nursery() as nursery:
            yield nursery
    except BaseExceptionGroup as group:
        raise first_error(group) from group
