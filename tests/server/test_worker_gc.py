"""A worker serves with what it built at startup frozen out of garbage collection."""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Any

import pytest

from regd import server
from regd.config import Config


async def test_a_worker_serves_with_its_startup_objects_frozen(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    frozen_when_serving: list[int] = []

    async def serve(*args: Any, **kwargs: Any) -> None:
        frozen_when_serving.append(gc.get_freeze_count())

    config = Config(data_dir=tmp_path)
    server.prepare(config)
    monkeypatch.setattr(server, "worker_serve", serve)
    # This process's hypercorn stays as it is.
    monkeypatch.setattr(server, "install", lambda limits: None)
    gc.unfreeze()
    try:
        await server._serve_worker(config, [])  # type: ignore[arg-type]
    finally:
        gc.unfreeze()
    # The application and its registry are among the objects frozen.
    (frozen,) = frozen_when_serving
    assert frozen > 10_000
