"""The s3 driver's writers: one that appends to a pending file across sessions, one that
writes a new file whole (`new_file`), and what opens them."""

from __future__ import annotations

import builtins
from collections import deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import trio

from regd.storage.base import InvalidOffset, PathNotFound, StorageError
from regd.storage.s3._common import (
    MAX_PART,
    MIN_PART,
    StorageUnavailable,
    _InThread,
    _State,
)

if TYPE_CHECKING:
    from regd.storage.s3._driver import S3Driver

# Parts one writer uploads at once: the body keeps arriving while earlier parts travel,
# and the store works on several. Memory per writer stays within this many chunks.
PARTS_IN_FLIGHT = 3


def _parts_up_to(
    parts: Sequence[tuple[int, str, int]], offset: int
) -> builtins.list[tuple[int, str, int]] | None:
    """The leading parts that hold exactly `offset` bytes, or None when no part ends there."""
    total = 0
    for index, (_, _, size) in enumerate(parts):
        if total == offset:
            return list(parts[:index])
        total += size
    return None


def _open_writer(d: S3Driver, path: str, key: str, offset: int) -> _S3Writer:
    state = d._load_state(key)
    if state is not None:
        if offset > state.size:
            raise InvalidOffset(path, offset)
        if offset == 0:
            # The file is emptied; its old upload goes once the new state is saved.
            return _S3Writer(d, path, key, _State(), persist=True, drop=state.upload)
        if offset == state.size:
            return _S3Writer(d, path, key, state)
        if offset >= state.parts_size:
            state.tail = state.tail[: offset - state.parts_size]
            return _S3Writer(d, path, key, state, persist=True)
        kept = _parts_up_to(state.parts, offset)
        if kept is not None:
            # The cut falls between parts (what a process that died after saving a
            # chunk, before the session recorded it, leaves): the later parts drop.
            cut = _State(state.upload, kept)
            return _S3Writer(d, path, key, cut, persist=True)
        # The cut falls inside a part, whose bytes S3 cannot give back: complete the
        # file and continue it as a plain object (rare: only after an interrupted
        # writer left bytes nobody acknowledged).
        d._complete(key, state)
    head = d._head(key)
    if head is None:
        if offset:
            raise PathNotFound(path)
        return _S3Writer(d, path, key, _State())
    size = int(head["ContentLength"])
    if offset > size:
        raise InvalidOffset(path, offset)
    if offset == 0:
        return _S3Writer(d, path, key, _State(), persist=True, plain=True)
    return _continue_plain(d, path, key, offset, size, head["ETag"])


def _continue_plain(
    d: S3Driver, path: str, key: str, offset: int, size: int, etag: str
) -> _S3Writer:
    """A writer continuing a plain object: its first `offset` bytes become parts by
    server-side copy, and the remainder below a chunk becomes the tail."""
    tail_size = offset % d._chunk
    copied = offset - tail_size
    state = _State()
    if copied:
        state.upload = d._start_upload(key)
        piece = max(d._chunk, (MAX_PART // d._chunk) * d._chunk)
        try:
            for number, start in enumerate(range(0, copied, piece), 1):
                end = min(start + piece, copied)
                result = d._call(
                    "upload_part_copy",
                    Key=key,
                    UploadId=state.upload,
                    PartNumber=number,
                    CopySource={"Bucket": d.bucket, "Key": key},
                    CopySourceRange=f"bytes={start}-{end - 1}",
                    CopySourceIfMatch=etag,
                )
                state.parts.append((number, result["CopyPartResult"]["ETag"], end - start))
        except BaseException:
            d._abort(key, state.upload)
            raise
    if tail_size:
        tail = d._get(key, f"bytes={copied}-{offset - 1}")
        if tail is None or len(tail) != tail_size:
            if state.upload:
                d._abort(key, state.upload)
            raise StorageError(f"{path} changed while a writer opened it")
        state.tail = tail
    return _S3Writer(
        d,
        path,
        key,
        state,
        persist=offset < size,
        plain=True,
        created_upload=state.upload,
    )


def _publish(d: S3Driver, key: str, state: _State) -> None:
    """Put a new file in place: one PUT when it is small, else complete its upload."""
    from botocore.exceptions import ClientError

    if state.upload is None:
        d._call("put_object", Key=key, Body=state.tail, **d._extra)
        return
    try:
        d._call(
            "complete_multipart_upload",
            Key=key,
            UploadId=state.upload,
            MultipartUpload={
                "Parts": [{"PartNumber": n, "ETag": etag} for n, etag, _ in state.parts]
            },
        )
    except ClientError as exc:
        if str(exc.response.get("Error", {}).get("Code")) != "NoSuchUpload":
            raise
        # A complete whose answer was lost (a timeout, a reset) is sent again by botocore's
        # retries, and the second one finds the upload gone because the first made the
        # object: the file is in place, whole.
        head = d._head(key)
        if head is not None and int(head["ContentLength"]) == state.size:
            return
        # Aborted under us: a delete of this very path (a sweep of an unreferenced
        # copy) aborts the uploads at its key. Nothing was published; try again.
        raise StorageUnavailable(f"{key}: the upload was aborted; try again") from None


class _S3Writer:
    """Appends to a pending file; each full chunk goes up as a part as soon as it is
    buffered, while the next ones arrive, and `commit` saves the state that makes them
    part of the file.

    `persist`: the file as opened differs from the stored one (cut short, or emptied), so
    a cancel still saves the opening state. `plain`: a plain object is being turned into
    a pending file and is deleted once the state is saved. `drop`: an upload the saved
    state replaces. `created_upload`: one this writer started (aborted if it ends
    without saving)."""

    def __init__(
        self,
        driver: S3Driver,
        path: str,
        key: str,
        state: _State,
        *,
        persist: bool = False,
        plain: bool = False,
        drop: str | None = None,
        created_upload: str | None = None,
    ) -> None:
        self._driver = driver
        self._path = path
        self._key = key
        self._opening = _State(state.upload, list(state.parts), state.tail)
        self._upload = state.upload
        self._parts = list(state.parts)
        self._sending: deque[tuple[int, int, _InThread[str]]] = deque()
        self._buffer = bytearray(state.tail)
        self._parts_size = state.parts_size
        self._persist = persist
        self._plain = plain
        self._drop = drop
        self._created = created_upload
        self._closed = False

    @property
    def size(self) -> int:
        return self._parts_size + len(self._buffer)

    async def write(self, data: bytes, also: Callable[[bytes], object] | None = None) -> None:
        if self._closed:
            raise StorageError("write on a closed writer")
        if also is not None:
            # Parts leave from threads of their own; this is the one hop the piece makes.
            await trio.to_thread.run_sync(also, data)
        self._buffer += data
        chunk = self._driver._chunk
        while len(self._buffer) >= chunk:
            # One copy of the piece (a slice of the bytearray would be a second).
            with memoryview(self._buffer) as view:
                piece = bytes(view[:chunk])
            del self._buffer[:chunk]
            await self._launch(piece)

    async def _launch(self, piece: bytes) -> None:
        """Start uploading `piece` as the next part, once fewer than PARTS_IN_FLIGHT are
        on their way. Its thread holds one of the driver's connection slots."""
        d = self._driver
        if self._upload is None:
            self._upload = self._created = await d._run(self._path, d._start_upload, self._key)
        while len(self._sending) >= PARTS_IN_FLIGHT:
            await self._settle()
        number = len(self._parts) + len(self._sending) + 1
        call = await d._start(self._path, d._upload_part, self._key, self._upload, number, piece)
        self._sending.append((number, len(piece), call))
        self._parts_size += len(piece)

    async def _settle(self) -> None:
        """Wait for the oldest part in flight and record it (parts stay in order)."""
        number, size, call = self._sending[0]
        await call.done.wait()
        self._sending.popleft()
        self._parts.append((number, await call.wait(), size))

    async def _drain(self) -> None:
        """Wait until no part of this writer is in flight, whatever became of them."""
        while self._sending:
            await self._sending.popleft()[2].done.wait()

    def _save(self, state: _State) -> None:
        d = self._driver
        d._save_state(self._key, state)
        if self._plain:
            d._delete_keys([self._key])
        if self._drop and self._drop != state.upload:
            d._abort(self._key, self._drop)

    async def commit(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            while self._sending:
                await self._settle()
            if len(self._buffer) >= MIN_PART:
                # Big enough to be a part: sent now, the saved state stays a few bytes
                # that the next writer reads back instead of megabytes of tail.
                piece = bytes(self._buffer)
                self._buffer.clear()
                await self._launch(piece)
                await self._settle()
        except BaseException:
            with trio.CancelScope(shield=True):
                await self._drain()
                await self._driver._run(self._path, self._rollback)
            raise
        state = _State(self._upload, self._parts, bytes(self._buffer))
        await self._driver._run(self._path, self._save, state)

    def _rollback(self) -> None:
        d = self._driver
        if self._persist:
            self._save(self._opening)
        if self._created and self._created != self._opening.upload:
            d._abort(self._key, self._created)

    async def cancel(self) -> None:
        if self._closed:
            return
        self._closed = True
        # Shielded: a cancelled request must still roll its parts back, and only once
        # no part of it is still being uploaded (the threads end within the timeouts).
        with trio.CancelScope(shield=True):
            await self._drain()
            await self._driver._run(self._path, self._rollback)


class _S3NewFile(_S3Writer):
    """A file written to its own key as a multipart upload and completed at `commit`: S3
    shows no part of it before, and nothing is copied after. Nothing is saved between
    requests (no state object): the file is written by one writer, from start to end."""

    async def commit(self) -> None:
        if self._closed:
            return
        self._closed = True
        d = self._driver
        try:
            while self._sending:
                await self._settle()
            if self._upload is not None and self._buffer:
                # The last part may be of any size.
                piece = bytes(self._buffer)
                self._buffer.clear()
                await self._launch(piece)
                await self._settle()
            state = _State(self._upload, self._parts, bytes(self._buffer))
            await d._run(self._path, _publish, d, self._key, state)
        except BaseException:
            with trio.CancelScope(shield=True):
                await self._drain()
                await d._run(self._path, self._rollback)
            raise
