"""Running a bounded number of operations on several threads, each with its own connection."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from bench.httpc import Connection
from bench.servers import Server


@dataclass
class PoolResult:
    done: int = 0
    errors: int = 0
    seconds: float = 0.0
    stopped_by_deadline: bool = False
    first_error: str = ""
    latencies: list[float] = field(default_factory=list)


def run_indexed(
    server: Server,
    count: int,
    clients: int,
    operation: Callable[[Connection, int], object],
    *,
    start: int = 0,
    deadline_s: float | None = None,
) -> PoolResult:
    """Call `operation(conn, i)` for i in [start, start+count) from `clients` threads.

    Stops handing out indices once `deadline_s` has passed (the result says so).
    """
    counter = itertools.count(start)
    end = start + count
    result = PoolResult()
    lock = threading.Lock()
    t_start = time.perf_counter()
    stop_at = t_start + deadline_s if deadline_s is not None else None

    def client() -> None:
        latencies: list[float] = []
        done = errors = 0
        with server.connect(timeout=60) as conn:
            while True:
                if stop_at is not None and time.perf_counter() > stop_at:
                    with lock:
                        result.stopped_by_deadline = True
                    break
                i = next(counter)
                if i >= end:
                    break
                t0 = time.perf_counter()
                try:
                    operation(conn, i)
                except Exception as exc:
                    errors += 1
                    with lock:
                        result.first_error = result.first_error or repr(exc)[:300]
                    conn.close()
                else:
                    done += 1
                    latencies.append(time.perf_counter() - t0)
        with lock:
            result.done += done
            result.errors += errors
            result.latencies.extend(latencies)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    result.seconds = time.perf_counter() - t_start
    return result
