"""What the s3 driver and its writers share: S3's part limits, the error that asks for a
retry, a pending file's state, and a blocking call running on a thread of its own."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import trio
from outcome import Outcome

from regd.storage.base import StorageError

T = TypeVar("T")

MiB = 1024 * 1024
GiB = 1024 * MiB
# S3's own limits on multipart uploads.
MIN_PART = 5 * MiB
MAX_PART = 5 * GiB
MAX_PARTS = 10_000


class StorageUnavailable(StorageError):
    """The store is unreachable or asks to slow down: try again shortly."""

    retry_after = 2


@dataclass(slots=True)
class _State:
    """A pending file: parts of `upload` (number, etag, size) followed by `tail`."""

    upload: str | None = None
    parts: list[tuple[int, str, int]] = field(default_factory=list)
    tail: bytes = b""

    @property
    def parts_size(self) -> int:
        return sum(size for _, _, size in self.parts)

    @property
    def size(self) -> int:
        return self.parts_size + len(self.tail)

    def encode(self) -> bytes:
        head = json.dumps({"v": 1, "upload": self.upload, "parts": self.parts})
        return head.encode() + b"\n" + self.tail

    @classmethod
    def decode(cls, body: bytes) -> _State:
        head, _, tail = body.partition(b"\n")
        doc = json.loads(head)
        parts = [(int(n), str(etag), int(size)) for n, etag, size in doc["parts"]]
        return cls(doc.get("upload"), parts, tail)


class _InThread(Generic[T]):
    """A blocking call running on a thread of its own while its task goes on."""

    __slots__ = ("done", "result")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.result: Outcome[T] | None = None

    async def wait(self) -> T:
        await self.done.wait()
        assert self.result is not None
        return self.result.unwrap()
