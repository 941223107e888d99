"""Prometheus metrics, one consistent view across worker processes.

prometheus-client's multiprocess mode keeps each process's values in memory-mapped files
of one directory, and an exposition merges the files of every process: whichever worker
answers `/metrics`, it reports the sum of all of them. `regd serve` makes that directory
before the workers start (`make_directory`) and removes it when they have stopped.

Only series some code really feeds are defined here; each is fed at one place:
requests, bytes and uploads in flight in `RegdApp.__call__`; database operations in the
metadata engine's three run functions (every statement regd issues passes through them,
so the timing includes waiting for a connection or the group-commit writer, which is
what a slow request suffers); storage operations by wrapping the driver
(`TimedStorage`), which works for every driver without touching any; collections where
they are started (housekeeping and the admin API); refusals at the authentication gate.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import tempfile
import time
from bisect import bisect_left
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, multiprocess, values
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from regd.storage import FileInfo, Reader, Space, StorageDriver, Writer

T = TypeVar("T")
# One series' inc or observe.
_Feed = Callable[[float], None]

# prometheus_client leaves these three untyped.
_mark_process_dead: Callable[[int, str], None] = multiprocess.mark_process_dead
_multiprocess_value: Callable[[Callable[[], int]], type] = values.MultiProcessValue
_collector: Callable[[CollectorRegistry, str], object] = multiprocess.MultiProcessCollector

DIRECTORY_ENV = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE = CONTENT_TYPE_LATEST

# From a manifest HEAD answered from the page cache (well under a millisecond) to a large
# blob upload.
LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)
GC_BUCKETS = (0.1, 1.0, 10.0, 60.0, 300.0, 1800.0, 3600.0)

METHODS = frozenset({"GET", "HEAD", "PUT", "POST", "PATCH", "DELETE", "OPTIONS"})

# The route of a request, from its path: a handful of names, never the path itself (a
# label per repository or digest would grow without end).
_V2_ROUTE = re.compile(
    r"^/v2/.+/(?:(?P<blob_upload>blobs/uploads(?:/[^/]*)?)|(?P<blob>blobs/[^/]+)"
    r"|(?P<manifest>manifests/[^/]+)|(?P<tags>tags/list/?)|(?P<referrers>referrers/[^/]+/?))$"
)
_FIXED_ROUTES = {
    "/v2": "base",
    "/v2/": "base",
    "/v2/_catalog": "catalog",
    "/v2/_catalog/": "catalog",
    "/metrics": "metrics",
    "/healthz": "health",
    "/readyz": "health",
}


def route_of(path: str) -> str:
    """The route name a request is counted under."""
    fixed = _FIXED_ROUTES.get(path)
    if fixed is not None:
        return fixed
    if path.startswith("/v2/"):
        match = _V2_ROUTE.match(path)
        return (match.lastgroup or "other") if match is not None else "other"
    if path.startswith("/admin/"):
        return "admin"
    if path.startswith("/auth/"):
        return "token"
    return "other"


_PREFIX = "regd-metrics-"
# A directory's name carries the pid of the process that made it, so a later start can
# tell the leftovers of a killed regd (SIGKILL runs no clean-up) from a running one's.
_OWNED = re.compile(re.escape(_PREFIX) + r"(\d+)-")


def make_directory() -> Path:
    """A fresh directory for this run's metric files, announced to the worker processes
    (which inherit the environment) and to this one. Directories that killed runs left
    behind are removed first: each holds a file per worker, and they would pile up."""
    remove_leftovers(Path(tempfile.gettempdir()))
    path = Path(tempfile.mkdtemp(prefix=f"{_PREFIX}{os.getpid()}-"))
    os.environ[DIRECTORY_ENV] = str(path)
    return path


def remove_leftovers(parent: Path) -> list[Path]:
    """Remove the metric directories in `parent` whose maker is gone; answers them. Only
    this user's, and only when the pid in the name is not running: a reused pid keeps a
    leftover for a while, which is harmless, while a live regd's directory is never
    touched."""
    removed: list[Path] = []
    try:
        entries = list(parent.iterdir())
    except OSError:
        return removed
    uid = os.getuid()
    for entry in entries:
        match = _OWNED.match(entry.name)
        if match is None:
            continue
        try:
            info = entry.lstat()
        except OSError:
            continue
        if info.st_uid != uid or not stat.S_ISDIR(info.st_mode) or _alive(int(match[1])):
            continue
        shutil.rmtree(entry, ignore_errors=True)
        removed.append(entry)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_directory(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def process_gone(pid: int, path: Path) -> None:
    """Drop a stopped worker's gauges (what it had in flight is no longer in flight); its
    counters stay, so totals do not fall when a worker goes."""
    _mark_process_dead(pid, str(path))


class _ProcessId:
    """os.getpid, remembered, and renewed in a forked child. prometheus_client asks for
    the process id on every update of a value (a forked child must write files of its
    own), and getpid is a system call: a handful of them for every request."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        os.register_at_fork(after_in_child=self._renew)

    def _renew(self) -> None:
        self.pid = os.getpid()

    def __call__(self) -> int:
        return self.pid


_process_id = _ProcessId()


def _adder(child: Any) -> Callable[[float], None]:
    """`child.inc` of a labelled counter, cheaper: straight to its value. Counter.inc
    checks the amount and whether the series is observable on every call; regd's amounts
    (1 and byte counts) are never negative, and a labelled child always is. Falls back to
    the public method should prometheus_client keep its value elsewhere one day."""
    value = getattr(child, "_value", None)
    return child.inc if value is None else value.inc  # type: ignore[no-any-return]


def _observer(child: Any) -> Callable[[float], None]:
    """`child.observe` of a labelled histogram, cheaper, as `_adder`: the sum, and the
    first bucket whose bound is at least the amount, found by bisection rather than by
    walking the bounds in Python (the last bound is +Inf, so there always is one)."""
    bounds = getattr(child, "_upper_bounds", None)
    buckets = getattr(child, "_buckets", None)
    total = getattr(child, "_sum", None)
    if bounds is None or buckets is None or total is None or len(bounds) != len(buckets):
        return child.observe  # type: ignore[no-any-return]
    bounds, buckets, add = tuple(bounds), tuple(buckets), total.inc

    def observe(amount: float) -> None:
        add(amount)
        buckets[bisect_left(bounds, amount)].inc(1)

    return observe


class Metrics:
    """This process's series. One per process (`enable`): the files are per process."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        # The value class is picked when prometheus_client is first imported, from the
        # environment: this process may have imported it before the directory existed,
        # and the class picked asks the system for the process id on every update. Ours
        # replaces it before any series of this process exists (it is made here).
        if not getattr(values.ValueClass, "_regd", False):
            value_class = _multiprocess_value(_process_id)
            value_class._regd = True  # type: ignore[attr-defined]
            values.ValueClass = value_class
        # Not registered anywhere: the exposition reads the files, not these objects.
        self.requests = Counter(
            "regd_http_requests",
            "HTTP requests answered, by route, method and status.",
            ("route", "method", "status"),
            registry=None,
        )
        self.latency = Histogram(
            "regd_http_request_duration_seconds",
            "Time from a request's arrival to the end of its answer.",
            ("route", "method"),
            buckets=LATENCY_BUCKETS,
            registry=None,
        )
        self.received = Counter(
            "regd_http_received_bytes",
            "Request body bytes received.",
            ("route",),
            registry=None,
        )
        self.sent = Counter(
            "regd_http_sent_bytes",
            "Response body bytes sent.",
            ("route",),
            registry=None,
        )
        self.uploads = Gauge(
            "regd_uploads_in_flight",
            "Blob upload requests whose body is being received now.",
            registry=None,
            multiprocess_mode="livesum",
        )
        self.database = Histogram(
            "regd_database_operation_duration_seconds",
            "Database transactions, by the store operation that ran them.",
            ("operation",),
            buckets=LATENCY_BUCKETS,
            registry=None,
        )
        self.storage = Histogram(
            "regd_storage_operation_duration_seconds",
            "Storage driver calls, by driver method.",
            ("operation",),
            buckets=LATENCY_BUCKETS,
            registry=None,
        )
        self._request_series: dict[tuple[str, str, int], tuple[_Feed, _Feed, _Feed, _Feed]] = {}
        self._database_series: dict[object, _Feed] = {}
        # Made when first fed: a process that never collects or never refuses anyone (no
        # authentication) shows no such series.
        self._gc: tuple[Counter, Counter, Histogram] | None = None
        self._auth: tuple[Counter, Counter] | None = None

    def request(
        self, route: str, method: str, status: int, seconds: float, received: int, sent: int
    ) -> None:
        """One answered request."""
        if method not in METHODS:
            method = "other"
        key = (route, method, status)
        series = self._request_series.get(key)
        if series is None:
            # labels() validates and locks on every call; the children are cached instead.
            series = self._request_series[key] = (
                _adder(self.requests.labels(route, method, str(status))),
                _observer(self.latency.labels(route, method)),
                _adder(self.received.labels(route)),
                _adder(self.sent.labels(route)),
            )
        count, latency, received_bytes, sent_bytes = series
        count(1)
        latency(seconds)
        if received:
            received_bytes(received)
        if sent:
            sent_bytes(sent)

    def database_operation(self, fn: Callable[..., Any], seconds: float) -> None:
        """One transaction of the metadata store, named by the store method that ran `fn`
        (its qualified name up to its local functions: `BlobsMixin.link_blob`)."""
        code = getattr(fn, "__code__", None)
        series = self._database_series.get(code)
        if series is None:
            name = code.co_qualname.split(".<locals>", 1)[0] if code is not None else "other"
            series = self._database_series[code] = _observer(self.database.labels(name))
        series(seconds)

    def collected(self, trigger: str, bytes_freed: int, seconds: float) -> None:
        """A garbage collection carried out (not a dry run); `trigger`: schedule or admin."""
        if self._gc is None:
            self._gc = (
                Counter(
                    "regd_gc_runs",
                    "Garbage collections carried out, by what started them.",
                    ("trigger",),
                    registry=None,
                ),
                Counter(
                    "regd_gc_freed_bytes",
                    "Blob and manifest bytes freed by garbage collection.",
                    registry=None,
                ),
                Histogram(
                    "regd_gc_duration_seconds",
                    "How long garbage collections took.",
                    buckets=GC_BUCKETS,
                    registry=None,
                ),
            )
        runs, freed, duration = self._gc
        runs.labels(trigger).inc()
        freed.inc(bytes_freed)
        duration.observe(seconds)

    def refused(self, reason: str) -> None:
        """An authentication refusal: throttled, unauthenticated or denied."""
        if self._auth is None:
            self._auth = (
                Counter(
                    "regd_auth_failures",
                    "Requests refused although they carried credentials: unauthenticated "
                    "(wrong or unusable credentials) or denied (not allowed).",
                    ("reason",),
                    registry=None,
                ),
                Counter(
                    "regd_auth_throttled",
                    "Requests refused with 429 after too many failed logins.",
                    registry=None,
                ),
            )
        failures, throttled = self._auth
        if reason == "throttled":
            throttled.inc()
        else:
            failures.labels(reason).inc()

    def timed(self, driver: StorageDriver) -> StorageDriver:
        return TimedStorage(driver, self.storage)

    def exposition(self) -> bytes:
        """Every process's series, merged, in Prometheus' text format. Reads files: run it
        in a worker thread."""
        registry = CollectorRegistry()
        _collector(registry, str(self.directory))
        return generate_latest(registry)


_metrics: Metrics | None = None


def enable() -> Metrics:
    """This process's metrics, in the directory `regd serve` made (a process on its own, an
    in-process test say, gets a directory of its own, removed at exit)."""
    global _metrics
    if _metrics is None:
        directory = os.environ.get(DIRECTORY_ENV)
        if directory and Path(directory).is_dir():
            _metrics = Metrics(Path(directory))
        else:
            import atexit

            path = make_directory()
            atexit.register(remove_directory, path)
            _metrics = Metrics(path)
    return _metrics


class TimedStorage:
    """A storage driver that times every call of the one it wraps; reads and writes of
    single chunks excepted (their time is the request's), but a writer's commit, which
    makes the bytes durable, included."""

    def __init__(self, driver: StorageDriver, histogram: Histogram) -> None:
        self.wrapped = driver
        self.name = driver.name
        self._histogram = histogram
        # Made on an operation's first call: no series for what never happens.
        self._series: dict[str, _Feed] = {}

    async def _timed(self, operation: str, call: Awaitable[T]) -> T:
        started = time.perf_counter()
        try:
            return await call
        finally:
            series = self._series.get(operation)
            if series is None:
                series = self._series[operation] = _observer(self._histogram.labels(operation))
            series(time.perf_counter() - started)

    async def get_content(self, path: str) -> bytes:
        return await self._timed("get_content", self.wrapped.get_content(path))

    async def put_content(self, path: str, data: bytes) -> None:
        await self._timed("put_content", self.wrapped.put_content(path, data))

    async def reader(self, path: str, offset: int = 0) -> Reader:
        return await self._timed("reader", self.wrapped.reader(path, offset))

    async def writer(self, path: str, *, offset: int = 0) -> Writer:
        writer = await self._timed("writer", self.wrapped.writer(path, offset=offset))
        return _TimedWriter(writer, self)

    async def new_file(self, path: str, *, staging: str) -> Writer:
        writer = await self._timed("new_file", self.wrapped.new_file(path, staging=staging))
        return _TimedWriter(writer, self)

    async def stat(self, path: str) -> FileInfo:
        return await self._timed("stat", self.wrapped.stat(path))

    async def list(self, path: str) -> Sequence[str]:
        return await self._timed("list", self.wrapped.list(path))

    async def move(self, source: str, destination: str) -> None:
        await self._timed("move", self.wrapped.move(source, destination))

    async def delete(self, path: str) -> None:
        await self._timed("delete", self.wrapped.delete(path))

    async def delete_many(self, paths: Sequence[str]) -> None:
        await self._timed("delete_many", self.wrapped.delete_many(paths))

    async def redirect_url(self, path: str) -> str | None:
        # Computed, not a call to the store.
        return await self.wrapped.redirect_url(path)

    async def purge_incomplete(self, older_than: float) -> int:
        return await self._timed("purge_incomplete", self.wrapped.purge_incomplete(older_than))

    async def free_space(self) -> Space | None:
        return await self._timed("free_space", self.wrapped.free_space())


class _TimedWriter:
    def __init__(self, writer: Writer, storage: TimedStorage) -> None:
        self._writer = writer
        self._storage = storage

    @property
    def size(self) -> int:
        return self._writer.size

    async def write(self, data: bytes, also: Callable[[bytes], object] | None = None) -> None:
        await self._writer.write(data, also)

    async def commit(self) -> None:
        await self._storage._timed("commit", self._writer.commit())

    async def cancel(self) -> None:
        await self._writer.cancel()
