"""The CPU an event costs regd, measured in one process: steadier than rates on a busy machine.

    python bench/events_cost.py [--ops 3000] [--rounds 4]

1. A blob link (the metadata write that ends every blob push) by 16 concurrent tasks on
   SQLite, without events and with one endpoint, in alternating rounds: CPU per write.
2. Delivering the events so written in batches of 100 (and of 20) to a receiver in another
   process: CPU per event, the reading, the POST and the acknowledgement included.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.servers import free_port
from regd.config import EventEndpoint
from regd.events import Deliverer
from regd.metadata import MetadataStore, Origin, sqlite_url
from regd.metadata.outbox import EndpointFilter, EventRouting

ORIGIN = Origin("1", "127.0.0.1", "reg:5000", "PUT", "bench", "", "http://reg:5000")
RECEIVER = """
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
class H(BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", "0")))
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()
    def log_message(self, *args):
        pass
ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"""


async def links(store: MetadataStore, ops: int, tag: str) -> float:
    """CPU seconds of `ops` blob links by 16 tasks."""
    started = time.process_time()
    async with trio.open_nursery() as nursery:
        for k in range(16):

            async def work(k: int = k) -> None:
                for i in range(ops // 16):
                    digest = f"sha256:{k:04d}{i:056d}{tag:>04}"
                    await store.link_blob(f"r{k}", digest, 3, origin=ORIGIN)

            nursery.start_soon(work)
    return time.process_time() - started


def fresh_store(directory: Path, name: str, events: bool) -> MetadataStore:
    store = MetadataStore(sqlite_url(directory / f"{name}.db"))
    store.create_schema()
    if events:
        store.configure_events(EventRouting((EndpointFilter("bench"),)))
    return store


async def main(args: argparse.Namespace, port: int) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-events-") as tmp:
        directory = Path(tmp)
        per_write: dict[bool, list[float]] = {False: [], True: []}
        for i in range(args.rounds):
            for events in (False, True) if i % 2 == 0 else (True, False):
                store = fresh_store(directory, f"w{i}{events}", events)
                await links(store, 100, "warm")
                cpu = await links(store, args.ops, "x")
                per_write[events].append(cpu / args.ops * 1e6)
                await store.aclose()
        off, on = statistics.median(per_write[False]), statistics.median(per_write[True])
        print(json.dumps({"write_cpu_us_off": round(off, 1), "write_cpu_us_on": round(on, 1)}))

        store = fresh_store(directory, "deliver", True)
        await links(store, args.ops, "d")
        async with httpx.AsyncClient() as client:
            for batch in (100, 20):
                deliverer = Deliverer(
                    store,
                    EventEndpoint("bench", f"http://127.0.0.1:{port}/"),
                    client,
                    batch=batch,
                    poll_interval=0.0,
                )
                sent, started = 0, time.process_time()
                while sent < args.ops // 2:
                    pending = await store.pending_events("bench", batch)
                    if not pending or not await deliverer._deliver(pending, 0):
                        break
                    sent += len(pending)
                cpu = time.process_time() - started
                per_event = round(cpu / max(sent, 1) * 1e6, 1)
                print(json.dumps({"batch": batch, "deliver_cpu_us_per_event": per_event}))
        await store.aclose()


def run(args: argparse.Namespace) -> None:
    port = free_port()
    receiver = subprocess.Popen([sys.executable, "-c", RECEIVER, str(port)])
    try:
        time.sleep(1)
        trio.run(main, args, port)
    finally:
        receiver.kill()
        receiver.wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=4)
    run(parser.parse_args())
