"""Three regd replicas on one bucket and one PostgreSQL database, against one of them.

    python bench/replicas.py [--size-mib 1024] [--rounds 3] [--clients 32] [--seconds 20]

Starts one moto server (moto's S3 endpoint) with one bucket, creates a PostgreSQL database
of its own (dropped at the end) and starts three `regd serve` processes on them, each on
its own port and data directory. Then, on that same trio:

- chunked upload: one blob in 16 MiB PATCHes, every request (the POST, each PATCH, the
  PUT) sent to the next replica in turn, against the same upload sent entirely to one
  replica; the two alternate, `--rounds` times each. MB/s both ways and their ratio
  (issue 13's target: spread >= 0.8x one replica).
- mixed load: 80 % pulls (manifest then a layer), 20 % pushes of small images, by
  `--clients` clients for `--seconds`, all on one replica, then spread over the three
  (each generator process, with its clients, on one replica). ops/s, errors, p50/p99 per
  operation, and the ratio.

Each measured run also records the CPU time moto, each replica and the whole machine spent
in it: what bounded the run. A table is printed and everything is written to
bench/results/replicas-<timestamp>.json.
"""

from __future__ import annotations

import argparse
import itertools
import os
import platform
import secrets
import statistics
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql
from rich.console import Console
from rich.table import Table

# Run as a script, bench/ is not on the path as a package; its modules are shared.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench import machine, oci, report
from bench import s3 as object_storage
from bench.httpc import Connection
from bench.loadgen import START_DELAY_S, self_cpu
from bench.servers import CLK_TCK, Server, cpu_seconds, process_tree, regd_description
from bench.settings import MIB, Settings
from bench.stats import ms, percentile, rate
from bench.workloads import mixed
from bench.workloads.blob import BigBlob

RESULTS_DIR = Path(__file__).resolve().parent / "results"
REPLICAS = 3
# Trust authentication on the local server, as user postgres or else root.
ADMIN_URLS = (
    "postgresql://postgres@127.0.0.1:5432/postgres",
    "postgresql://root@127.0.0.1:5432/postgres",
)
TARGET_RATIO = 0.8
CHUNKED_ONE_REPO = "replicas/chunked-one"
CHUNKED_SPREAD_REPO = "replicas/chunked-spread"

Log = Callable[[str], None]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    defaults = Settings()
    p = argparse.ArgumentParser(
        prog="python bench/replicas.py",
        description=(
            "Start one moto server (one bucket), a PostgreSQL database of its own (dropped at "
            "the end) and three regd replicas on them; time a chunked upload spread request "
            "by request over the three against the same upload on one replica, and the mixed "
            "80/20 load on one replica against spread over three. Prints a table and writes "
            "bench/results/replicas-<timestamp>.json."
        ),
    )
    p.add_argument(
        "--size-mib", type=int, default=1024, metavar="MIB",
        help="size of the chunked upload (default 1024)",
    )  # fmt: skip
    p.add_argument(
        "--chunk-mib", type=int, default=defaults.chunk_mib, metavar="MIB",
        help=f"size of each PATCH (default {defaults.chunk_mib}, as bench/run.py's push_chunked)",
    )  # fmt: skip
    p.add_argument(
        "--rounds", type=int, default=3, metavar="N",
        help="chunked uploads each way, one way then the other, alternating which goes "
        "first (default 3)",
    )  # fmt: skip
    p.add_argument(
        "--clients", type=int, default=defaults.mixed_clients, metavar="N",
        help=f"mixed-load clients (default {defaults.mixed_clients})",
    )  # fmt: skip
    p.add_argument(
        "--seconds", type=float, default=defaults.mixed_seconds, metavar="S",
        help=f"mixed-load duration, each way (default {defaults.mixed_seconds:g})",
    )  # fmt: skip
    p.add_argument(
        "--workers", type=int, default=1, metavar="N",
        help="regd --workers of each replica (default 1: one replica is one process, against "
        "three)",
    )  # fmt: skip
    p.add_argument(
        "--only", nargs="+", choices=("chunked", "mixed"), metavar="WORKLOAD",
        help="run only these workloads: chunked, mixed",
    )  # fmt: skip
    p.add_argument(
        "--pg-admin", metavar="URL",
        help="a PostgreSQL URL allowed to create databases (default: user postgres, else root, "
        "at 127.0.0.1:5432, trust authentication)",
    )  # fmt: skip
    p.add_argument("--tmp", metavar="DIR", help="where the data dirs go (default: $TMPDIR)")
    p.add_argument("--keep-data", action="store_true", help="leave the data dirs behind")
    p.add_argument(
        "--output", type=Path, metavar="FILE", help="JSON path (default: bench/results/)"
    )
    args = p.parse_args(argv)
    for name in ("size_mib", "chunk_mib", "rounds", "clients", "workers"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.seconds <= 0:
        p.error("--seconds must be positive")
    return args


# -- the database -------------------------------------------------------------------------


def _with_database(url: str, database: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + database, parts.query, parts.fragment))


@dataclass
class Database:
    """The run's database: its URL, and the administrative connection that made it."""

    url: str
    name: str
    admin: psycopg.Connection[Any]
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def backends(self) -> list[int]:
        """The server processes serving connections to this database now."""
        with self._lock:
            rows = self.admin.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = %s", (self.name,)
            ).fetchall()
        return [int(row[0]) for row in rows]


@contextmanager
def database(admin_url: str | None) -> Iterator[Database]:
    """A fresh database on the PostgreSQL server, dropped when done (even while replicas
    still hold connections to it)."""
    errors = []
    for url in [admin_url] if admin_url else ADMIN_URLS:
        try:
            conn = psycopg.connect(url, autocommit=True, connect_timeout=5)
        except psycopg.OperationalError as exc:
            errors.append(f"{url}: {' '.join(str(exc).split())}")
            continue
        break
    else:
        raise RuntimeError("cannot connect to PostgreSQL: " + "; ".join(errors))
    name = f"regd_bench_{secrets.token_hex(6)}"
    with conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        try:
            yield Database(_with_database(url, name), name, conn)
        finally:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


# -- what each run cost -------------------------------------------------------------------


def tree_cpu(pid: int) -> float:
    return sum(cpu_seconds(p) for p in process_tree(pid))


class Meter:
    """CPU seconds of moto, of each replica and of the machine, and wall time, between two
    moments: which of them was busy says what bounded a run."""

    def __init__(self, moto: object_storage.Moto, replicas: Sequence[Server], db: Database) -> None:
        self.moto = moto
        self.replicas = replicas
        self.db = db

    def snapshot(self) -> dict[str, float]:
        return {
            "wall": time.perf_counter(),
            "busy": machine.busy_cpu_seconds(),
            "moto": tree_cpu(self.moto.proc.pid),
            # The benchmark's own process: the chunked upload's client.
            "self": self_cpu(),
            **{srv.name: srv.cpu() for srv in self.replicas},
            **{f"pg:{pid}": cpu_seconds(pid) for pid in self.db.backends()},
            **{f"proc:{pid}": cpu for pid, cpu in own_cpu_of_all().items()},
        }

    @contextmanager
    def window(self, start: float, seconds: float) -> Iterator[list[dict[str, float]]]:
        """Snapshots at `start` and at `start + seconds` on the wall clock, taken by a
        thread of their own while the caller runs the load; the list holds them after."""
        taken: list[dict[str, float]] = []
        stop = threading.Event()

        def take() -> None:
            for moment in (start, start + seconds):
                if stop.wait(max(0.0, moment - time.time())):
                    return
                taken.append(self.snapshot())

        thread = threading.Thread(target=take, daemon=True)
        thread.start()
        try:
            yield taken
        except BaseException:
            stop.set()
            raise
        finally:
            # The load ends at the second moment: the snapshot is due now, if not taken.
            thread.join(timeout=max(0.0, start + seconds - time.time()) + 30)

    def since(self, before: dict[str, float]) -> dict[str, Any]:
        return self.between(before, self.snapshot())

    def between(self, before: dict[str, float], now: dict[str, float]) -> dict[str, Any]:
        """The costs from `before` to `now`, and the cores they kept busy."""
        wall = now["wall"] - before["wall"]

        def cores(v: float) -> float:
            return round(v / wall, 2) if wall > 0 else 0.0

        regd = {srv.name: round(now[srv.name] - before[srv.name], 2) for srv in self.replicas}
        moto = now["moto"] - before["moto"]
        # A backend that appeared meanwhile counts from zero; one that ended is lost.
        pg = sum(v - before.get(k, 0.0) for k, v in now.items() if k.startswith("pg:"))
        return {
            "wall_s": round(wall, 2),
            "moto_cpu_s": round(moto, 2),
            "moto_cores": cores(moto),
            "regd_cpu_s": regd,
            "regd_cores": cores(sum(regd.values())),
            "postgres_cpu_s": round(pg, 2),
            "postgres_cores": cores(pg),
            "machine_busy_cores": cores(now["busy"] - before["busy"]),
            "bench_process_cpu_s": round(now["self"] - before["self"], 2),
            "busiest_processes": busiest(before, now),
        }


def own_cpu_of_all() -> dict[int, float]:
    """User + system seconds of every process now, each its own (children not added)."""
    out = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                stat = fh.read()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        out[int(entry)] = (int(fields[11]) + int(fields[12])) / CLK_TCK
    return out


def busiest(before: dict[str, float], now: dict[str, float], count: int = 8) -> list[Any]:
    """The processes that spent the most CPU between two snapshots, named: on a shared
    machine, what else was running. One started meanwhile counts from zero; one that
    ended is missing (its time shows only in the machine's busy cores)."""
    spent = sorted(
        ((v - before.get(k, 0.0), int(k[5:])) for k, v in now.items() if k.startswith("proc:")),
        reverse=True,
    )
    out = []
    for cpu, pid in spent[:count]:
        try:
            name = Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            name = "?"
        out.append({"pid": pid, "name": name, "cpu_s": round(cpu, 2)})
    return out


def with_others(cost: dict[str, Any], client_cpu_s: float) -> dict[str, Any]:
    """`cost` with the cores busy in processes that are none of the run's (other work on
    a shared machine): the machine's busy cores less moto's, the replicas', PostgreSQL's
    and the clients' (`client_cpu_s`)."""
    wall = cost["wall_s"]
    known = cost["moto_cores"] + cost["regd_cores"] + cost["postgres_cores"]
    clients = client_cpu_s / wall if wall > 0 else 0.0
    return {
        **cost,
        "client_cores": round(clients, 2),
        "other_processes_cores": round(max(0.0, cost["machine_busy_cores"] - known - clients), 2),
    }


# -- the trio -----------------------------------------------------------------------------


def start_trio(
    moto: object_storage.Moto, db: str, args: argparse.Namespace, stack: ExitStack
) -> list[Server]:
    """Three replicas on one bucket and one database. The first starts alone, so that one
    process creates the schema; the others find it there."""
    bucket = moto.create_bucket("bench-replicas")
    replicas: list[Server] = []
    for index in range(REPLICAS):
        srv = object_storage.start_regd(args.workers, moto, db, args.tmp, bucket=bucket)
        stack.callback(srv.stop, keep=args.keep_data)
        srv.name = f"replica-{'ABC'[index]}"
        srv.description = regd_description(srv, args.workers, db, f"s3 driver, bucket {bucket}")
        replicas.append(srv)
    return replicas


# -- workload 1: one chunked upload -------------------------------------------------------


def connections(servers: Sequence[Server], stack: ExitStack) -> list[Connection]:
    return [stack.enter_context(srv.connect(timeout=600)) for srv in servers]


def chunked_once(
    targets: Sequence[Server],
    check: Server,
    repo: str,
    blob: BigBlob,
    chunk: int,
    meter: Meter,
) -> dict[str, Any]:
    """One chunked upload, its requests sent to `targets` in turn; then a HEAD of the blob
    on `check` (another replica when the upload stayed on one) shows it is everybody's."""
    timings: dict[str, list[float]] = {}
    with ExitStack() as stack:
        conns = connections(targets, stack)
        before = meter.snapshot()
        started = time.perf_counter()
        requests = oci.push_blob_chunked_over(
            itertools.cycle(conns), repo, blob.data, blob.digest, chunk, timings
        )
        elapsed = time.perf_counter() - started
        cost = meter.since(before)
    cost = with_others(cost, cost["bench_process_cpu_s"])
    with check.connect() as conn:
        head = oci.expect(conn.request("HEAD", f"/v2/{repo}/blobs/{blob.digest}"), "blob HEAD", 200)
    if int(head.header("content-length") or -1) != len(blob):
        raise RuntimeError(f"{check.name} reports {head.header('content-length')} bytes")
    return {
        "replicas": [srv.name for srv in targets],
        "requests": requests,
        "seconds": round(elapsed, 3),
        "mb_s": rate(len(blob) / 1e6, elapsed),
        "post_ms": ms(timings["POST"][0]),
        "patch_p50_ms": ms(percentile(timings["PATCH"], 50)),
        "patch_max_ms": ms(max(timings["PATCH"])),
        "put_ms": ms(timings["PUT"][0]),
        "cost": cost,
    }


def chunked(
    replicas: Sequence[Server], args: argparse.Namespace, meter: Meter, log: Log
) -> dict[str, Any]:
    """`rounds` uploads each way, alternating which goes first. Every upload sends the same
    bytes: the blob's key is overwritten, so moto holds one copy, and regd does the full
    work each time (a chunked session is always written, hashed and moved)."""
    log(f"making the {args.size_mib} MiB blob (not timed)")
    blob = BigBlob(args.size_mib * MIB, seed=3)
    chunk = args.chunk_mib * MIB
    one: list[dict[str, Any]] = []
    spread: list[dict[str, Any]] = []
    for r in range(args.rounds):
        # The one replica changes each round, so no replica's warm state favours a side.
        alone = replicas[r % len(replicas)]
        other = replicas[(r + 1) % len(replicas)]
        order = ["one", "spread"] if r % 2 == 0 else ["spread", "one"]
        for way in order:
            if way == "one":
                log(f"round {r + 1}: chunked upload, every request on {alone.name}")
                one.append(chunked_once([alone], other, CHUNKED_ONE_REPO, blob, chunk, meter))
                log(f"  {one[-1]['mb_s']} MB/s")
            else:
                log(f"round {r + 1}: chunked upload, each request on the next replica")
                spread.append(
                    chunked_once(replicas, alone, CHUNKED_SPREAD_REPO, blob, chunk, meter)
                )
                log(f"  {spread[-1]['mb_s']} MB/s")
    one_mb_s = statistics.median(run["mb_s"] for run in one)
    spread_mb_s = statistics.median(run["mb_s"] for run in spread)
    ratio = spread_mb_s / one_mb_s if one_mb_s else 0.0
    return {
        "size_mib": args.size_mib,
        "chunk_mib": args.chunk_mib,
        "rounds": args.rounds,
        "one": one,
        "spread": spread,
        "median_mb_s": {"one": one_mb_s, "spread": spread_mb_s},
        "ratio": round(ratio, 3),
        "target": f">= {TARGET_RATIO}x",
        "result": "PASS" if ratio >= TARGET_RATIO else "MISS",
    }


# -- workload 2: the mixed load -----------------------------------------------------------


def mixed_both(
    replicas: Sequence[Server], args: argparse.Namespace, meter: Meter, log: Log
) -> dict[str, Any]:
    """The same load from the same number of generator processes (one per replica) both
    ways: all of them on replica A, then each on its own replica."""
    settings = Settings(mixed_clients=args.clients, mixed_seconds=args.seconds)
    log(f"pushing the {settings.mixed_pool} images pulls choose from (not timed)")
    pool = mixed.prepare(replicas[0], settings.mixed_pool)
    out: dict[str, Any] = {}
    for way, targets in (("one", replicas[:1]), ("spread", replicas)):
        names = ", ".join(srv.name for srv in targets)
        log(f"mixed load, {args.clients} clients for {args.seconds:g} s on {names}")
        start_at = time.time() + START_DELAY_S
        with meter.window(start_at, args.seconds) as snapshots:
            result = mixed.run_over(targets, settings, pool, len(replicas), start_at)
        if len(snapshots) != 2:
            raise RuntimeError("the load ended before its measuring window")
        result["cost"] = with_others(meter.between(*snapshots), result["client_cpu_s"])
        result["replicas"] = [srv.name for srv in targets]
        log(f"  {result['ops_s']} ops/s, {result['errors']} errors")
        out[way] = result
    one, spread = out["one"]["ops_s"], out["spread"]["ops_s"]
    out["ratio"] = round(spread / one, 3) if one else None
    return out


def guarded(name: str, log: Log, step: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    try:
        return step()
    except Exception as exc:
        log(f"{name} failed: {exc}")
        return {"error": f"{type(exc).__name__}: {exc}"[:500], "trace": traceback.format_exc()}


# -- the report ---------------------------------------------------------------------------


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.1f}" if abs(value) >= 100 else f"{value:,.3g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _median(runs: Sequence[dict[str, Any]], *path: str) -> float | None:
    values = [v for run in runs if isinstance(v := report.lookup(run, path), int | float)]
    return statistics.median(values) if values else None


# What each run kept busy, in cores (CPU seconds over the run's seconds).
COST_ROWS = (
    ("moto cores", "moto_cores"),
    ("regd cores (all replicas)", "regd_cores"),
    ("PostgreSQL cores (its backends)", "postgres_cores"),
    ("client cores", "client_cores"),
    ("other processes' cores", "other_processes_cores"),
    ("machine busy cores", "machine_busy_cores"),
)


def table(results: dict[str, Any], title: str) -> Table:
    t = Table(title=title)
    for col, justify in (
        ("workload", "left"),
        ("metric", "left"),
        ("one replica", "right"),
        ("three replicas", "right"),
        ("three/one", "right"),
        ("target", "left"),
        ("result", "left"),
    ):
        t.add_column(col, justify=justify)  # type: ignore[arg-type]

    def row(workload: str, metric: str, one: Any, three: Any, target: str = "") -> None:
        ratio = (
            f"{three / one:.2f}x"
            if isinstance(one, int | float) and isinstance(three, int | float) and one
            else "-"
        )
        result = ""
        if target:
            result = results["chunked"].get("result", "n/a")
            style = "green" if result == "PASS" else "red"
            result = f"[{style}]{result}[/{style}]"
        t.add_row(workload, metric, _fmt(one), _fmt(three), ratio, target, result)

    c = results.get("chunked") or {}
    if "one" in c:
        label = f"chunked push, {c['size_mib']} MiB ({c['chunk_mib']} MiB PATCHes)"
        one, spread = c["one"], c["spread"]
        row(
            label,
            f"MB/s, median of {c['rounds']}",
            c["median_mb_s"]["one"],
            c["median_mb_s"]["spread"],
            f">= {TARGET_RATIO:g}x",
        )
        row(
            label,
            "MB/s, each round",
            " / ".join(_fmt(run["mb_s"]) for run in one),
            " / ".join(_fmt(run["mb_s"]) for run in spread),
        )
        for metric, key in (
            ("POST ms", "post_ms"),
            ("PATCH p50 ms", "patch_p50_ms"),
            ("PATCH max ms", "patch_max_ms"),
            ("PUT ms (verify, move)", "put_ms"),
        ):
            row(label, f"{metric}, median", _median(one, key), _median(spread, key))
        for metric, key in COST_ROWS:
            row(label, f"{metric}, median", _median(one, "cost", key), _median(spread, "cost", key))
    elif "error" in c:
        t.add_row("chunked upload", "error", c["error"][:60], "", "", "", "")
    m = results.get("mixed") or {}
    if "one" in m:
        one, spread = m["one"], m["spread"]
        label = f"mixed 80/20, {one['clients']} clients, {one['seconds']:g} s"
        row(label, "ops/s", one["ops_s"], spread["ops_s"])
        row(label, "errors", one["errors"], spread["errors"])
        for op, name in (
            ("pull", "pull (manifest + layer)"),
            ("manifest_get", "its manifest GET"),
            ("layer_get", "its layer GET"),
            ("push", "push (small image)"),
        ):
            for p in ("p50", "p99"):
                key = f"{op}_{p}_ms"
                row(label, f"{name} {p} ms", one[key], spread[key])
        for metric, key in COST_ROWS:
            row(label, metric, one["cost"][key], spread["cost"][key])
    elif "error" in m:
        t.add_row("mixed 80/20", "error", m["error"][:60], "", "", "", "")
    return t


# -- the run ------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    console = Console(width=None if sys.stdout.isatty() else 150)

    def log(message: str) -> None:
        console.log(message, highlight=False)

    selected = args.only or ["chunked", "mixed"]
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    started = time.perf_counter()
    results: dict[str, Any] = {}
    load_before = machine.load_average()
    with ExitStack() as stack:
        log("starting moto_server and creating the database")
        try:
            moto = object_storage.start_moto(args.tmp)
            stack.callback(moto.stop)
            db = stack.enter_context(database(args.pg_admin))
            log(f"starting {REPLICAS} replicas (--workers {args.workers} each)")
            replicas = start_trio(moto, db.url, args, stack)
        except RuntimeError as exc:
            # What is missing (moto, PostgreSQL, a replica that would not start), in one line.
            console.print(f"cannot start: {exc}", highlight=False)
            return 1
        meter = Meter(moto, replicas, db)
        if "chunked" in selected:
            results["chunked"] = guarded(
                "chunked", log, lambda: chunked(replicas, args, meter, log)
            )
        if "mixed" in selected:
            results["mixed"] = guarded("mixed", log, lambda: mixed_both(replicas, args, meter, log))
        descriptions = {srv.name: srv.description for srv in replicas}
    elapsed = time.perf_counter() - started
    title = (
        f"regd: one replica vs three ({args.workers} worker{'s' * (args.workers > 1)} each; "
        "PostgreSQL; one moto bucket)"
    )
    console.print(table(results, title))
    document = {
        "timestamp": stamp,
        "title": title,
        "args": vars(args),
        "machine": {
            **machine.describe(),
            "python": sys.version.split()[0],
            "platform": platform.platform(),
            "load_average_before": load_before,
            "load_average_after": machine.load_average(),
        },
        "servers": descriptions,
        "elapsed_s": round(elapsed, 1),
        "results": results,
    }
    path = args.output or RESULTS_DIR / f"replicas-{stamp}.json"
    report.write_json(path, document)
    console.print(f"results: {path}  ({elapsed:.0f} s)")
    return 1 if any("error" in r for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
