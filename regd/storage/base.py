"""The storage-driver protocol: bytes at paths, nothing more.

A driver knows nothing of digests, tags or repositories; the registry layer decides which
path holds what (see `layout`). The protocol is shaped so an object store fits it:
a writer may be reopened later to append (multipart upload parts), is made durable and
visible by `commit`, and `redirect_url` lets a driver hand reads to the store directly.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from regd.errors import BackendError


class StorageError(BackendError):
    """Base of every storage-driver failure."""

    kind = "storage"


class StorageFull(StorageError):
    """The volume or the quota holding the data is full; frees up when space is freed."""

    retry_after = 60

    def __init__(self, path: str, cause: str) -> None:
        super().__init__(f"no space left for {path}: {cause}")
        self.path = path


class PathNotFound(StorageError):
    def __init__(self, path: str) -> None:
        super().__init__(f"no such path: {path}")
        self.path = path


class InvalidPath(StorageError):
    def __init__(self, path: str) -> None:
        super().__init__(f"invalid storage path: {path!r}")
        self.path = path


class InvalidOffset(StorageError):
    def __init__(self, path: str, offset: int) -> None:
        super().__init__(f"invalid offset {offset} for {path}")
        self.path = path
        self.offset = offset


@dataclass(frozen=True, slots=True)
class FileInfo:
    path: str
    size: int
    modified: float
    is_dir: bool


@dataclass(frozen=True, slots=True)
class Space:
    """Room on the volume that holds the data, in bytes."""

    # What regd may still write: without the blocks a filesystem keeps for root.
    free: int
    total: int


@runtime_checkable
class Reader(Protocol):
    async def read(self, max_bytes: int) -> bytes:
        """Up to `max_bytes`; b"" at the end."""
        ...

    async def aclose(self) -> None: ...


@runtime_checkable
class FileBacked(Protocol):
    """A reader of a local file (optional): lets the server send its bytes by sendfile."""

    def file_position(self) -> tuple[int, int]:
        """The open file's descriptor and the offset the next read starts at."""
        ...


@runtime_checkable
class Writer(Protocol):
    @property
    def size(self) -> int:
        """Bytes in the file, including those present before this writer opened it."""
        ...

    async def write(self, data: bytes, also: Callable[[bytes], object] | None = None) -> None:
        """Append `data`. `also(data)` runs too (a running hash), wherever the writer does
        its work: a writer that hands its writes to a worker thread calls it in the same
        hand-off, which costs the event loop one hop per piece instead of two."""
        ...

    async def commit(self) -> None:
        """Make everything written durable; the writer is closed afterwards."""
        ...

    async def cancel(self) -> None:
        """Discard what this writer wrote: the file returns to the size it was opened at
        (a file this writer created disappears). The writer is closed afterwards."""
        ...


class StorageDriver(Protocol):
    """Paths are '/'-separated, relative to the driver's root, without '.' or '..'."""

    name: str

    async def get_content(self, path: str) -> bytes:
        """The whole content of a small file (link files, small metadata)."""
        ...

    async def put_content(self, path: str, data: bytes) -> None:
        """Replace a small file atomically and durably."""
        ...

    async def reader(self, path: str, offset: int = 0) -> Reader:
        """Open `path` for streaming from `offset`; raises PathNotFound at once."""
        ...

    async def writer(self, path: str, *, offset: int = 0) -> Writer:
        """Open a writer that continues the file at `offset`.

        Offset 0 starts a new (or emptied) file. A larger offset continues an existing
        file, first dropping anything past it (bytes an interrupted writer left behind);
        an offset beyond the file's size raises InvalidOffset, a missing file PathNotFound.
        """
        ...

    async def new_file(self, path: str, *, staging: str) -> Writer:
        """A writer for a file that appears at `path` whole, when committed, replacing
        any file there atomically; before that nothing at `path` changes, and a cancel
        leaves no trace there.

        `staging` is a path the caller owns (and removes afterwards) where a driver with
        an atomic rename writes the bytes before moving them in place; an object store
        writes them to `path` itself, invisible until committed, and so saves copying
        every byte once more.
        """
        ...

    async def stat(self, path: str) -> FileInfo: ...

    async def list(self, path: str) -> Sequence[str]:
        """Names of the direct children of a directory, sorted."""
        ...

    async def move(self, source: str, destination: str) -> None:
        """Atomically and durably rename; an existing destination is replaced."""
        ...

    async def delete(self, path: str) -> None:
        """Delete a file or a whole directory tree; PathNotFound when absent."""
        ...

    async def delete_many(self, paths: Sequence[str]) -> None:
        """Delete several files or trees at once; absent ones are ignored. (Object stores
        delete up to a thousand keys per request; here it saves a call per blob.)"""
        ...

    async def redirect_url(self, path: str) -> str | None:
        """A URL clients may fetch `path` from directly, or None to have regd serve it."""
        ...

    async def purge_incomplete(self, older_than: float) -> int:
        """Free what writers began before `older_than` (UNIX time) and left unfinished,
        where no file refers to it: an object store's multipart uploads whose process died
        before saving them. Such leftovers are not files, so no listing shows them and
        only the driver can find them. Returns how many it freed (0 for most drivers)."""
        ...

    async def free_space(self) -> Space | None:
        """Free and total bytes where the data lives, or None when the driver cannot tell
        (an object store has no fixed size)."""
        ...


def check_path(path: str) -> str:
    """Reject paths that could escape a driver's root."""
    if (
        not path
        or path.startswith("/")
        or "\\" in path
        or "\x00" in path
        or any(part in ("", ".", "..") for part in path.split("/"))
    ):
        raise InvalidPath(path)
    return path


class StagedWriter:
    """`new_file` for a driver that renames atomically: the bytes go to `staging`, and
    commit moves them to `path`."""

    def __init__(self, driver: StorageDriver, inner: Writer, staging: str, path: str) -> None:
        self._driver = driver
        self._inner = inner
        self._staging = staging
        self._path = path

    @property
    def size(self) -> int:
        return self._inner.size

    async def write(self, data: bytes, also: Callable[[bytes], object] | None = None) -> None:
        await self._inner.write(data, also)

    async def commit(self) -> None:
        await self._inner.commit()
        await self._driver.move(self._staging, self._path)

    async def cancel(self) -> None:
        await self._inner.cancel()
