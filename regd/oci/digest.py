"""Content digests (`algorithm:encoded`), as the OCI image spec defines them."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Protocol

_ALGORITHMS: dict[str, int] = {"sha256": 64, "sha512": 128}
# The grammar admits other algorithms; only registered ones can be verified.
_GRAMMAR = re.compile(r"^[a-z0-9]+(?:[+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]+$")


class DigestError(ValueError):
    """A digest string is malformed or names an algorithm we cannot verify."""


class _Hash(Protocol):
    def update(self, data: bytes, /) -> None: ...
    def hexdigest(self) -> str: ...


@dataclass(frozen=True, slots=True, order=True)
class Digest:
    algorithm: str
    hex: str

    @classmethod
    def parse(cls, text: str) -> Digest:
        if len(text) > 256 or not _GRAMMAR.match(text):
            raise DigestError(f"malformed digest {text[:80]!r}")
        algorithm, _, encoded = text.partition(":")
        length = _ALGORITHMS.get(algorithm)
        if length is None:
            raise DigestError(f"unsupported digest algorithm {algorithm!r}")
        if len(encoded) != length or not all(c in "0123456789abcdef" for c in encoded):
            raise DigestError(f"{algorithm} digest must be {length} lowercase hex characters")
        return cls(algorithm, encoded)

    @classmethod
    def of(cls, data: bytes, algorithm: str = "sha256") -> Digest:
        h = Hasher(algorithm)
        h.update(data)
        return h.digest()

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.hex}"


def is_supported_algorithm(algorithm: str) -> bool:
    return algorithm in _ALGORITHMS


class Hasher:
    """A running hash that also counts the bytes it has seen."""

    __slots__ = ("_h", "algorithm", "size")

    def __init__(self, algorithm: str = "sha256") -> None:
        if algorithm not in _ALGORITHMS:
            raise DigestError(f"unsupported digest algorithm {algorithm!r}")
        self.algorithm = algorithm
        self._h: _Hash = hashlib.new(algorithm)
        self.size = 0

    def update(self, data: bytes) -> None:
        self._h.update(data)
        self.size += len(data)

    def digest(self) -> Digest:
        return Digest(self.algorithm, self._h.hexdigest())
