"""The default driver: files under one root directory.

Durability rules: data is fsynced before it becomes visible under its final name, and
every rename is followed by an fsync of the directory that holds the new name.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import io
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import cast

import trio

from regd.storage.base import (
    FileInfo,
    InvalidOffset,
    PathNotFound,
    Space,
    StagedWriter,
    StorageError,
    StorageFull,
    check_path,
)

# Written bytes are handed to the disk in pieces of this size while a file is written.
WRITEBACK_CHUNK = 8 * 1024 * 1024
_SYNC_FILE_RANGE_WRITE = 2


def _load_sync_file_range() -> Callable[[int, int, int, int], int] | None:
    """Linux's sync_file_range(2), which Python's os module lacks; None elsewhere."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return cast(Callable[[int, int, int, int], int], fn)


_sync_file_range = _load_sync_file_range()


_OUT_OF_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT})


def _out_of_space(exc: OSError, path: str | Path) -> StorageFull | None:
    """The StorageFull a write failure means, or None when it means something else."""
    if exc.errno in _OUT_OF_SPACE:
        return StorageFull(str(path), os.strerror(exc.errno or 0))
    return None


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _makedirs(path: Path) -> None:
    # Each newly created directory must itself be durable in its parent.
    missing: list[Path] = []
    p = path
    while not p.exists():
        missing.append(p)
        p = p.parent
    path.mkdir(parents=True, exist_ok=True)
    for created in reversed(missing):
        _fsync_dir(created.parent)


def _remove_tree(path: Path) -> None:
    """Remove a file, or a directory and everything in it.

    A blob is a directory holding one file; removing it with three system calls instead
    of rmtree's descriptor-safe walk matters when a collection removes thousands.
    """
    try:
        os.unlink(path)
        return
    except IsADirectoryError:
        pass
    except PermissionError:
        # Linux reports unlink() of a directory as EISDIR, other systems as EPERM.
        if not path.is_dir():
            raise
    with os.scandir(path) as entries:
        children = list(entries)
    for entry in children:
        if entry.is_dir(follow_symlinks=False):
            _remove_tree(Path(entry.path))
        else:
            os.unlink(entry.path)
    os.rmdir(path)


class _FileReader:
    def __init__(self, fh: io.FileIO, limiter: trio.CapacityLimiter) -> None:
        self._fh = fh
        self._limiter = limiter

    async def read(self, max_bytes: int) -> bytes:
        return await trio.to_thread.run_sync(self._fh.read, max_bytes, limiter=self._limiter)

    def file_position(self) -> tuple[int, int]:
        return self._fh.fileno(), self._fh.tell()

    async def aclose(self) -> None:
        self._fh.close()


class _FileWriter:
    def __init__(
        self, path: Path, fh: io.FileIO, start: int, created: bool, limiter: trio.CapacityLimiter
    ) -> None:
        self._path = path
        self._fh = fh
        self._start = start
        self._size = start
        self._created = created
        self._limiter = limiter
        self._closed = False
        # Where the bytes not yet handed to the disk start (see _write_all).
        self._unsent = start

    @property
    def size(self) -> int:
        return self._size

    def _write_all(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            n = self._fh.write(view)
            if n is None:  # pragma: no cover - only non-blocking files return None
                raise StorageError("short write")
            view = view[n:]

    def _write_and_send(
        self, data: bytes, end: int, also: Callable[[bytes], object] | None
    ) -> None:
        if also is not None:
            also(data)
        self._write_all(data)
        if _sync_file_range is not None and end - self._unsent >= WRITEBACK_CHUNK:
            # Start writing the data out now, without waiting for it: otherwise all of a
            # large blob waits in the page cache for the fsync at commit, and the client
            # waits for that fsync. Advisory; a failure only leaves the work to fsync.
            _sync_file_range(
                self._fh.fileno(), self._unsent, end - self._unsent, _SYNC_FILE_RANGE_WRITE
            )
            self._unsent = end

    async def write(self, data: bytes, also: Callable[[bytes], object] | None = None) -> None:
        if self._closed:
            raise StorageError("write on a closed writer")
        end = self._size + len(data)
        try:
            await trio.to_thread.run_sync(
                self._write_and_send, data, end, also, limiter=self._limiter
            )
        except OSError as exc:
            full = _out_of_space(exc, self._path)
            if full is None:
                raise
            # Part of the chunk may be on disk: the writer's size stays where the last
            # whole write ended, and its owner cancels or truncates it.
            raise full from None
        self._size = end

    def _commit(self) -> None:
        try:
            os.fsync(self._fh.fileno())
        finally:
            self._fh.close()
        if self._created:
            _fsync_dir(self._path.parent)

    async def commit(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            await trio.to_thread.run_sync(self._commit, limiter=self._limiter)
        except OSError as exc:
            full = _out_of_space(exc, self._path)
            if full is None:
                raise
            raise full from None

    def _cancel(self) -> None:
        try:
            if self._created:
                self._path.unlink(missing_ok=True)
            else:
                os.ftruncate(self._fh.fileno(), self._start)
                os.fsync(self._fh.fileno())
        finally:
            self._fh.close()

    async def cancel(self) -> None:
        if self._closed:
            return
        self._closed = True
        # Shielded: a cancelled request must still roll its partial bytes back.
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(self._cancel, limiter=self._limiter)


class FilesystemDriver:
    name = "filesystem"

    def __init__(self, root: str | os.PathLike[str], *, max_threads: int = 16) -> None:
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self._limiter = trio.CapacityLimiter(max_threads)

    def _full(self, path: str) -> Path:
        return self.root / check_path(path)

    async def get_content(self, path: str) -> bytes:
        full = self._full(path)

        def read() -> bytes:
            try:
                return full.read_bytes()
            except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
                raise PathNotFound(path) from None

        return await trio.to_thread.run_sync(read, limiter=self._limiter)

    async def put_content(self, path: str, data: bytes) -> None:
        full = self._full(path)

        def write() -> None:
            _makedirs(full.parent)
            tmp = full.with_name(f".{full.name}.{os.getpid()}.{time.monotonic_ns()}.tmp")
            try:
                with open(tmp, "wb") as fh:
                    fh.write(data)
                    fh.flush()
                    os.fsync(fh.fileno())
                os.replace(tmp, full)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
            _fsync_dir(full.parent)

        try:
            await trio.to_thread.run_sync(write, limiter=self._limiter)
        except OSError as exc:
            out = _out_of_space(exc, path)
            if out is None:
                raise
            raise out from None

    async def reader(self, path: str, offset: int = 0) -> _FileReader:
        full = self._full(path)

        def open_at() -> io.FileIO:
            try:
                fh = open(full, "rb", buffering=0)  # noqa: SIM115 - handed to the reader
            except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
                raise PathNotFound(path) from None
            size = os.fstat(fh.fileno()).st_size
            if offset < 0 or offset > size:
                fh.close()
                raise InvalidOffset(path, offset)
            fh.seek(offset)
            return fh

        fh = await trio.to_thread.run_sync(open_at, limiter=self._limiter)
        return _FileReader(fh, self._limiter)

    async def writer(self, path: str, *, offset: int = 0) -> _FileWriter:
        full = self._full(path)

        def open_for_write() -> tuple[io.FileIO, bool]:
            if offset == 0:
                _makedirs(full.parent)
                created = not full.exists()
                fd = os.open(full, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            else:
                try:
                    fd = os.open(full, os.O_WRONLY)
                except (FileNotFoundError, NotADirectoryError):
                    raise PathNotFound(path) from None
                created = False
                size = os.fstat(fd).st_size
                if offset > size:
                    os.close(fd)
                    raise InvalidOffset(path, offset)
                if offset < size:
                    os.ftruncate(fd, offset)
                os.lseek(fd, offset, os.SEEK_SET)
            return os.fdopen(fd, "wb", buffering=0), created

        if offset < 0:
            raise InvalidOffset(path, offset)
        try:
            fh, created = await trio.to_thread.run_sync(open_for_write, limiter=self._limiter)
        except OSError as exc:
            out = _out_of_space(exc, path)
            if out is None:
                raise
            raise out from None
        return _FileWriter(full, fh, offset, created, self._limiter)

    async def new_file(self, path: str, *, staging: str) -> StagedWriter:
        check_path(path)
        return StagedWriter(self, await self.writer(staging), staging, path)

    async def stat(self, path: str) -> FileInfo:
        full = self._full(path)

        def st() -> FileInfo:
            try:
                s = full.stat()
            except (FileNotFoundError, NotADirectoryError):
                raise PathNotFound(path) from None
            is_dir = full.is_dir()
            return FileInfo(path, 0 if is_dir else s.st_size, s.st_mtime, is_dir)

        return await trio.to_thread.run_sync(st, limiter=self._limiter)

    async def list(self, path: str) -> list[str]:
        full = self._full(path)

        def ls() -> list[str]:
            try:
                return sorted(p.name for p in full.iterdir())
            except (FileNotFoundError, NotADirectoryError):
                raise PathNotFound(path) from None

        return await trio.to_thread.run_sync(ls, limiter=self._limiter)

    async def move(self, source: str, destination: str) -> None:
        src, dst = self._full(source), self._full(destination)

        def mv() -> None:
            _makedirs(dst.parent)
            try:
                os.replace(src, dst)
            except FileNotFoundError:
                raise PathNotFound(source) from None
            _fsync_dir(dst.parent)

        try:
            await trio.to_thread.run_sync(mv, limiter=self._limiter)
        except OSError as exc:
            out = _out_of_space(exc, destination)
            if out is None:
                raise
            raise out from None

    async def delete(self, path: str) -> None:
        full = self._full(path)

        def rm() -> None:
            try:
                _remove_tree(full)
            except FileNotFoundError:
                raise PathNotFound(path) from None
            except NotADirectoryError:
                raise PathNotFound(path) from None

        await trio.to_thread.run_sync(rm, limiter=self._limiter)

    async def delete_many(self, paths: Sequence[str]) -> None:
        fulls = [self._full(p) for p in paths]

        def rm_all() -> None:
            for full in fulls:
                with contextlib.suppress(FileNotFoundError, NotADirectoryError):
                    _remove_tree(full)

        await trio.to_thread.run_sync(rm_all, limiter=self._limiter)

    async def redirect_url(self, path: str) -> str | None:
        return None

    async def purge_incomplete(self, older_than: float) -> int:
        # An unfinished file is a file: the upload purge finds it by listing.
        return 0

    async def free_space(self) -> Space:
        def measure() -> Space:
            st = os.statvfs(self.root)
            return Space(free=st.f_bavail * st.f_frsize, total=st.f_blocks * st.f_frsize)

        try:
            return await trio.to_thread.run_sync(measure, limiter=self._limiter)
        except OSError as exc:
            raise StorageError(f"cannot measure the free space of {self.root}: {exc}") from exc
