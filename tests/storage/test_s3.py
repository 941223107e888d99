from __future__ import annotations

import itertools
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest

from regd.storage import PathNotFound
from regd.storage.s3 import MiB, S3Driver, S3Options, StorageUnavailable
from tests.helpers.s3 import S3Endpoint, s3_endpoint  # noqa: F401 - the fixture
from tests.helpers.servers import free_port
from tests.storage.conformance import StorageDriverSuite, pseudo_random, read_all, write_file


@pytest.fixture(scope="module")
def bucket(s3_endpoint: S3Endpoint) -> str:  # noqa: F811
    return s3_endpoint.create_bucket()


class TestS3Driver(StorageDriverSuite):
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
