"""Where regd's CPU goes under one workload, with metrics and events on or off: a profile.

    python bench/profile_serve.py [--metrics] [--events none|pushes|pulls] [--workload pulls|push]
        [--seconds 10] [--images 200] [--top 25] [--match REGEX] [--save FILE]

One `regd serve --workers 1` runs under cProfile (one worker: the profile is one process's,
and the event loop's thread is the one measured; the database writer's thread is not). The
workload is that of bench/events.py: manifest GETs by 32 keep-alive clients (`wrk`), or
small-image pushes. Printed: CPU per operation (the profiler's own cost included, so only
differences between two profiles mean anything) and the functions with most time of their
own, then, with --match, the cumulative time of the functions whose name matches.
"""

from __future__ import annotations

import argparse
import cProfile  # noqa: F401  (imported so a missing profiler fails here, not in the server)
import io
import json
import os
import pstats
import re
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import loadgen, oci
from bench.events import Receiver
from bench.servers import REPO_ROOT, Server, _ready_or_stopped, _spawn, free_port, regd_command
from bench.workloads import hot
from bench.workloads.small import push_small_images


def start_profiled(env_settings: dict[str, str], profile: Path) -> Server:
    workdir = Path(tempfile.mkdtemp(prefix="bench-profile-"))
    port = free_port()
    cmd = regd_command(port, workdir / "data", 1, None)
    # `python -m regd ...` becomes `python -m cProfile -o FILE -m regd ...`.
    cmd[1:3] = ["-m", "cProfile", "-o", str(profile), "-m", "regd"]
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), **env_settings)
    proc, log_path = _spawn(cmd, workdir, env)
    server = Server("regd", port, proc, workdir, "regd --workers 1 (profiled)", log_path)
    _ready_or_stopped(server)
    return server


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--metrics", action="store_true")
    parser.add_argument("--events", choices=("none", "pushes", "pulls"), default="none")
    parser.add_argument("--workload", choices=("push", "pulls"), default="pulls")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--match", default=None)
    parser.add_argument("--save", default=None, help="keep the profile in this file")
    args = parser.parse_args()
    receiver = Receiver()
    endpoint = {
        "name": "bench",
        "url": f"http://127.0.0.1:{receiver.port}/",
        "pulls": args.events == "pulls",
    }
    settings = {
        "REGD_METRICS": "true" if args.metrics else "false",
        "REGD_EVENT_ENDPOINTS": json.dumps([endpoint] if args.events != "none" else []),
    }
    with tempfile.TemporaryDirectory(prefix="bench-profile-out-") as tmp:
        profile = Path(tmp) / "regd.prof"
        server = start_profiled(settings, profile)
        try:
            if args.workload == "pulls":
                hot.prepare(server)
                target = f"/v2/{hot.REPO}/manifests/{hot.TAG}"
                cpu = server.cpu()
                result = loadgen.wrk(
                    server.host, server.port, target, oci.MANIFEST_ACCEPT, 32, args.seconds
                )
                ops, rate = result.requests, result.req_s
            else:
                cpu = server.cpu()
                pushed = push_small_images(server, args.images, args.clients)
                ops, rate = args.images, pushed["images_s"]
            time.sleep(2.5)
            used = server.cpu() - cpu
        finally:
            server.stop()
        print(
            json.dumps(
                {
                    **{k: v for k, v in vars(args).items() if k in ("metrics", "events")},
                    "workload": args.workload,
                    "rate": rate,
                    "cpu_us_per_op": round(used / ops * 1e6, 1),
                }
            )
        )
        out = io.StringIO()
        stats = pstats.Stats(str(profile), stream=out)
        stats.sort_stats("tottime").print_stats(args.top)
        if args.match:
            stats.sort_stats("cumulative").print_stats(re.compile(args.match).pattern)
        print(out.getvalue())
        if args.save:
            stats.dump_stats(args.save)
    return 0


if __name__ == "__main__":
    sys.exit(main())
