"""Load generators: `wrk` for GET rates, and a closed-loop raw-socket generator in several
processes for anything else (HEAD in particular, which wrk mishandles).

Both report their own CPU time so one can see that the generator is not the bottleneck.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from typing import Any

from bench.auth import NO_AUTH, Credentials
from bench.httpc import Connection
from bench.stats import ms, percentile, rate

START_DELAY_S = 3.0


@dataclass(frozen=True)
class RequestSpec:
    method: str
    target: str
    headers: dict[str, str] = field(default_factory=dict)
    status: int = 200


@dataclass
class LoadResult:
    generator: str
    clients: int
    seconds: float
    requests: int
    errors: int
    req_s: float
    p50_ms: float
    p99_ms: float
    client_cpu_s: float

    @property
    def client_cpu_pct(self) -> float:
        """Generator CPU as a percentage of one core over the run."""
        return round(100 * self.client_cpu_s / self.seconds, 1) if self.seconds else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "client_cpu_pct_of_one_core": self.client_cpu_pct}


def self_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def wait_until(moment: float) -> None:
    delay = moment - time.time()
    if delay > 0:
        time.sleep(delay)


def run_in_processes(
    job: Callable[..., dict[str, Any]], argsets: Sequence[tuple[Any, ...]]
) -> list[dict[str, Any]]:
    """Run `job(*args)` once per argument tuple, each in its own fresh process."""
    ctx = get_context("spawn")
    with ProcessPoolExecutor(max_workers=len(argsets), mp_context=ctx) as pool:
        futures = [pool.submit(job, *args) for args in argsets]
        return [f.result() for f in futures]


def _closed_loop_job(
    host: str,
    port: int,
    specs: list[RequestSpec],
    threads: int,
    start_at: float,
    seconds: float,
    credentials: Credentials = NO_AUTH,
) -> dict[str, Any]:
    """One process: `threads` clients, each on its own keep-alive connection, each sending
    its next request as soon as the previous answer is read. Each client gets its
    credentials (a Bearer token: fetched here) before the clock starts."""
    end_at = start_at + seconds
    latencies: list[list[float]] = [[] for _ in range(threads)]
    errors = [0] * threads
    conns = [Connection(host, port, timeout=30) for _ in range(threads)]
    own_specs = [
        [
            RequestSpec(
                s.method, s.target, {**s.headers, **credentials.headers_for(s.target)}, s.status
            )
            for s in specs
        ]
        for _ in range(threads)
    ]
    for conn, mine in zip(conns, own_specs, strict=True):  # warm up before the clock starts
        spec = mine[0]
        conn.request(spec.method, spec.target, spec.headers)

    def client(index: int) -> None:
        conn, mine, client_specs = conns[index], latencies[index], own_specs[index]
        n = index
        wait_until(start_at)
        clock = time.perf_counter
        while time.time() < end_at:
            spec = client_specs[n % len(client_specs)]
            n += 1
            t0 = clock()
            try:
                ok = conn.request(spec.method, spec.target, spec.headers).status == spec.status
            except OSError:
                ok = False
            if ok:
                mine.append(clock() - t0)
            else:
                errors[index] += 1

    cpu0 = self_cpu()
    workers = [threading.Thread(target=client, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    for conn in conns:
        conn.close()
    merged = [v for sub in latencies for v in sub]
    return {"latencies": merged, "errors": sum(errors), "cpu": self_cpu() - cpu0}


def closed_loop(
    host: str,
    port: int,
    specs: list[RequestSpec],
    clients: int,
    seconds: float,
    processes: int,
    credentials: Credentials = NO_AUTH,
) -> LoadResult:
    processes = max(1, min(processes, clients))
    start_at = time.time() + START_DELAY_S
    shares = [
        clients // processes + (1 if i < clients % processes else 0) for i in range(processes)
    ]
    argsets = [(host, port, specs, n, start_at, seconds, credentials) for n in shares]
    parts = run_in_processes(_closed_loop_job, argsets)
    latencies = [v for part in parts for v in part["latencies"]]
    return LoadResult(
        generator=f"python raw-socket closed loop ({processes} processes)",
        clients=clients,
        seconds=seconds,
        requests=len(latencies),
        errors=sum(p["errors"] for p in parts),
        req_s=rate(len(latencies), seconds),
        p50_ms=ms(percentile(latencies, 50)),
        p99_ms=ms(percentile(latencies, 99)),
        client_cpu_s=round(sum(p["cpu"] for p in parts), 3),
    )


WRK_SCRIPT = """\
wrk.method = "GET"
{headers}
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH {{"requests":%d,"duration_us":%d,"status":%d,"connect":%d,"read":%d,' ..
    '"write":%d,"timeout":%d,"p50_us":%d,"p99_us":%d}}\\n',
    summary.requests, summary.duration, e.status, e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
"""


def wrk(
    host: str,
    port: int,
    target: str,
    headers: dict[str, str],
    clients: int,
    seconds: float,
    threads: int = 1,
) -> LoadResult:
    """GET `target` with wrk; CPU comes from wait4 on the wrk process itself."""
    lua_headers = "\n".join(f'wrk.headers["{k}"] = "{v}"' for k, v in headers.items())
    with tempfile.TemporaryDirectory(prefix="bench-wrk-") as tmp:
        script = os.path.join(tmp, "get.lua")
        out_path = os.path.join(tmp, "out.txt")
        with open(script, "w") as fh:
            fh.write(WRK_SCRIPT.format(headers=lua_headers))
        cmd = [
            "wrk", f"-t{threads}", f"-c{clients}", f"-d{seconds:g}s", "--timeout", "10s",
            "-s", script, f"http://{host}:{port}{target}",
        ]  # fmt: skip
        with open(out_path, "wb") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
            _, status, usage = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
        with open(out_path) as fh:
            text = fh.read()
    line = next((ln for ln in text.splitlines() if ln.startswith("BENCH ")), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {text[-500:]}")
    data = json.loads(line[len("BENCH ") :])
    errors = sum(data[k] for k in ("status", "connect", "read", "write", "timeout"))
    duration = data["duration_us"] / 1e6
    return LoadResult(
        generator=f"wrk -t{threads}",
        clients=clients,
        seconds=round(duration, 3),
        requests=data["requests"],
        errors=errors,
        req_s=rate(data["requests"] - data["status"], duration),
        p50_ms=round(data["p50_us"] / 1000, 3),
        p99_ms=round(data["p99_us"] / 1000, 3),
        client_cpu_s=round(usage.ru_utime + usage.ru_stime, 3),
    )
