from __future__ import annotations

import secrets
from collections.abc import AsyncIterator

import pytest

from regd.storage.s3 import MiB, S3Driver
from tests.helpers.s3 import S3Endpoint, s3_endpoint  # noqa: F401 - the fixture
from tests.storage.conformance import StorageDriverSuite


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
