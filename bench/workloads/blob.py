"""One large blob: monolithic and chunked push, full pull with hashing, 1 MiB range reads."""

from __future__ import annotations

import hashlib
import queue
import random
import threading
import time
from typing import Any

from bench import oci
from bench.servers import Server
from bench.settings import MIB
from bench.stats import ms, percentile, rate


class BigBlob:
    """The blob bytes (kept in memory, so sending costs no disk reads) and their digest."""

    def __init__(self, size: int, seed: int) -> None:
        rng = random.Random(seed)
        piece = 16 * MIB
        self.data = b"".join(rng.randbytes(min(piece, size - at)) for at in range(0, size, piece))
        self.digest = oci.digest_of(self.data)

    def __len__(self) -> int:
        return len(self.data)


def supports_single_post(server: Server) -> bool:
    """Whether the registry stores a blob sent whole in the POST (it may decline with 202)."""
    probe = f"probe-{server.port}".encode() * 64
    with server.connect() as conn:
        return oci.push_blob_single_post(conn, "probe/mono", probe, oci.digest_of(probe))


def push_monolithic(server: Server, blob: BigBlob) -> dict[str, Any]:
    single = supports_single_post(server)
    with server.connect(timeout=600) as conn:
        start = time.perf_counter()
        if single:
            stored = oci.push_blob_single_post(conn, "big/mono", blob.data, blob.digest)
            assert stored, "registry declined a monolithic POST it accepted before"
        else:
            oci.push_blob(conn, "big/mono", blob.data, blob.digest)
        elapsed = time.perf_counter() - start
    return {
        "mode": "POST ?digest= with body" if single else "POST, then PUT ?digest= with body",
        "seconds": round(elapsed, 3),
        "mb_s": rate(len(blob) / 1e6, elapsed),
    }


def push_chunked(server: Server, blob: BigBlob, chunk: int) -> dict[str, Any]:
    with server.connect(timeout=600) as conn:
        start = time.perf_counter()
        requests = oci.push_blob_chunked(conn, "big/chunked", blob.data, blob.digest, chunk)
        elapsed = time.perf_counter() - start
    return {
        "chunk_mib": chunk // MIB,
        "requests": requests,
        "seconds": round(elapsed, 3),
        "mb_s": rate(len(blob) / 1e6, elapsed),
    }


def pull(server: Server, repo: str, blob: BigBlob) -> dict[str, Any]:
    """GET the whole blob; a second thread hashes while the first keeps receiving."""
    pieces: queue.Queue[bytes | None] = queue.Queue(maxsize=16)
    hasher = hashlib.sha256()
    received = [0]

    def consume() -> None:
        while (piece := pieces.get()) is not None:
            hasher.update(piece)
            received[0] += len(piece)

    worker = threading.Thread(target=consume)
    worker.start()
    try:
        with server.connect(timeout=600) as conn:
            start = time.perf_counter()
            r = conn.request("GET", f"/v2/{repo}/blobs/{blob.digest}", sink=pieces.put)
            pieces.put(None)
            worker.join()
            elapsed = time.perf_counter() - start
    finally:
        if worker.is_alive():
            pieces.put(None)
            worker.join()
    oci.expect(r, "pull blob", 200)
    verified = received[0] == len(blob) and "sha256:" + hasher.hexdigest() == blob.digest
    if not verified:
        raise RuntimeError(f"{server.name}: pulled bytes do not match {blob.digest}")
    return {"seconds": round(elapsed, 3), "mb_s": rate(len(blob) / 1e6, elapsed), "verified": True}


def range_reads(server: Server, repo: str, blob: BigBlob, count: int, span: int) -> dict[str, Any]:
    """Sequential 1 MiB range GETs at random offsets on one connection, each checked."""
    rng = random.Random(7)
    latencies: list[float] = []
    with server.connect() as conn:
        start = time.perf_counter()
        for _ in range(count):
            offset = rng.randrange(0, len(blob) - span)
            headers = {"Range": f"bytes={offset}-{offset + span - 1}"}
            t0 = time.perf_counter()
            r = conn.request("GET", f"/v2/{repo}/blobs/{blob.digest}", headers)
            latencies.append(time.perf_counter() - t0)
            oci.expect(r, "range read", 206)
            if r.body != blob.data[offset : offset + span]:
                raise RuntimeError(f"{server.name}: range {offset} returned wrong bytes")
        elapsed = time.perf_counter() - start
    return {
        "reads": count,
        "bytes_each": span,
        "req_s": rate(count, elapsed),
        "p50_ms": ms(percentile(latencies, 50)),
        "p99_ms": ms(percentile(latencies, 99)),
        "verified": True,
    }
