from __future__ import annotations

import pytest

from regd.storage import MemoryDriver
from tests.storage.conformance import StorageDriverSuite


class TestMemoryDriver(StorageDriverSuite):
    @pytest.fixture
    def driver(self) -> MemoryDriver:
        return MemoryDriver()
