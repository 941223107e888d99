from __future__ import annotations

import itertools
import math
import secrets
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import pytest
import trio
from botocore.exceptions import EndpointConnectionError

from regd.storage import PathNotFound, StorageError
from regd.storage.base import Reader
from regd.storage.s3 import MiB, S3Driver, S3Options, StorageUnavailable
from regd.storage.s3 import _reader as s3_module
from tests.helpers.s3 import S3Endpoint, s3_endpoint  # noqa: F401 - the fixture
from tests.helpers.servers import free_port
from tests.storage.conformance import StorageDriverSuite, pseudo_random, read_all, write_file


@pytest.fixture(scope="module")
def bucket(s3_endpoint: S3Endpoint) -> str:  # noqa: F811
    return s3_endpoint.create_bucket()


@pytest.fixture
def small_ranges(monkeypatch: pytest.MonkeyPatch) -> int:
    """Pieces of 256 KiB and ranges of 1 MiB, so files of a few MiB cross many of both;
    and a stream always too slow, so a read goes on as ranges after 512 KiB."""
    for name, value in [
        ("READ_PIECE", 256 * 1024),
        ("STREAM_PROBE", 512 * 1024),
        ("STREAM_ENOUGH", float("inf")),
        ("RANGE_SIZE", MiB),
    ]:
        monkeypatch.setattr(s3_module, name, value)
    return MiB


class TestS3Driver(StorageDriverSuite):
    @pytest.fixture(autouse=True)
    def _small_ranges(self, small_ranges: int) -> None:
        """Every read of the suite's larger files crosses range boundaries."""

    @pytest.fixture
    async def driver(
        self,
        s3_endpoint: S3Endpoint,  # noqa: F811
        bucket: str,
    ) -> AsyncIterator[S3Driver]:
        # A fresh prefix is a fresh, empty driver. The smallest part size S3 allows and a
        # copy threshold that small files cross make the suite's few-MiB files take the
        # multipart paths too.
        options = s3_endpoint.options(
            bucket, prefix=f"t{secrets.token_hex(4)}", chunk_size=5 * MiB, copy_threshold=MiB
        )
        driver = S3Driver(options)
        yield driver
        driver.close()


def uploads_in(s3: S3Endpoint, bucket: str, prefix: str) -> list[str]:
    found = s3.client().list_multipart_uploads(Bucket=bucket, Prefix=prefix).get("Uploads")
    return sorted(u["Key"] for u in found or [])


async def test_purge_aborts_only_unfinished_uploads_nothing_refers_to(
    s3_endpoint: S3Endpoint,  # noqa: F811
    bucket: str,
) -> None:
    prefix = f"p{secrets.token_hex(4)}"
    driver = S3Driver(s3_endpoint.options(bucket, prefix=prefix, chunk_size=5 * MiB))
    data = pseudo_random(5 * MiB + 1)
    # A writer whose process dies after its first part, before any commit.
    crashed = await driver.writer("uploads/crashed/data")
    await crashed.write(data)
    # A pending file: its multipart upload is what the file is made of.
    await write_file(driver, "uploads/kept/data", data)
    assert uploads_in(s3_endpoint, bucket, prefix) == [
        f"{prefix}/uploads/crashed/data",
        f"{prefix}/uploads/kept/data",
    ]

    # moto reports every upload as initiated in 2010, so the age bound is not exercised
    # here: only which uploads count as unfinished.
    assert await driver.purge_incomplete(time.time() + 60) == 1
    assert uploads_in(s3_endpoint, bucket, prefix) == [f"{prefix}/uploads/kept/data"]
    assert await read_all(driver, "uploads/kept/data", chunk=MiB) == data

    # Deleting a pending file's directory aborts its upload too.
    await write_file(driver, "uploads/gone/data", data)
    await driver.delete("uploads/gone")
    assert uploads_in(s3_endpoint, bucket, prefix) == []
    driver.close()


async def test_an_unreachable_store_asks_to_retry() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    options = S3Options(
        bucket="bucket", endpoint_url=url, access_key="a", secret_key="b", region="us-east-1"
    )
    driver = S3Driver(replace(options, retries=1, connect_timeout=2))
    for call in (driver.get_content("x"), driver.stat("x"), driver.writer("x", offset=1)):
        with pytest.raises(StorageUnavailable) as caught:
            await call
        assert caught.value.retry_after > 0
        assert url in str(caught.value)
    driver.close()


async def test_another_driver_continues_a_file_from_the_bucket_alone(
    s3_endpoint: S3Endpoint,  # noqa: F811
    bucket: str,
) -> None:
    """Two drivers, as two processes would have: neither keeps anything about the file."""
    options = s3_endpoint.options(bucket, prefix=f"x{secrets.token_hex(4)}", chunk_size=5 * MiB)
    first, second = S3Driver(options), S3Driver(options)
    data = pseudo_random(11 * MiB + 3)
    # Below a part, across a part boundary, a one-byte chunk, then the rest.
    cuts = [0, 3 * MiB, 7 * MiB, 7 * MiB + 1, len(data)]
    for n, (start, end) in enumerate(itertools.pairwise(cuts)):
        driver = (first, second)[n % 2]
        writer = await driver.writer("up/data", offset=start)
        assert writer.size == start
        await writer.write(data[start:end])
        await writer.commit()
        assert (await (second, first)[n % 2].stat("up/data")).size == end
    await second.move("up/data", "blob/data")
    assert await read_all(first, "blob/data", chunk=MiB) == data
    first.close()
    second.close()


async def test_a_new_file_goes_to_its_own_key_unseen_until_committed(
    s3_endpoint: S3Endpoint,  # noqa: F811
    bucket: str,
) -> None:
    prefix = f"n{secrets.token_hex(4)}"
    driver = S3Driver(s3_endpoint.options(bucket, prefix=prefix, chunk_size=5 * MiB))
    data = pseudo_random(11 * MiB + 3)
    writer = await driver.new_file("blobs/b/data", staging="uploads/s/data")
    await writer.write(data)
    # Its parts are already at the file's key, where nothing shows yet.
    assert uploads_in(s3_endpoint, bucket, prefix) == [f"{prefix}/blobs/b/data"]
    with pytest.raises(PathNotFound):
        await driver.stat("blobs/b/data")
    await writer.commit()
    # No staging object, no state object, no upload left: nothing was copied.
    listed = s3_endpoint.client().list_objects_v2(Bucket=bucket, Prefix=prefix)
    assert [entry["Key"] for entry in listed["Contents"]] == [f"{prefix}/blobs/b/data"]
    assert uploads_in(s3_endpoint, bucket, prefix) == []
    assert await read_all(driver, "blobs/b/data", chunk=MiB) == data
    cancelled = await driver.new_file("blobs/c/data", staging="uploads/t/data")
    await cancelled.write(data)
    await cancelled.cancel()
    assert uploads_in(s3_endpoint, bucket, prefix) == []
    driver.close()


async def read_through(driver: S3Driver, path: str, offset: int, chunk: int) -> bytes:
    reader = await driver.reader(path, offset)
    out = bytearray()
    try:
        with trio.fail_after(60):
            while piece := await reader.read(chunk):
                assert len(piece) <= chunk
                out += piece
    finally:
        await reader.aclose()
    return bytes(out)


async def drain(reader: Reader, into: bytearray) -> None:
    while piece := await reader.read(MiB):
        into += piece


class GetTracker:
    """Wraps a driver's requests: the Range of each GET, and how many ran at once. Each GET
    is held a little so that GETs a reader issues together are seen together."""

    def __init__(self, driver: S3Driver, monkeypatch: pytest.MonkeyPatch) -> None:
        self.ranges: list[str] = []
        self.peak = 0
        self._active = 0
        self._lock = threading.Lock()
        self.fail_after: int | None = None
        original = driver._call

        def call(method: str, **kwargs: Any) -> Any:
            if method != "get_object":
                return original(method, **kwargs)
            with self._lock:
                self.ranges.append(kwargs.get("Range", ""))
                if self.fail_after is not None and len(self.ranges) > self.fail_after:
                    raise EndpointConnectionError(endpoint_url="http://unreachable")
                self._active += 1
                self.peak = max(self.peak, self._active)
            try:
                time.sleep(0.05)
                return original(method, **kwargs)
            finally:
                with self._lock:
                    self._active -= 1

        monkeypatch.setattr(driver, "_call", call)

    def spans(self, size: int) -> list[tuple[int, int]]:
        """(start, end) of each GET, as their threads sent them; an open range ends at
        `size`."""
        out = []
        for header in self.ranges:
            first, _, last = header.removeprefix("bytes=").partition("-")
            out.append((int(first), int(last) + 1 if last else size))
        return out


@pytest.fixture
async def ranged(
    s3_endpoint: S3Endpoint,  # noqa: F811
    bucket: str,
    small_ranges: int,
) -> AsyncIterator[S3Driver]:
    driver = S3Driver(s3_endpoint.options(bucket, prefix=f"r{secrets.token_hex(4)}"))
    yield driver
    driver.close()


@pytest.mark.parametrize("offset", [0, 1, MiB - 1, MiB, 3 * MiB + 5])
async def test_a_slow_stream_goes_on_as_ranges_in_flight_at_once(
    ranged: S3Driver, monkeypatch: pytest.MonkeyPatch, offset: int
) -> None:
    size = 8 * MiB + 123
    data = pseudo_random(size)
    await ranged.put_content("blob", data)
    tracker = GetTracker(ranged, monkeypatch)
    # Reads that straddle the pieces' and the ranges' boundaries.
    assert await read_through(ranged, "blob", offset, chunk=300_007) == data[offset:]
    stream, *ranges = tracker.spans(size)
    assert stream == (offset, size)
    spans = sorted(ranges)
    # The ranges go on where the stream was left, cover the rest once, in order.
    assert spans[0][0] >= offset + 512 * 1024
    assert spans[-1][1] == size
    assert all(a[1] == b[0] for a, b in itertools.pairwise(spans))
    assert all(end - start <= MiB for start, end in spans)
    assert len(spans) == math.ceil((size - spans[0][0]) / MiB)
    assert 2 <= tracker.peak <= s3_module.RANGES_IN_FLIGHT


async def test_a_fast_stream_is_one_get(ranged: S3Driver, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(s3_module, "STREAM_ENOUGH", 0.0)
    data = pseudo_random(4 * MiB + 5)
    await ranged.put_content("blob", data)
    tracker = GetTracker(ranged, monkeypatch)
    assert await read_through(ranged, "blob", 10, chunk=65536) == data[10:]
    assert tracker.ranges == ["bytes=10-"]


async def test_a_short_read_fetches_little_beyond_it(
    ranged: S3Driver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Range request of the API reads a little and closes the reader."""
    data = pseudo_random(32 * MiB)
    await ranged.put_content("blob", data)
    tracker = GetTracker(ranged, monkeypatch)
    for length in (100_000, 2 * MiB):
        reader = await ranged.reader("blob", 5 * MiB + 7)
        got = bytearray()
        try:
            while len(got) < length:
                got += await reader.read(length - len(got))
        finally:
            await reader.aclose()
        assert bytes(got) == data[5 * MiB + 7 : 5 * MiB + 7 + length]
    # One GET for the first; for the second its stream, the two ranges it needs and at
    # most a full window ahead of them (how far ahead depends on timing), against the
    # 26 ranges reading on to the end would take.
    assert len(tracker.ranges) <= 2 + 2 + s3_module.RANGES_IN_FLIGHT


@pytest.mark.parametrize("change", ["delete", "shorter", "replace"])
async def test_a_file_changed_while_read_fails_cleanly(ranged: S3Driver, change: str) -> None:
    data = pseudo_random(8 * MiB)
    await ranged.put_content("blob", data)
    reader = await ranged.reader("blob")
    got = bytearray()
    try:
        got += await reader.read(MiB)
        if change == "delete":
            await ranged.delete("blob")
        elif change == "shorter":
            await ranged.put_content("blob", data[: 2 * MiB])
        else:
            # Same size, other bytes: a splice of two versions would go unnoticed.
            await ranged.put_content("blob", pseudo_random(8 * MiB, seed=b"other"))
        with trio.fail_after(60), pytest.raises(StorageError) as caught:
            await drain(reader, got)
    finally:
        await reader.aclose()
    assert "changed" in str(caught.value)
    # What was handed on before the error was the file as opened.
    assert bytes(got) == data[: len(got)]


class _CutBody:
    """A GET's body whose connection ends after `left` bytes."""

    def __init__(self, left: int) -> None:
        self.left = left

    def read(self, size: int) -> bytes:
        n = min(size, self.left)
        self.left -= n
        return b"x" * n

    def close(self) -> None:
        pass


@pytest.mark.parametrize("sent", [0, 100, 300 * 1024])
async def test_a_stream_ending_early_fails_instead_of_ending(
    ranged: S3Driver, monkeypatch: pytest.MonkeyPatch, sent: int
) -> None:
    monkeypatch.setattr(s3_module, "STREAM_ENOUGH", 0.0)
    reader = s3_module._S3Reader(ranged, "blob", "blob", '"etag"', 0, 2 * MiB, _CutBody(sent))
    got = bytearray()
    try:
        with trio.fail_after(60), pytest.raises(StorageError) as caught:
            await drain(reader, got)
    finally:
        await reader.aclose()
    assert "changed" in str(caught.value)
    assert len(got) == sent


class _SlowBody:
    """A GET's body whose reads take a while; it notes a close during a read."""

    def __init__(self, size: int) -> None:
        self.left = size
        self.reading = False
        self.closed_under_a_read = False

    def read(self, size: int) -> bytes:
        self.reading = True
        time.sleep(0.3)
        n = min(size, self.left)
        self.left -= n
        self.reading = False
        return b"x" * n

    def close(self) -> None:
        self.closed_under_a_read |= self.reading


async def test_a_cancelled_read_does_not_close_the_body_under_its_read_ahead(
    ranged: S3Driver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(s3_module, "STREAM_ENOUGH", 0.0)
    body = _SlowBody(2 * MiB)
    reader = s3_module._S3Reader(ranged, "blob", "blob", '"etag"', 0, 2 * MiB, body)
    try:
        assert len(await reader.read(MiB)) == 256 * 1024
        # The next piece is being read ahead on its thread: give up waiting for it.
        with trio.move_on_after(0.05) as scope:
            await reader.read(MiB)
        assert scope.cancelled_caught
    finally:
        await reader.aclose()
    assert not body.closed_under_a_read


async def test_a_store_lost_mid_read_asks_to_retry(
    ranged: S3Driver, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = pseudo_random(6 * MiB)
    await ranged.put_content("blob", data)
    tracker = GetTracker(ranged, monkeypatch)
    tracker.fail_after = 2
    reader = await ranged.reader("blob")
    try:
        with trio.fail_after(60), pytest.raises(StorageUnavailable):
            await drain(reader, bytearray())
    finally:
        await reader.aclose()


def _lost_answer(driver: S3Driver, monkeypatch: pytest.MonkeyPatch, *, completes: bool) -> None:
    """Make a new file's complete answer NoSuchUpload: after really completing it (as a
    retry does when the first answer was lost), or after aborting it (as a sweep does)."""
    from botocore.exceptions import ClientError

    real = driver._call

    def call(method: str, **kwargs: Any) -> Any:
        if method == "complete_multipart_upload":
            if completes:
                real(method, **kwargs)
            else:
                real("abort_multipart_upload", Key=kwargs["Key"], UploadId=kwargs["UploadId"])
            error = {"Error": {"Code": "NoSuchUpload", "Message": "gone"}}
            raise ClientError(error, method)
        return real(method, **kwargs)

    monkeypatch.setattr(driver, "_call", call)


async def test_a_retried_complete_of_a_new_file_that_already_took_effect_succeeds(
    s3_endpoint: S3Endpoint,  # noqa: F811
    bucket: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    driver = S3Driver(
        s3_endpoint.options(bucket, prefix=f"q{secrets.token_hex(4)}", chunk_size=5 * MiB)
    )
    data = pseudo_random(11 * MiB + 3)
    _lost_answer(driver, monkeypatch, completes=True)
    writer = await driver.new_file("blobs/b/data", staging="uploads/s/data")
    await writer.write(data)
    await writer.commit()
    assert await read_all(driver, "blobs/b/data", chunk=MiB) == data
    driver.close()


async def test_a_new_file_aborted_under_its_writer_asks_to_retry(
    s3_endpoint: S3Endpoint,  # noqa: F811
    bucket: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    driver = S3Driver(
        s3_endpoint.options(bucket, prefix=f"q{secrets.token_hex(4)}", chunk_size=5 * MiB)
    )
    _lost_answer(driver, monkeypatch, completes=False)
    writer = await driver.new_file("blobs/b/data", staging="uploads/s/data")
    await writer.write(pseudo_random(11 * MiB + 3))
    with pytest.raises(StorageUnavailable):
        await writer.commit()
    with pytest.raises(PathNotFound):
        await driver.stat("blobs/b/data")
    driver.close()
