"""Hashing a file that is already in storage, in bounded pieces."""

from __future__ import annotations

import ctypes
import ctypes.util
import struct

import trio

from regd.oci.digest import Digest, Hasher
from regd.storage import StorageDriver, Writer

# Large enough that handing each piece to a worker thread costs little (hashlib releases
# the GIL), small enough to bound memory per file.
HASH_CHUNK = 4 * 1024 * 1024


async def hash_stored(
    storage: StorageDriver,
    path: str,
    algorithm: str,
    *,
    copy_to: Writer | None = None,
) -> Hasher:
    """Hash the file at `path`; `copy_to` receives the same bytes on the way, so a copy
    is verified in one read. Raises PathNotFound when there is no such file."""
    hasher = Hasher(algorithm)
    reader = await storage.reader(path)
    try:
        while chunk := await reader.read(HASH_CHUNK):
            await trio.to_thread.run_sync(hasher.update, chunk)
            if copy_to is not None:
                await copy_to.write(chunk)
    finally:
        await reader.aclose()
    return hasher


# -- a sha256 whose running state can be saved and restored ---------------------------------
# hashlib cannot export a running hash, yet an upload session continued by another process
# must not re-read what it already received. OpenSSL's SHA256_Init/Update/Final (the same
# library hashlib uses) work on a SHA256_CTX, a plain struct of known layout that can be
# copied out and back. ctypes releases the GIL during each call, as hashlib does.

# SHA256_CTX: h[8], Nl, Nh, data[16], num, md_len, all 32-bit.
_CTX_SIZE = 112
# Names the saved format; a state of another kind is not restored (the data is hashed
# again from storage instead).
STATE_KIND = "openssl-sha256-ctx-v1"


def _load_libcrypto() -> ctypes.CDLL | None:
    # The usual names first: find_library runs `ldconfig -p` in a subprocess.
    candidates = ("libcrypto.so.3", "libcrypto.so", lambda: ctypes.util.find_library("crypto"))
    for candidate in candidates:
        name = candidate() if callable(candidate) else candidate
        if not name:
            continue
        try:
            lib = ctypes.CDLL(name)
            init, update, final = lib.SHA256_Init, lib.SHA256_Update, lib.SHA256_Final
        except (OSError, AttributeError):
            continue
        init.argtypes = [ctypes.c_void_p]
        init.restype = ctypes.c_int
        update.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t]
        update.restype = ctypes.c_int
        final.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
        final.restype = ctypes.c_int
        return lib
    return None


_libcrypto = _load_libcrypto()


class StateInvalid(ValueError):
    pass


class ResumableSha256(Hasher):
    """A sha256 `Hasher` whose state `export()`s to bytes and `restore()`s from them."""

    __slots__ = ("_ctx",)

    def __init__(self) -> None:
        super().__init__("sha256")
        if _libcrypto is None:  # pragma: no cover - checked by available()
            raise RuntimeError("libcrypto is not available")
        self._ctx = ctypes.create_string_buffer(_CTX_SIZE)
        if _libcrypto.SHA256_Init(self._ctx) != 1:
            raise RuntimeError("SHA256_Init failed")

    @staticmethod
    def available() -> bool:
        return _libcrypto is not None

    def update(self, data: bytes) -> None:
        assert _libcrypto is not None
        if _libcrypto.SHA256_Update(self._ctx, data, len(data)) != 1:
            raise RuntimeError("SHA256_Update failed")
        self.size += len(data)

    def digest(self) -> Digest:
        assert _libcrypto is not None
        # Final consumes the context: finish a copy, so hashing may go on.
        ctx = ctypes.create_string_buffer(self._ctx.raw, _CTX_SIZE)
        out = ctypes.create_string_buffer(32)
        if _libcrypto.SHA256_Final(out, ctx) != 1:
            raise RuntimeError("SHA256_Final failed")
        return Digest("sha256", out.raw.hex())

    def export(self) -> bytes:
        return self._ctx.raw

    @classmethod
    def restore(cls, state: bytes, size: int) -> ResumableSha256:
        """The hash as it was after `size` bytes; StateInvalid when `state` is not one
        this library saved after that many bytes."""
        if len(state) != _CTX_SIZE:
            raise StateInvalid(f"a sha256 state has {_CTX_SIZE} bytes, not {len(state)}")
        low, high = struct.unpack_from("=II", state, 32)
        (pending,) = struct.unpack_from("=I", state, 104)
        if (high << 32 | low) != size * 8 or pending != size % 64:
            raise StateInvalid(f"the saved sha256 state is not that of {size} bytes")
        hasher = cls()
        ctypes.memmove(hasher._ctx, state, _CTX_SIZE)
        hasher.size = size
        return hasher


def resumable(algorithm: str) -> Hasher:
    """A hasher whose state can be saved when the platform allows, else a plain one."""
    if algorithm == "sha256" and ResumableSha256.available():
        return ResumableSha256()
    return Hasher(algorithm)
