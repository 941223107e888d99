"""hypercorn's keep-alive timer, replaced by one task per connection."""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from typing import Any

import trio
from hypercorn.trio.worker_context import TrioSingleTask
from hypercorn.typing import Event as WorkerEvent
from hypercorn.typing import TaskGroup


class KeepAlive(TrioSingleTask):
    """hypercorn's keep-alive timer, as one task for the connection's whole life.

    hypercorn stops its idle task when a request arrives and starts a new one when the
    answer ends: a lock, a cancellation and a task started and torn down for every
    request, a fifth of the instructions a keep-alive manifest GET cost. This one
    task sleeps while the connection is busy and is woken only by the deadline it is
    moved to when the connection goes idle (or by the server's stop); what happens at
    either is what hypercorn did: an idle connection is closed.
    """

    def __init__(
        self, timeout: float, terminated: WorkerEvent, close: Callable[[], Awaitable[None]]
    ) -> None:
        super().__init__()
        self._timeout = timeout
        self._terminated = terminated
        self._close = close
        # When the idle connection is closed; infinite while a request is under way.
        self._idle_until = math.inf
        # The task's own scope (cancelled when the connection ends) and that of its wait.
        self._life: trio.CancelScope | None = None
        self._wait: trio.CancelScope | None = None

    async def restart(self, task_group: TaskGroup, action: Callable[..., Any]) -> None:
        """The connection went idle (hypercorn's `action` is what `_watch` does)."""
        self._idle_until = trio.current_time() + self._timeout
        if self._life is None:
            self._life = trio.CancelScope()
            task_group.spawn(self._watch, self._life)
        elif self._wait is not None:
            self._wait.deadline = self._idle_until

    async def stop(self) -> None:
        """A request began."""
        self._idle_until = math.inf
        if self._wait is not None:
            self._wait.deadline = math.inf

    def close(self) -> None:
        """The connection is over: the task ends."""
        self._idle_until = math.inf
        if self._life is not None:
            self._life.cancel()

    async def _watch(self, life: trio.CancelScope) -> None:
        with life:
            while True:
                with trio.CancelScope(deadline=self._idle_until) as self._wait:
                    await self._terminated.wait()
                self._wait = None
                # A request may have begun between the deadline and this task's turn.
                idle = self._idle_until != math.inf
                stopping = self._terminated_now()
                if idle and (stopping or trio.current_time() >= self._idle_until):
                    break
                if stopping:
                    # Busy: hypercorn closes the connection once the answer is complete.
                    return
        if life.cancel_called:
            return
        with trio.CancelScope(shield=True):
            await self._close()

    def _terminated_now(self) -> bool:
        is_set: Callable[[], bool] | None = getattr(self._terminated, "is_set", None)
        return is_set is not None and is_set()
