"""What events cost: small-image pushes with one webhook endpoint against none, same build.

    python bench/events.py [--rounds 5] [--images 200] [--clients 16] [--workers 2] [--database URL]
    python bench/events.py --workload pulls [--seconds 10]     # manifest GETs, pulls reported
    ... --with-metrics       # the side without events has metrics off too
    ... --metrics-only       # metrics on against off, no endpoint on either side
    ... --workload pulls --no-pull-events   # an endpoint that does not hear of pulls

Each round starts a fresh regd twice, once without events and once with one endpoint (a
local receiver answering 200 at once), in alternating order, and pushes the same number of
small images (3 x 4 KiB layers, a config, a manifest; 5 events an image) with each. On a
shared machine single runs swing more than the difference sought, so the rounds interleave
and the medians are compared. With events on, the time until the receiver has every event
is measured as well. `--workload pulls` compares manifest GETs by 32 keep-alive clients
(`wrk`) without events and with an endpoint that hears of pulls. The receiver keeps
connections alive (HTTP/1.1), as receivers in production do. A GET run also reports
`busiest_share`, the busiest regd process's part of regd's CPU: with two workers, wrk's
connections sometimes all land on one of them, and such a run serves about half the
requests of one where both serve; CPU per request does not depend on it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import loadgen, oci
from bench.servers import Server, cpu_seconds, free_port, process_tree, start_regd
from bench.workloads import hot
from bench.workloads.small import push_small_images


class Receiver:
    """Counts the events posted to it."""

    def __init__(self) -> None:
        self.count = 0
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            # Keep-alive, as receivers in production speak.
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                with receiver.lock:
                    receiver.count += len(json.loads(body)["events"])
                self.send_response(200)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.port = free_port()
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait_for(self, count: int, timeout: float = 300.0) -> float:
        started = time.monotonic()
        while self.count < count:
            if time.monotonic() - started > timeout:
                raise SystemExit(f"only {self.count} of {count} events arrived in {timeout:g} s")
            time.sleep(0.01)
        return time.monotonic() - started


def pull_run(
    server: Server, events: bool, receiver: Receiver, args: argparse.Namespace
) -> dict[str, Any]:
    hot.prepare(server)
    target = f"/v2/{hot.REPO}/manifests/{hot.TAG}"
    before, cpu = receiver.count, server.cpu()
    started = cpu_by_process(server)
    result = loadgen.wrk(server.host, server.port, target, oci.MANIFEST_ACCEPT, 32, args.seconds)
    used = {pid: t - started.get(pid, 0.0) for pid, t in cpu_by_process(server).items()}
    out: dict[str, Any] = {"events": events, "req_s": result.req_s, "errors": result.errors}
    # The workers share one listening socket, and which of them accepts each of wrk's
    # connections is a race: near 1.0, one worker served (nearly) all of them, and the
    # rate is about half that of a run where both did. Compare runs alike in this.
    out["busiest_share"] = round(max(used.values()) / (sum(used.values()) or 1.0), 2)
    if events and not (args.metrics_only or args.no_pull_events):
        # Push events (5) and one event per GET: best effort, so counted, not awaited.
        time.sleep(2.5)
        out["pull_events"] = receiver.count - before - 5
    else:
        time.sleep(2.5)
    out["cpu_us_per_request"] = round((server.cpu() - cpu) / result.requests * 1e6, 1)
    return out


def cpu_by_process(server: Server) -> dict[int, float]:
    return {pid: cpu_seconds(pid) for pid in process_tree(server.proc.pid)}


def one_run(events: bool, receiver: Receiver, args: argparse.Namespace) -> dict[str, Any]:
    endpoint = [
        {
            "name": "bench",
            "url": f"http://127.0.0.1:{receiver.port}/",
            "pulls": args.workload == "pulls" and not args.no_pull_events,
        }
    ]
    settings = {
        "REGD_EVENT_ENDPOINTS": json.dumps(endpoint if events and not args.metrics_only else [])
    }
    if args.with_metrics or args.metrics_only:
        # "Everything a production setup turns on" against "all of it off".
        settings["REGD_METRICS"] = "true" if events else "false"
    saved = {name: os.environ.get(name) for name in settings}
    os.environ.update(settings)
    try:
        server = start_regd(args.workers, args.database)
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name)
            else:
                os.environ[name] = value
    try:
        if args.workload == "pulls":
            return pull_run(server, events, receiver, args)
        before = receiver.count
        load = os.getloadavg()[0]
        cpu = server.cpu()
        result = push_small_images(server, args.images, args.clients)
        out = {
            "events": events,
            "images_s": result["images_s"],
            "errors": result["errors"],
            "load1": round(load, 2),
        }
        if events and not args.metrics_only:
            out["delivered_after_s"] = round(receiver.wait_for(before + 5 * args.images), 3)
        else:
            # The same pause as delivery takes on the other side, for idle work to show.
            time.sleep(args.settle)
        # regd's CPU per image, deliveries included: steadier than a rate on a busy machine.
        out["cpu_ms_per_image"] = round((server.cpu() - cpu) / args.images * 1000, 2)
        return out
    finally:
        server.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--database", default=None)
    parser.add_argument("--settle", type=float, default=1.0)
    parser.add_argument("--workload", choices=("push", "pulls"), default="push")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument(
        "--with-metrics",
        action="store_true",
        help="turn /metrics off on the side without events (it is on by default)",
    )
    parser.add_argument(
        "--metrics-only",
        action="store_true",
        help="the 'on' side has metrics and no event endpoint: what metrics alone cost",
    )
    parser.add_argument(
        "--no-pull-events",
        action="store_true",
        help="with --workload pulls: the endpoint does not hear of pulls (the default)",
    )
    args = parser.parse_args()
    receiver = Receiver()
    runs = []
    for i in range(args.rounds):  # Ctrl-C stops the servers too
        order = (False, True) if i % 2 == 0 else (True, False)
        for events in order:
            run = one_run(events, receiver, args)
            runs.append(run)
            print(json.dumps(run), flush=True)
    rate, cost = (
        ("req_s", "cpu_us_per_request")
        if args.workload == "pulls"
        else ("images_s", "cpu_ms_per_image")
    )
    off = [r[rate] for r in runs if not r["events"]]
    on = [r[rate] for r in runs if r["events"]]
    off_cpu = [r[cost] for r in runs if not r["events"]]
    on_cpu = [r[cost] for r in runs if r["events"]]
    summary = {
        f"off_median_{rate}": statistics.median(off),
        f"on_median_{rate}": statistics.median(on),
        "on_vs_off": round(statistics.median(on) / statistics.median(off), 3),
        f"off_median_{cost}": statistics.median(off_cpu),
        f"on_median_{cost}": statistics.median(on_cpu),
        "cpu_on_vs_off": round(statistics.median(on_cpu) / statistics.median(off_cpu), 3),
        "errors": sum(r["errors"] for r in runs),
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
