"""A nursery that fails with the task's own error rather than an exception group.

Trio wraps whatever escapes a nursery in a (Base)ExceptionGroup. The callers here (regctl
turning an error into one line, regd's API mapping an error to its answer, the registry
client's copy pipeline) want the first thing that went wrong; the sibling tasks it
cancelled are noise. When several tasks failed for real, the group stays attached as the
error's context, so a traceback still shows every one.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio


def _leaves(error: BaseException) -> list[BaseException]:
    if not isinstance(error, BaseExceptionGroup):
        return [error]
    return [leaf for inner in error.exceptions for leaf in _leaves(inner)]


def first_error(error: BaseException) -> BaseException:
    """The most telling leaf of a (possibly nested) exception group: an interrupt first,
    then the first ordinary error, then anything but trio's cancellation."""
    leaves = _leaves(error)
    for wanted in (KeyboardInterrupt, Exception):
        for leaf in leaves:
            if isinstance(leaf, wanted):
                return leaf
    for leaf in leaves:
        if not isinstance(leaf, trio.Cancelled):
            return leaf
    return leaves[0] if leaves else error


@asynccontextmanager
async def task_group() -> AsyncIterator[trio.Nursery]:
    try:
        async with trio.open_nursery() as nursery:
            try:
                yield nursery
            except BaseException:
                # Cancelling here rather than in trio's nursery exit keeps the sleeping
                # children's Cancelled out of a frame that holds it (trio's
                # Nursery._nested_child_finished keeps the group of them in a local, a
                # cycle through the failing request's frames).
                nursery.cancel_scope.cancel()
                raise
    except BaseExceptionGroup as group:
        error = first_error(group)
        hidden = sum(not isinstance(e, trio.Cancelled) for e in _leaves(group)) <= 1
        # Keep the error's own __cause__; hide the group unless it holds other failures.
        error.__suppress_context__ = hidden
        context = error.__context__
        try:
            # Not `from`: the cause chain is the error's own, see above.
            raise error
        finally:
            # The group holds the error, and this frame (in the error's traceback) would
            # hold both: reference cycles that keep everything the failed request touched
            # (its connection among it) alive until a full garbage collection. A hidden
            # group goes back to being the error's context it was before.
            if hidden:
                error.__context__ = context
            del error, context
