"""The contract every storage driver must meet, written once.

A driver's test module subclasses `StorageDriverSuite` and provides a `driver` fixture that
yields a fresh, empty driver; every test below then runs against it. The contract is the one
documented in `regd.storage.base`: bytes at '/'-separated relative paths, typed errors, writers
that append across sessions and roll back on cancel.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from regd.storage import (
    FileInfo,
    InvalidOffset,
    InvalidPath,
    PathNotFound,
    StorageDriver,
    StorageError,
)

# Each breaks a different rule of the path grammar.
INVALID_PATHS = [
    "",
    "/leading/slash",
    "trailing/slash/",
    "double//slash",
    "..",
    "a/../b",
    "../escape",
    "a/./b",
    ".",
    "nul\x00byte",
    "back\\slash",
]

LARGE_SIZE = 5 * 1024 * 1024 + 12345  # several MiB and not a multiple of any chunk size


def pseudo_random(size: int, seed: bytes = b"regd") -> bytes:
    """Deterministic, incompressible-looking bytes (so offsets mean something)."""
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(seed + counter.to_bytes(8, "big")).digest()
        counter += 1
    return bytes(out[:size])


async def read_all(driver: StorageDriver, path: str, offset: int = 0, chunk: int = 65536) -> bytes:
    reader = await driver.reader(path, offset)
    parts = []
    try:
        # Bounded: a reader that never reports the end would otherwise hang the test.
        for _ in range(LARGE_SIZE // chunk + 10):
            piece = await reader.read(chunk)
            assert len(piece) <= chunk
            if not piece:
                break
            parts.append(piece)
        else:
            pytest.fail(f"reader of {path} never reached the end")
    finally:
        await reader.aclose()
    return b"".join(parts)


async def write_file(driver: StorageDriver, path: str, *pieces: bytes, offset: int = 0) -> None:
    writer = await driver.writer(path, offset=offset)
    for piece in pieces:
        await writer.write(piece)
    await writer.commit()


def _calls(path: str) -> list[tuple[str, Callable[[StorageDriver], Awaitable[Any]]]]:
    """One call of every driver method that takes a path, each using `path`."""
    return [
        ("get_content", lambda d: d.get_content(path)),
        ("put_content", lambda d: d.put_content(path, b"x")),
        ("reader", lambda d: d.reader(path)),
        ("writer", lambda d: d.writer(path)),
        ("writer-offset", lambda d: d.writer(path, offset=1)),
        ("new_file", lambda d: d.new_file(path, staging="valid/staging")),
        ("stat", lambda d: d.stat(path)),
        ("list", lambda d: d.list(path)),
        ("move-source", lambda d: d.move(path, "valid/destination")),
        ("move-destination", lambda d: d.move("valid/source", path)),
        ("delete", lambda d: d.delete(path)),
    ]


INVALID_CALLS = [
    pytest.param(call, id=f"{name}-{bad!r}") for bad in INVALID_PATHS for name, call in _calls(bad)
]


class StorageDriverSuite:
    """Subclasses provide `driver`: a fresh, empty driver for each test."""

    # --- get_content / put_content

    async def test_put_then_get(self, driver: StorageDriver) -> None:
        await driver.put_content("a/b/c", b"hello")
        assert await driver.get_content("a/b/c") == b"hello"

    async def test_put_replaces_content(self, driver: StorageDriver) -> None:
        await driver.put_content("file", b"first version, longer")
        await driver.put_content("file", b"second")
        assert await driver.get_content("file") == b"second"

    async def test_put_empty_content(self, driver: StorageDriver) -> None:
        await driver.put_content("empty", b"")
        assert await driver.get_content("empty") == b""
        assert (await driver.stat("empty")).size == 0

    async def test_put_leaves_nothing_beside_the_file(self, driver: StorageDriver) -> None:
        # Drivers that write through a temporary name must not leave it visible.
        await driver.put_content("dir/file", b"one")
        await driver.put_content("dir/file", b"two")
        assert list(await driver.list("dir")) == ["file"]

    async def test_get_missing(self, driver: StorageDriver) -> None:
        with pytest.raises(PathNotFound):
            await driver.get_content("missing/file")

    async def test_get_of_a_directory_is_not_found(self, driver: StorageDriver) -> None:
        await driver.put_content("dir/file", b"x")
        with pytest.raises(PathNotFound):
            await driver.get_content("dir")

    async def test_get_below_a_file_is_not_found(self, driver: StorageDriver) -> None:
        await driver.put_content("file", b"x")
        with pytest.raises(PathNotFound):
            await driver.get_content("file/child")

    async def test_errors_are_storage_errors(self, driver: StorageDriver) -> None:
        with pytest.raises(StorageError) as caught:
            await driver.get_content("missing")
        assert isinstance(caught.value, PathNotFound)
        assert caught.value.path == "missing"

    # --- reader

    @pytest.mark.parametrize("offset", [0, 1, 500, 999, 1000])
    async def test_reader_from_offset(self, driver: StorageDriver, offset: int) -> None:
        data = pseudo_random(1000)
        await driver.put_content("blob", data)
        assert await read_all(driver, "blob", offset, chunk=64) == data[offset:]

    async def test_reader_at_end_reads_nothing(self, driver: StorageDriver) -> None:
        await driver.put_content("blob", b"abc")
        reader = await driver.reader("blob", 3)
        try:
            assert await reader.read(10) == b""
        finally:
            await reader.aclose()

    async def test_reader_respects_max_bytes(self, driver: StorageDriver) -> None:
        await driver.put_content("blob", b"0123456789")
        reader = await driver.reader("blob", 2)
        try:
            first = await reader.read(3)
            assert first == b"234"[: len(first)]
            assert 0 < len(first) <= 3
        finally:
            await reader.aclose()

    @pytest.mark.parametrize("offset", [4, 1000, -1])
    async def test_reader_invalid_offset(self, driver: StorageDriver, offset: int) -> None:
        await driver.put_content("blob", b"abc")
        with pytest.raises(InvalidOffset) as caught:
            await driver.reader("blob", offset)
        assert caught.value.offset == offset

    async def test_reader_missing(self, driver: StorageDriver) -> None:
        with pytest.raises(PathNotFound):
            await driver.reader("missing")

    async def test_reader_of_a_directory_is_not_found(self, driver: StorageDriver) -> None:
        await driver.put_content("dir/file", b"x")
        with pytest.raises(PathNotFound):
            await driver.reader("dir")

    async def test_large_file_in_chunks(self, driver: StorageDriver) -> None:
        data = pseudo_random(LARGE_SIZE)
        pieces = [data[i : i + 1_000_003] for i in range(0, len(data), 1_000_003)]
        await write_file(driver, "large", *pieces)
        assert (await driver.stat("large")).size == LARGE_SIZE
        back = await read_all(driver, "large", chunk=65536)
        assert hashlib.sha256(back).digest() == hashlib.sha256(data).digest()
        middle = LARGE_SIZE // 2 + 7
        tail = await read_all(driver, "large", middle, chunk=1 << 20)
        assert tail == data[middle:]

    # --- writer

    async def test_writer_new_file(self, driver: StorageDriver) -> None:
        writer = await driver.writer("w/new")
        assert writer.size == 0
        await writer.write(b"abc")
        assert writer.size == 3
        await writer.write(b"defg")
        assert writer.size == 7
        await writer.commit()
        assert await driver.get_content("w/new") == b"abcdefg"
        assert (await driver.stat("w/new")).size == 7

    async def test_writer_at_zero_empties_existing_file(self, driver: StorageDriver) -> None:
        await driver.put_content("w/file", b"old content")
        writer = await driver.writer("w/file")
        assert writer.size == 0
        await writer.write(b"new")
        await writer.commit()
        assert await driver.get_content("w/file") == b"new"

    async def test_writer_continues_across_sessions(self, driver: StorageDriver) -> None:
        data = pseudo_random(30_000)
        sessions = [data[:10_000], data[10_000:10_001], data[10_001:]]
        written = 0
        for piece in sessions:
            writer = await driver.writer("w/upload", offset=written)
            assert writer.size == written
            await writer.write(piece)
            written += len(piece)
            assert writer.size == written
            await writer.commit()
        assert await driver.get_content("w/upload") == data

    async def test_writer_offset_drops_leftover_tail(self, driver: StorageDriver) -> None:
        # Bytes past the offset are what an interrupted session wrote but never acknowledged.
        await driver.put_content("w/upload", b"0123456789")
        writer = await driver.writer("w/upload", offset=4)
        assert writer.size == 4
        await writer.write(b"XY")
        assert writer.size == 6
        await writer.commit()
        assert await driver.get_content("w/upload") == b"0123XY"

    async def test_writer_offset_at_end(self, driver: StorageDriver) -> None:
        await driver.put_content("w/upload", b"abc")
        await write_file(driver, "w/upload", b"def", offset=3)
        assert await driver.get_content("w/upload") == b"abcdef"

    @pytest.mark.parametrize("offset", [4, 1000, -1])
    async def test_writer_invalid_offset(self, driver: StorageDriver, offset: int) -> None:
        await driver.put_content("w/upload", b"abc")
        with pytest.raises(InvalidOffset):
            await driver.writer("w/upload", offset=offset)
        assert await driver.get_content("w/upload") == b"abc"

    async def test_writer_offset_on_missing_file(self, driver: StorageDriver) -> None:
        with pytest.raises(PathNotFound):
            await driver.writer("w/missing", offset=1)
        with pytest.raises(PathNotFound):
            await driver.stat("w/missing")

    async def test_cancel_new_file_removes_it(self, driver: StorageDriver) -> None:
        writer = await driver.writer("w/cancelled")
        await writer.write(b"partial")
        await writer.cancel()
        with pytest.raises(PathNotFound):
            await driver.stat("w/cancelled")

    async def test_cancel_continued_file_restores_its_size(self, driver: StorageDriver) -> None:
        await write_file(driver, "w/upload", b"kept-", b"bytes")
        writer = await driver.writer("w/upload", offset=10)
        assert writer.size == 10
        await writer.write(b"discarded" * 1000)
        assert writer.size == 10 + 9000
        await writer.cancel()
        assert (await driver.stat("w/upload")).size == 10
        assert await driver.get_content("w/upload") == b"kept-bytes"
        # Still usable: the next session continues from the restored end.
        await write_file(driver, "w/upload", b"!", offset=10)
        assert await driver.get_content("w/upload") == b"kept-bytes!"

    async def test_cancel_returns_to_the_opening_offset(self, driver: StorageDriver) -> None:
        await driver.put_content("w/upload", b"0123456789")
        writer = await driver.writer("w/upload", offset=4)
        await writer.write(b"XYZ")
        await writer.cancel()
        assert await driver.get_content("w/upload") == b"0123"

    async def test_write_after_commit_fails(self, driver: StorageDriver) -> None:
        writer = await driver.writer("w/closed")
        await writer.write(b"x")
        await writer.commit()
        with pytest.raises(StorageError):
            await writer.write(b"more")
        assert await driver.get_content("w/closed") == b"x"

    async def test_write_after_cancel_fails(self, driver: StorageDriver) -> None:
        writer = await driver.writer("w/closed")
        await writer.cancel()
        with pytest.raises(StorageError):
            await writer.write(b"more")

    async def test_cancel_after_commit_keeps_data(self, driver: StorageDriver) -> None:
        # Callers commit and then cancel in a `finally`; the second must not undo the first.
        writer = await driver.writer("w/done")
        await writer.write(b"kept")
        await writer.commit()
        await writer.cancel()
        assert await driver.get_content("w/done") == b"kept"

    async def test_empty_commit_creates_empty_file(self, driver: StorageDriver) -> None:
        writer = await driver.writer("w/empty")
        await writer.commit()
        assert (await driver.stat("w/empty")).size == 0

    async def test_writer_back_to_where_an_earlier_commit_ended(
        self, driver: StorageDriver
    ) -> None:
        # What a process that died after writing a chunk, before the session recorded it,
        # leaves: the next writer continues from the recorded size, dropping the rest.
        first = pseudo_random(5 * 1024 * 1024, b"first")
        await write_file(driver, "w/grown", first)
        await write_file(driver, "w/grown", pseudo_random(LARGE_SIZE), offset=len(first))
        await write_file(driver, "w/grown", b"end", offset=len(first))
        assert await read_all(driver, "w/grown", chunk=1 << 20) == first + b"end"

    # --- new_file

    async def test_new_file_appears_whole_at_commit(self, driver: StorageDriver) -> None:
        await driver.put_content("n/file", b"old")
        data = pseudo_random(LARGE_SIZE)
        writer = await driver.new_file("n/file", staging="n/staging/data")
        for start in range(0, len(data), 1_000_003):
            await writer.write(data[start : start + 1_000_003])
        assert writer.size == LARGE_SIZE
        assert await driver.get_content("n/file") == b"old"
        await writer.commit()
        assert await read_all(driver, "n/file", chunk=1 << 20) == data
        await writer.cancel()
        assert (await driver.stat("n/file")).size == LARGE_SIZE

    async def test_new_file_cancelled_leaves_no_trace(self, driver: StorageDriver) -> None:
        await driver.put_content("n/kept", b"old")
        for path in ("n/kept", "n/fresh"):
            writer = await driver.new_file(path, staging=f"n/staging-{path[2:]}/data")
            await writer.write(pseudo_random(LARGE_SIZE))
            await writer.cancel()
        assert await driver.get_content("n/kept") == b"old"
        with pytest.raises(PathNotFound):
            await driver.stat("n/fresh")

    async def test_write_shows_each_piece_to_also(self, driver: StorageDriver) -> None:
        # What a fill or a push hashes on the way: every piece, once, in order.
        data = pseudo_random(LARGE_SIZE)
        seen = hashlib.sha256()
        writer = await driver.new_file("n/hashed", staging="n/staging-hashed/data")
        for start in range(0, len(data), 1_000_003):
            await writer.write(data[start : start + 1_000_003], seen.update)
        await writer.write(b"", seen.update)
        await writer.commit()
        assert seen.hexdigest() == hashlib.sha256(data).hexdigest()
        assert await read_all(driver, "n/hashed", chunk=1 << 20) == data

    async def test_new_file_small_and_empty(self, driver: StorageDriver) -> None:
        for path, data in (("n/small", b"tiny"), ("n/empty", b"")):
            writer = await driver.new_file(path, staging=f"n/staging-{path[2:]}/data")
            await writer.write(data)
            await writer.commit()
            assert await driver.get_content(path) == data

    # --- stat

    async def test_stat_file(self, driver: StorageDriver) -> None:
        await driver.put_content("s/file", b"12345")
        info = await driver.stat("s/file")
        assert isinstance(info, FileInfo)
        assert info.path == "s/file"
        assert info.size == 5
        assert info.is_dir is False
        assert isinstance(info.modified, float)

    async def test_stat_directory(self, driver: StorageDriver) -> None:
        await driver.put_content("s/dir/file", b"x")
        info = await driver.stat("s/dir")
        assert info.is_dir is True
        assert info.path == "s/dir"

    async def test_stat_missing(self, driver: StorageDriver) -> None:
        with pytest.raises(PathNotFound):
            await driver.stat("s/missing")

    async def test_stat_below_a_file_is_not_found(self, driver: StorageDriver) -> None:
        await driver.put_content("s/file", b"x")
        with pytest.raises(PathNotFound):
            await driver.stat("s/file/child")

    async def test_stat_does_not_match_name_prefixes(self, driver: StorageDriver) -> None:
        await driver.put_content("s/abc/file", b"x")
        with pytest.raises(PathNotFound):
            await driver.stat("s/ab")

    # --- list

    async def test_list_direct_children_sorted(self, driver: StorageDriver) -> None:
        for path in ["l/b", "l/a/deep/file", "l/c/x", "l/B", "l/_z", "other/file", "lx/file"]:
            await driver.put_content(path, b"x")
        assert list(await driver.list("l")) == sorted(["a", "b", "c", "B", "_z"])

    async def test_list_nested(self, driver: StorageDriver) -> None:
        await driver.put_content("l/a/deep/file", b"x")
        await driver.put_content("l/a/other", b"x")
        assert list(await driver.list("l/a")) == ["deep", "other"]
        assert list(await driver.list("l/a/deep")) == ["file"]

    async def test_list_missing(self, driver: StorageDriver) -> None:
        with pytest.raises(PathNotFound):
            await driver.list("l/missing")

    async def test_list_of_a_file_is_not_found(self, driver: StorageDriver) -> None:
        await driver.put_content("l/file", b"x")
        with pytest.raises(PathNotFound):
            await driver.list("l/file")

    # --- move

    async def test_move(self, driver: StorageDriver) -> None:
        await driver.put_content("m/source", b"payload")
        await driver.move("m/source", "m/elsewhere/destination")
        assert await driver.get_content("m/elsewhere/destination") == b"payload"
        with pytest.raises(PathNotFound):
            await driver.stat("m/source")

    async def test_move_replaces_destination(self, driver: StorageDriver) -> None:
        await driver.put_content("m/source", b"new")
        await driver.put_content("m/destination", b"old and longer")
        await driver.move("m/source", "m/destination")
        assert await driver.get_content("m/destination") == b"new"
        with pytest.raises(PathNotFound):
            await driver.get_content("m/source")

    async def test_move_large_file(self, driver: StorageDriver) -> None:
        data = pseudo_random(2 * 1024 * 1024 + 1)
        await write_file(driver, "m/upload/data", data[:1000], data[1000:])
        await driver.move("m/upload/data", "m/blobs/ab/abcd/data")
        assert await read_all(driver, "m/blobs/ab/abcd/data", chunk=1 << 20) == data

    async def test_move_onto_itself_keeps_file(self, driver: StorageDriver) -> None:
        await driver.put_content("m/same", b"payload")
        await driver.move("m/same", "m/same")
        assert await driver.get_content("m/same") == b"payload"

    async def test_move_missing_source(self, driver: StorageDriver) -> None:
        await driver.put_content("m/destination", b"untouched")
        with pytest.raises(PathNotFound) as caught:
            await driver.move("m/missing", "m/destination")
        assert caught.value.path == "m/missing"
        assert await driver.get_content("m/destination") == b"untouched"

    # --- delete

    async def test_delete_file(self, driver: StorageDriver) -> None:
        await driver.put_content("d/file", b"x")
        await driver.put_content("d/sibling", b"y")
        await driver.delete("d/file")
        with pytest.raises(PathNotFound):
            await driver.stat("d/file")
        assert await driver.get_content("d/sibling") == b"y"

    async def test_delete_tree(self, driver: StorageDriver) -> None:
        for path in ["d/tree/a", "d/tree/b/c", "d/tree/b/d/e", "d/treehouse", "d/tree2/x"]:
            await driver.put_content(path, b"x")
        await driver.delete("d/tree")
        for gone in ["d/tree", "d/tree/a", "d/tree/b/c", "d/tree/b/d/e"]:
            with pytest.raises(PathNotFound):
                await driver.stat(gone)
        # Names sharing the prefix are other entries and must survive.
        assert await driver.get_content("d/treehouse") == b"x"
        assert await driver.get_content("d/tree2/x") == b"x"

    async def test_delete_missing(self, driver: StorageDriver) -> None:
        with pytest.raises(PathNotFound):
            await driver.delete("d/missing")

    async def test_delete_below_a_file_is_not_found(self, driver: StorageDriver) -> None:
        await driver.put_content("d/file", b"x")
        with pytest.raises(PathNotFound):
            await driver.delete("d/file/child")
        assert await driver.get_content("d/file") == b"x"

    async def test_delete_many(self, driver: StorageDriver) -> None:
        await driver.put_content("dm/a/data", b"a")
        await driver.put_content("dm/b/data", b"b")
        await driver.put_content("dm/c/data", b"c")
        await driver.put_content("dm/c/more/deep", b"d")
        await driver.put_content("dm/keep/data", b"k")
        # Absent paths are no error: a batch is best effort by design.
        await driver.delete_many(["dm/a", "dm/c", "dm/absent", "dm/b/data"])
        for gone in ("dm/a/data", "dm/c/data", "dm/c/more/deep", "dm/b/data"):
            with pytest.raises(PathNotFound):
                await driver.stat(gone)
        assert await driver.get_content("dm/keep/data") == b"k"
        await driver.delete_many([])

    async def test_delete_many_checks_paths(self, driver: StorageDriver) -> None:
        with pytest.raises(InvalidPath):
            await driver.delete_many(["ok/path", "../escape"])

    async def test_deleted_path_can_be_written_again(self, driver: StorageDriver) -> None:
        await driver.put_content("d/again/file", b"1")
        await driver.delete("d/again")
        await driver.put_content("d/again/file", b"2")
        assert await driver.get_content("d/again/file") == b"2"

    # --- invalid paths

    @pytest.mark.parametrize("call", INVALID_CALLS)
    async def test_invalid_path(
        self, driver: StorageDriver, call: Callable[[StorageDriver], Awaitable[Any]]
    ) -> None:
        await driver.put_content("valid/source", b"x")
        with pytest.raises(InvalidPath):
            await call(driver)
        # A rejected call changes nothing.
        assert await driver.get_content("valid/source") == b"x"

    # --- redirect_url

    async def test_free_space_is_unknown_or_consistent(self, driver: StorageDriver) -> None:
        await write_file(driver, "some/file", b"data")
        space = await driver.free_space()
        if space is not None:
            assert 0 <= space.free <= space.total
            assert space.total > 0

    async def test_redirect_url(self, driver: StorageDriver) -> None:
        await driver.put_content("r/file", b"x")
        url = await driver.redirect_url("r/file")
        assert url is None or (isinstance(url, str) and url)

    # --- names and contents that are legal but unusual

    @pytest.mark.parametrize(
        "path",
        [
            "docker/registry/v2/blobs/sha256/ab/" + "ab" * 32 + "/data",
            "docker/registry/v2/repositories/library/ubuntu/_manifests/tags/v1.0_rc-2/current/link",
            "name with spaces/and-unicode-\u00e9\u4e2d",
            "...dots/..a/a..",
            ".hidden/.file",
        ],
    )
    async def test_legal_paths(self, driver: StorageDriver, path: str) -> None:
        content = os.urandom(33)
        await driver.put_content(path, content)
        assert await driver.get_content(path) == content
        parent, _, name = path.rpartition("/")
        assert name in await driver.list(parent)
