"""How the s3 driver's reader fares on moto, directly and behind connections of limited rate.

    python bench/s3_read.py [--size-mib 64] [--rate-mb 60] [--runs 3]

Starts a moto server, writes one blob through regd's s3 driver, then reads it back
through the driver (no HTTP server in between) several ways, reporting medians:

- on moto directly: the reader as it is, and forced into ranged GETs after its first
  piece at a few range sizes and counts in flight (what every further GET costs on moto);
- through a proxy here that lets each connection carry at most --rate-mb MB/s towards
  the driver, as one connection to S3 does: one stream only, and the reader as it is.

Hold the bench lock while it runs (it times things).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench import s3 as bench_s3
from bench.servers import HOST, free_port
from regd.storage import s3
from regd.storage.s3 import S3Driver, S3Options

MIB = 1024 * 1024


async def _pump(source: trio.SocketStream, sink: trio.SocketStream, rate: float | None) -> None:
    start = time.perf_counter()
    sent = 0
    try:
        while data := await source.receive_some(65536):
            await sink.send_all(data)
            sent += len(data)
            if rate:
                ahead = sent / rate - (time.perf_counter() - start)
                if ahead > 0:
                    await trio.sleep(ahead)
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        pass
    finally:
        with trio.CancelScope(shield=True):
            await sink.aclose()


def start_proxy(target_host: str, target_port: int, rate: float) -> int:
    """A TCP proxy on a free port whose connections each carry `rate` bytes/s back."""
    port = free_port()

    async def handle(client: trio.SocketStream) -> None:
        try:
            upstream = await trio.open_tcp_stream(target_host, target_port)
        except OSError:
            await client.aclose()
            return
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_pump, client, upstream, None)
            nursery.start_soon(_pump, upstream, client, rate)

    def serve() -> None:
        trio.run(trio.serve_tcp, handle, port)

    threading.Thread(target=serve, daemon=True).start()
    time.sleep(0.5)
    return port


def driver_for(url: str, bucket: str) -> S3Driver:
    return S3Driver(
        S3Options(
            bucket=bucket,
            endpoint_url=url,
            region=bench_s3.REGION,
            path_style=True,
            access_key=bench_s3.ACCESS_KEY,
            secret_key=bench_s3.SECRET_KEY,
        )
    )


def count_gets(driver: S3Driver) -> list[int]:
    gets = [0]
    original = driver._call

    def call(method: str, **kwargs: Any) -> Any:
        if method == "get_object":
            gets[0] += 1
        return original(method, **kwargs)

    driver._call = call  # type: ignore[method-assign]
    return gets


async def read_through(driver: S3Driver, size: int) -> None:
    reader = await driver.reader("blob")
    got = 0
    try:
        while data := await reader.read(MIB):
            got += len(data)
    finally:
        await reader.aclose()
    if got != size:
        raise RuntimeError(f"read {got} bytes of {size}")


async def measure(
    label: str, read: Callable[[], Awaitable[None]], size: int, runs: int, patch: dict[str, Any],
    gets: list[int],
) -> None:  # fmt: skip
    saved = {name: getattr(s3, name) for name in patch}
    for name, value in patch.items():
        setattr(s3, name, value)
    try:
        seconds = []
        for _ in range(runs):
            gets[0] = 0
            start = time.perf_counter()
            await read()
            seconds.append(time.perf_counter() - start)
    finally:
        for name, value in saved.items():
            setattr(s3, name, value)
    median = statistics.median(seconds)
    runs_s = ", ".join(f"{s:.2f}" for s in seconds)
    print(f"{label:44} {size / 1e6 / median:7.0f} MB/s  ({gets[0]} GETs; runs {runs_s} s)")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-mib", type=int, default=64)
    parser.add_argument("--rate-mb", type=float, default=60.0)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    size = args.size_mib * MIB
    os.environ.pop("AWS_CA_BUNDLE", None)
    moto = bench_s3.start_moto()
    try:
        bucket = moto.create_bucket("bench-read")
        direct = driver_for(moto.url, bucket)
        port = int(moto.url.rsplit(":", 1)[1])
        proxy = start_proxy(HOST, port, args.rate_mb * 1e6)
        limited = driver_for(f"http://{HOST}:{proxy}", bucket)

        async def run() -> None:
            writer = await direct.new_file("blob", staging="staging")
            block = os.urandom(MIB)
            for n in range(args.size_mib):
                await writer.write(n.to_bytes(8, "big") + block[8:])
            await writer.commit()
            gets = count_gets(direct)
            print(f"{args.size_mib} MiB blob, moto directly:")
            await measure("  reader as it is", partial_read(direct), size, args.runs, {}, gets)
            for count, mib in [(4, 8), (4, 16), (2, 32)]:
                ranges = {"STREAM_ENOUGH": float("inf"), "STREAM_PROBE": 0}
                ranges |= {"RANGES_IN_FLIGHT": count, "RANGE_SIZE": mib * MIB}
                label = f"  ranges from the 1st piece on: {count} x {mib} MiB"
                await measure(label, partial_read(direct), size, args.runs, ranges, gets)
            gets = count_gets(limited)
            print(f"through connections of at most {args.rate_mb:.0f} MB/s each:")
            one = {"STREAM_ENOUGH": 0.0}
            await measure("  one stream only", partial_read(limited), size, args.runs, one, gets)
            await measure("  reader as it is", partial_read(limited), size, args.runs, {}, gets)

        def partial_read(driver: S3Driver) -> Callable[[], Awaitable[None]]:
            return lambda: read_through(driver, size)

        trio.run(run)
        direct.close()
        limited.close()
    finally:
        moto.stop()


if __name__ == "__main__":
    main()
