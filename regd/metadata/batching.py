"""Group commit for SQLite: one writer thread, several write transactions per commit.

SQLite admits one writer at a time and each commit is an fsync. Under concurrent pushes
every request's small transaction queued for the lock and paid its own fsync. Here the
process's writes go to one thread that takes everything queued, runs the functions in one
transaction and commits once. Should one of them fail, the transaction is rolled back and
the batch run again with each function in a savepoint, so the failing one rolls back
alone. Callers are answered only after the commit: a success still means the rows are on
disk.

The writer must outlive whatever goes wrong around it (a lock file that cannot be opened,
descriptors run out, the database file gone): such a failure fails the batch in hand and
the thread carries on, and should the thread die all the same, the next write starts
another. No caller waits on it longer than `wait_timeout`.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio
from sqlalchemy import Connection, Engine
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from regd.metadata.dbfile import DatabaseFile

MAX_BATCH = 64
MAX_ATTEMPTS = 5
# How long a write waits for the writer by default (seconds) before it fails.
WAIT_TIMEOUT = 30.0

log = logging.getLogger("regd.metadata")


class Retry(Exception):
    """Raised by a write function to be run again, in a later transaction."""


class WriterFault(RuntimeError):
    """The writer could not run a batch for a reason of its own, not of the operations'."""


class _OpFailed(Exception):
    """An operation raised in a batch run without savepoints: the batch must roll back."""

    def __init__(self, op: WriteOp, exc: BaseException) -> None:
        super().__init__(repr(exc))
        self.op = op
        self.exc = exc


@dataclass(eq=False)
class WriteOp:
    fn: Callable[[Connection], Any]
    token: trio.lowlevel.TrioToken
    done: trio.Event = field(default_factory=trio.Event)
    result: Any = None
    error: BaseException | None = None
    attempts: int = 0
    # QUEUED until the writer takes it (RUNNING) or its caller gives up first (ABANDONED);
    # changed only under the batcher's _state_lock.
    state: str = "queued"
    answered: bool = False


QUEUED, RUNNING, ABANDONED = "queued", "running", "abandoned"


class WriteBatcher:
    def __init__(
        self,
        engine: Engine,
        wrap_error: Callable[[BaseException], BaseException],
        retryable: Callable[[DBAPIError], bool],
        lock_path: Path | None = None,
        *,
        database: DatabaseFile | None = None,
        wait_timeout: float = WAIT_TIMEOUT,
    ) -> None:
        self._engine = engine
        self._lock_path = lock_path
        self._database = database
        self._wait_timeout = wait_timeout
        self._state_lock = threading.Lock()
        # What the writer is blocked on right now, for the error of a caller who gave up.
        self._blocked_on: str | None = None
        self._wrap = wrap_error
        self._retryable = retryable
        self._queue: queue.SimpleQueue[WriteOp | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        # Whether the batch in hand took the stop sentinel from the queue: nothing more
        # may join it, and the writer stops after it.
        self._stop_taken = False
        # The writer thread's own connection, kept from one batch to the next: checking
        # one out of the pool and back cost as much as a small batch's statements.
        self._conn: Connection | None = None

    async def run(self, fn: Callable[[Connection], Any]) -> Any:
        op = WriteOp(fn, trio.lowlevel.current_trio_token())
        self._ensure_thread()
        self._queue.put(op)
        # A write the writer has begun happens whether or not the caller is still
        # waiting, so cancellation does not cut the wait short; the timeout does.
        with trio.CancelScope(shield=True), trio.move_on_after(self._wait_timeout):
            await op.done.wait()
        if not op.answered:
            fault = self._gave_up(op)
            if fault is not None:
                raise self._wrap(fault)
        if op.error is not None:
            raise op.error
        return op.result

    def _gave_up(self, op: WriteOp) -> WriterFault | None:
        """Withdraw an operation the writer has not begun; the error for its caller."""
        with self._state_lock:
            if op.answered:
                # Answered just as the wait ran out.
                return None
            begun = op.state == RUNNING
            if op.state == QUEUED:
                op.state = ABANDONED
        blocked = self._blocked_on
        thread = self._thread
        if blocked is not None:
            cause = blocked
        elif thread is None or not thread.is_alive():
            cause = "the writer thread is not running"
        else:
            cause = "the writer is busy with earlier writes"
        outcome = " (the write had begun and may still be applied)" if begun else ""
        return WriterFault(
            f"the database writer did not answer within {self._wait_timeout:g} s: {cause}{outcome}"
        )

    def close(self) -> None:
        with self._start_lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            self._queue.put(None)
            # A writer stuck (on another process's lock, say) must not hold up shutdown;
            # it is a daemon thread and goes with the process.
            thread.join(self._wait_timeout)
            if thread.is_alive():
                log.warning(
                    "the database writer did not stop within %g s: %s",
                    self._wait_timeout,
                    self._blocked_on or "busy",
                )

    def _ensure_thread(self) -> None:
        with self._start_lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._loop, name="regd-sqlite-writer", daemon=True
                )
                self._thread.start()

    def _take_queued(self, batch: list[WriteOp]) -> bool:
        """Add the operations queued now to `batch`, up to MAX_BATCH; True when the stop
        sentinel was among them (it ends the queue: nothing is taken after it)."""
        while len(batch) < MAX_BATCH:
            try:
                nxt = self._queue.get_nowait()
            except queue.Empty:
                return False
            if nxt is None:
                return True
            batch.append(nxt)
        return False

    def _loop(self) -> None:
        me = threading.current_thread()
        try:
            stopping = False
            while not stopping:
                first = self._queue.get()
                if first is None:
                    return
                batch = [first]
                self._stop_taken = self._take_queued(batch)
                try:
                    again = self._execute(batch)
                except BaseException as exc:
                    # Not the operations' doing (those are settled in _execute_locked):
                    # the writer's own means failed. The batch fails and the writer goes
                    # on, with a new connection and a new lock file descriptor next time.
                    self._blocked_on = None
                    self._drop_connection()
                    fault = WriterFault(f"the database writer failed: {_describe(exc)}")
                    for op in batch:
                        if not op.answered:
                            op.error, op.result = self._wrap(fault), None
                            self._answer(op)
                    if not isinstance(exc, Exception):
                        raise
                    continue
                finally:
                    stopping = self._stop_taken
                for op in again:
                    with self._state_lock:
                        op.state = QUEUED
                    self._queue.put(op)
        finally:
            self._drop_connection()
            with self._start_lock:
                # A writer that died lets the next write start another.
                if self._thread is me:
                    self._thread = None

    def _connection(self) -> Connection:
        if self._conn is None:
            if self._database is not None:
                # Connecting to a path whose file is gone would create an empty database.
                self._database.check()
            conn = self._engine.connect()
            conn.execution_options(regd_write=True)
            self._conn = conn
            if self._database is not None:
                self._database.remember()
        return self._conn

    def _drop_connection(self) -> None:
        """Close the writer's connection, after a failure or on the way out."""
        conn, self._conn = self._conn, None
        if conn is not None:
            # A connection that failed may fail to close as well; it is gone either way.
            with contextlib.suppress(SQLAlchemyError):
                conn.close()

    @contextlib.contextmanager
    def _process_lock(self) -> Iterator[None]:
        """Take turns with the other processes on this database.

        SQLite's own lock makes a waiting process sleep and poll (up to 100 ms a time),
        which starved writers when several workers share a database; a blocking flock
        hands the turn over as soon as the holder lets go.
        """
        if self._lock_path is None:
            yield
            return
        try:
            fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise WriterFault(
                f"cannot open the lock file {self._lock_path}: {exc.strerror or exc}"
            ) from exc
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                # Callers stop waiting after wait_timeout; the writer waits on, so that
                # it takes its turn as soon as the holder lets go.
                self._blocked_on = (
                    f"waiting for the lock file {self._lock_path}, which another process holds"
                )
                fcntl.flock(fd, fcntl.LOCK_EX)
                self._blocked_on = None
            yield
        finally:
            os.close(fd)

    def _execute(self, batch: list[WriteOp]) -> list[WriteOp]:
        """Run a batch in one transaction; returns the operations to run again."""
        with self._process_lock():
            if not self._stop_taken:
                # Group commit across processes: what was queued while this writer
                # waited for another process's commit joins this batch rather than
                # waiting for a commit of its own after it. `batch` is the caller's
                # list, so a failure from here on fails these operations too.
                self._stop_taken = self._take_queued(batch)
            # Taken only now that the writer holds the lock: a caller who gave up while
            # the writer waited for it must not see its write happen after all.
            with self._state_lock:
                for op in batch:
                    if op.state == QUEUED:
                        op.state = RUNNING
                    elif op.state == ABANDONED:
                        op.answered = True
            batch = [op for op in batch if op.state == RUNNING]
            if not batch:
                return []
            return self._execute_locked(batch)

    def _execute_locked(self, batch: list[WriteOp]) -> list[WriteOp]:
        # Optimistic first: the whole batch in one transaction, no savepoints, since a
        # savepoint per operation costs about as much as a small operation itself. Only
        # when an operation raises is the batch run again with each one in a savepoint,
        # so that the failing one still fails alone.
        isolate = False
        attempt = 1
        while True:
            for op in batch:
                op.error, op.result = None, None
            try:
                again = self._transaction(batch, isolate=isolate)
            except _OpFailed as failed:
                if self._conn is not None and self._conn.invalidated:
                    self._drop_connection()
                if len(batch) > 1:
                    isolate = True
                    continue
                # Alone in its transaction, the operation had it to itself: rolling the
                # transaction back was rolling back just this operation.
                again = self._settle(failed.op, failed.exc)
            except DBAPIError as exc:
                # The transaction as a whole failed (busy, or at commit): nothing of it
                # happened, so every operation may run again, on a new connection.
                self._drop_connection()
                if self._retryable(exc) and attempt < MAX_ATTEMPTS:
                    time.sleep(0.01 * attempt)
                    attempt += 1
                    continue
                self._fail_all(batch, exc)
                again = []
            except SQLAlchemyError as exc:
                self._drop_connection()
                self._fail_all(batch, exc)
                again = []
            break
        retry_now = []
        for op in batch:
            if op in again:
                op.attempts += 1
                if op.attempts < MAX_ATTEMPTS:
                    retry_now.append(op)
                    continue
                op.error = self._wrap(Retry("gave up after repeated conflicts"))
            self._answer(op)
        return retry_now

    def _transaction(self, batch: list[WriteOp], *, isolate: bool) -> list[WriteOp]:
        """Run the batch in one transaction; returns the operations that asked to retry.

        Without `isolate`, the first operation to raise aborts the whole transaction
        (as _OpFailed); with it, each runs in a savepoint and fails alone.
        """
        again: list[WriteOp] = []
        conn = self._connection()
        with conn.begin():
            for op in batch:
                if not isolate:
                    try:
                        op.result = op.fn(conn)
                    except BaseException as exc:
                        raise _OpFailed(op, exc) from exc
                    continue
                savepoint = conn.begin_nested()
                try:
                    op.result = op.fn(conn)
                    savepoint.commit()
                except BaseException as exc:
                    savepoint.rollback()
                    again += self._settle(op, exc)
            if self._database is not None:
                # Last thing before the commit: committing into a removed file would
                # acknowledge writes that are already lost.
                self._database.check()
        return again

    def _settle(self, op: WriteOp, exc: BaseException) -> list[WriteOp]:
        """Record how an operation failed; [op] when it is to run again later."""
        op.result = None
        if isinstance(exc, Retry):
            return [op]
        op.error = self._wrap(exc)
        return []

    def _fail_all(self, batch: list[WriteOp], exc: BaseException) -> None:
        for op in batch:
            op.error, op.result = self._wrap(exc), None

    @staticmethod
    def _answer(op: WriteOp) -> None:
        op.answered = True
        # When the caller's event loop is gone, nobody is waiting for the answer.
        with contextlib.suppress(trio.RunFinishedError):
            op.token.run_sync_soon(op.done.set)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, WriterFault):
        return str(exc)
    if isinstance(exc, OSError) and exc.strerror:
        where = f" ({exc.filename})" if exc.filename else ""
        return f"{exc.strerror}{where}"
    return f"{type(exc).__name__}: {exc}"
