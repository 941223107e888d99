"""An in-memory driver for tests: the same contract, no disk."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence

from regd.storage.base import (
    FileInfo,
    InvalidOffset,
    PathNotFound,
    Space,
    StagedWriter,
    StorageError,
    check_path,
)


class _MemReader:
    def __init__(self, data: bytes, offset: int) -> None:
        self._data = memoryview(data)
        self._pos = offset

    async def read(self, max_bytes: int) -> bytes:
        chunk = bytes(self._data[self._pos : self._pos + max_bytes])
        self._pos += len(chunk)
        return chunk

    async def aclose(self) -> None:
        return None


class _MemWriter:
    def __init__(self, driver: MemoryDriver, path: str, start: bytes, created: bool) -> None:
        self._driver = driver
        self._path = path
        self._start_len = len(start)
        self._created = created
        self._buffer = bytearray(start)
        self._closed = False

    @property
    def size(self) -> int:
        return len(self._buffer)

    async def write(self, data: bytes, also: Callable[[bytes], object] | None = None) -> None:
        if self._closed:
            raise StorageError("write on a closed writer")
        if also is not None:
            also(data)
        self._buffer += data
        # Visible while open, as a file on disk would be.
        self._driver._files[self._path] = (bytes(self._buffer), time.time())

    async def commit(self) -> None:
        if not self._closed:
            self._closed = True
            self._driver._files[self._path] = (bytes(self._buffer), time.time())

    async def cancel(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._created:
            self._driver._files.pop(self._path, None)
        else:
            self._driver._files[self._path] = (bytes(self._buffer[: self._start_len]), time.time())


class MemoryDriver:
    name = "memory"

    def __init__(self) -> None:
        self._files: dict[str, tuple[bytes, float]] = {}

    def _get(self, path: str) -> bytes:
        try:
            return self._files[check_path(path)][0]
        except KeyError:
            raise PathNotFound(path) from None

    def _is_dir(self, path: str) -> bool:
        prefix = path + "/"
        return any(p.startswith(prefix) for p in self._files)

    async def get_content(self, path: str) -> bytes:
        return self._get(path)

    async def put_content(self, path: str, data: bytes) -> None:
        self._files[check_path(path)] = (bytes(data), time.time())

    async def reader(self, path: str, offset: int = 0) -> _MemReader:
        data = self._get(path)
        if offset < 0 or offset > len(data):
            raise InvalidOffset(path, offset)
        return _MemReader(data, offset)

    async def writer(self, path: str, *, offset: int = 0) -> _MemWriter:
        check_path(path)
        if offset < 0:
            raise InvalidOffset(path, offset)
        existing = self._files.get(path)
        if offset == 0:
            self._files[path] = (b"", time.time())
            return _MemWriter(self, path, b"", created=existing is None)
        if existing is None:
            raise PathNotFound(path)
        if offset > len(existing[0]):
            raise InvalidOffset(path, offset)
        start = existing[0][:offset]
        self._files[path] = (start, time.time())
        return _MemWriter(self, path, start, created=False)

    async def new_file(self, path: str, *, staging: str) -> StagedWriter:
        check_path(path)
        return StagedWriter(self, await self.writer(staging), staging, path)

    async def stat(self, path: str) -> FileInfo:
        check_path(path)
        if path in self._files:
            data, modified = self._files[path]
            return FileInfo(path, len(data), modified, False)
        if self._is_dir(path):
            return FileInfo(path, 0, 0.0, True)
        raise PathNotFound(path)

    async def list(self, path: str) -> list[str]:
        check_path(path)
        prefix = path + "/"
        names = {p[len(prefix) :].split("/", 1)[0] for p in self._files if p.startswith(prefix)}
        if not names:
            raise PathNotFound(path)
        return sorted(names)

    async def move(self, source: str, destination: str) -> None:
        check_path(destination)
        data = self._get(source)
        if source == destination:
            return
        self._files[destination] = (data, time.time())
        del self._files[source]

    async def delete(self, path: str) -> None:
        check_path(path)
        prefix = path + "/"
        doomed = [p for p in self._files if p == path or p.startswith(prefix)]
        if not doomed:
            raise PathNotFound(path)
        for p in doomed:
            del self._files[p]

    async def delete_many(self, paths: Sequence[str]) -> None:
        for path in paths:
            with contextlib.suppress(PathNotFound):
                await self.delete(path)

    async def redirect_url(self, path: str) -> str | None:
        return None

    async def purge_incomplete(self, older_than: float) -> int:
        # An unfinished file is a file: the upload purge finds it by listing.
        return 0

    async def free_space(self) -> Space | None:
        # Bounded by the process's memory, which says nothing about room for blobs.
        return None
