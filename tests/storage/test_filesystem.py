from __future__ import annotations

import itertools
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from regd.storage import FilesystemDriver, InvalidPath, PathNotFound, filesystem
from tests.helpers.volumes import tmpfs
from tests.storage.conformance import StorageDriverSuite, pseudo_random, write_file


class TestFilesystemDriver(StorageDriverSuite):
    @pytest.fixture
    def driver(self, tmp_path: Path) -> FilesystemDriver:
        return FilesystemDriver(tmp_path / "root")


# A writer that is never committed or cancelled, in a process that dies at once: the
# closest a test gets to a crash (no atexit handlers, no finalizers, no flushing).
CRASHING_WRITER = textwrap.dedent(
    """
    import os, sys, trio
    from regd.storage import FilesystemDriver

    async def main():
        driver = FilesystemDriver(sys.argv[1])
        writer = await driver.writer(sys.argv[2], offset=int(sys.argv[3]))
        await writer.write(bytes.fromhex(sys.argv[4]))
        os._exit(0)

    trio.run(main)
    """
)


def crash_while_writing(root: Path, path: str, offset: int, data: bytes) -> None:
    subprocess.run(
        [sys.executable, "-c", CRASHING_WRITER, str(root), path, str(offset), data.hex()],
        check=True,
        timeout=60,
    )


async def test_crash_of_a_new_writer_leaves_nothing_or_the_data(tmp_path: Path) -> None:
    root = tmp_path / "root"
    data = pseudo_random(5000)
    crash_while_writing(root, "uploads/u1/data", 0, data)

    driver = FilesystemDriver(root)
    try:
        left = await driver.get_content("uploads/u1/data")
    except PathNotFound:
        left = None
    assert left is None or left == data
    if left is not None:
        # Nothing but the file itself: no temporary names beside it.
        assert list(await driver.list("uploads/u1")) == ["data"]
    await write_file(driver, "uploads/u1/data", b"fresh start")
    assert await driver.get_content("uploads/u1/data") == b"fresh start"


async def test_crash_while_continuing_keeps_the_acknowledged_prefix(tmp_path: Path) -> None:
    root = tmp_path / "root"
    driver = FilesystemDriver(root)
    await write_file(driver, "uploads/u1/data", b"acknowledged")
    crash_while_writing(root, "uploads/u1/data", 12, b"-never-acknowledged")

    left = await driver.get_content("uploads/u1/data")
    assert left.startswith(b"acknowledged")
    assert left in (b"acknowledged", b"acknowledged-never-acknowledged")
    # The next session resumes where the last acknowledged byte was.
    await write_file(driver, "uploads/u1/data", b"+resumed", offset=12)
    assert await driver.get_content("uploads/u1/data") == b"acknowledged+resumed"


def files_under(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


async def test_paths_stay_under_the_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_bytes(b"do not touch")
    driver = FilesystemDriver(root)

    for escape in ["../outside/precious", "/tmp/x", "a/../../outside/precious"]:
        with pytest.raises(InvalidPath):
            await driver.put_content(escape, b"overwritten")
        with pytest.raises(InvalidPath):
            await driver.delete(escape)
        with pytest.raises(InvalidPath):
            await driver.writer(escape)
        with pytest.raises(InvalidPath):
            await driver.move("inside", escape)

    await driver.put_content("docker/registry/v2/blobs/sha256/ab/abcd/data", b"blob")
    await write_file(driver, "docker/registry/v2/repositories/r/_uploads/u/data", b"up")
    await driver.move(
        "docker/registry/v2/repositories/r/_uploads/u/data",
        "docker/registry/v2/blobs/sha256/cd/cdef/data",
    )

    assert (outside / "precious").read_bytes() == b"do not touch"
    assert files_under(tmp_path) == {
        "outside/precious",
        "root/docker/registry/v2/blobs/sha256/ab/abcd/data",
        "root/docker/registry/v2/blobs/sha256/cd/cdef/data",
    }
    assert os.listdir(root) == ["docker"]


async def test_large_writes_are_handed_to_the_disk_as_they_arrive(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[int, int]] = []

    def record(fd: int, offset: int, length: int, flags: int) -> int:
        calls.append((offset, length))
        return 0

    monkeypatch.setattr(filesystem, "_sync_file_range", record)
    driver = FilesystemDriver(tmp_path)
    piece = 3 * 1024 * 1024
    writer = await driver.writer("big")
    for _ in range(6):
        await writer.write(b"x" * piece)
    await writer.commit()
    # Contiguous ranges from the start, each at least WRITEBACK_CHUNK long.
    assert calls[0][0] == 0
    for (offset, length), (following, _) in itertools.pairwise(calls):
        assert length >= filesystem.WRITEBACK_CHUNK
        assert offset + length == following
    assert calls == [(0, 9 * 1024 * 1024), (9 * 1024 * 1024, 9 * 1024 * 1024)]
    # A writer continuing a file starts from where it opened it.
    calls.clear()
    writer = await driver.writer("big", offset=18 * 1024 * 1024)
    for _ in range(3):
        await writer.write(b"y" * piece)
    await writer.cancel()
    assert calls == [(18 * 1024 * 1024, 9 * 1024 * 1024)]


async def test_free_space_is_the_volumes(tmp_path: Path) -> None:
    driver = FilesystemDriver(tmp_path / "root")
    space = await driver.free_space()
    st = os.statvfs(tmp_path)
    assert space.total == st.f_blocks * st.f_frsize
    assert 0 <= space.free <= space.total


@pytest.fixture
def small_volume(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs of its own, so nothing else changes its free space during the test."""
    with tmpfs(tmp_path / "volume", "4m") as mountpoint:
        yield mountpoint


async def test_free_space_shrinks_as_data_is_written(small_volume: Path) -> None:
    driver = FilesystemDriver(small_volume / "root")
    before = await driver.free_space()
    assert before.total == 4 * 1024 * 1024
    await write_file(driver, "blob", pseudo_random(1024 * 1024))
    after = await driver.free_space()
    assert after.total == before.total
    assert before.free - after.free >= 1024 * 1024
