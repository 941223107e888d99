"""Push and pull one large blob through a real regd process and report its memory.

    python bench/stream_rss.py [--size-mib 2048]

Starts `regd serve` on a free port with a temporary data dir, records the server's
resident memory (VmRSS sampled, and VmHWM, the kernel's peak) before, during and after a
streamed PATCH push and a full GET pull whose bytes are hashed and compared.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

# Run as a script, bench/ is not on the path as a package; its modules are shared.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.servers import start_regd, status_kib

CHUNK = 1024 * 1024


def pattern(size: int) -> Iterator[bytes]:
    block = os.urandom(CHUNK)
    sent = 0
    while sent < size:
        n = min(CHUNK, size - sent)
        # Vary each chunk so the blob is not one repeated MiB.
        yield sent.to_bytes(8, "big") + block[8:n] if n >= 8 else block[:n]
        sent += n


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-mib", type=int, default=2048)
    args = parser.parse_args()
    size = args.size_mib * CHUNK

    server = start_regd(1)
    base = f"http://{server.host}:{server.port}"
    # With one worker the server is one process; its memory is what is measured.
    pid = server.proc.pid
    try:
        idle = status_kib(pid, "VmRSS")
        peak = [idle]
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                peak[0] = max(peak[0], status_kib(pid, "VmRSS"))
                time.sleep(0.05)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()

        hasher = hashlib.sha256()

        def body() -> Iterator[bytes]:
            for chunk in pattern(size):
                hasher.update(chunk)
                yield chunk

        with httpx.Client(base_url=base, timeout=600) as client:
            start = time.perf_counter()
            location = client.post("/v2/bench/big/blobs/uploads/").headers["Location"]
            r = client.patch(location, content=body())
            assert r.status_code == 202, r.text
            digest = "sha256:" + hasher.hexdigest()
            r = client.put(r.headers["Location"], params={"digest": digest})
            assert r.status_code == 201, r.text
            push_s = time.perf_counter() - start
            push_peak = peak[0]

            start = time.perf_counter()
            pulled = hashlib.sha256()
            n = 0
            with client.stream("GET", f"/v2/bench/big/blobs/{digest}") as resp:
                assert resp.status_code == 200
                for chunk in resp.iter_bytes(CHUNK):
                    pulled.update(chunk)
                    n += len(chunk)
            pull_s = time.perf_counter() - start
            if n != size or "sha256:" + pulled.hexdigest() != digest:
                raise SystemExit("the pulled blob differs from the pushed one")
        stop.set()
        sampler.join()
        result = {
            "size_mib": args.size_mib,
            "rss_idle_mib": round(idle / 1024, 1),
            "rss_peak_push_mib": round(push_peak / 1024, 1),
            "rss_peak_total_mib": round(peak[0] / 1024, 1),
            "vmhwm_mib": round(status_kib(pid, "VmHWM") / 1024, 1),
            "rss_growth_mib": round((peak[0] - idle) / 1024, 1),
            "push_mb_s": round(size / push_s / 1e6, 1),
            "pull_mb_s": round(size / pull_s / 1e6, 1),
            "bytes_verified": True,
        }
        print(json.dumps(result, indent=2))
    finally:
        server.stop()


if __name__ == "__main__":
    main()
