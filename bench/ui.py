"""Web UI benchmark: a repository page at 100,000 tags, by push time and by name.

    python bench/ui.py [--tags 100000] [--pages 200] [--database postgresql://...]

Setup (not timed) writes the rows straight into a fresh store through the metadata
schema: one repository with `--tags` tags over 200 image manifests (a config and three
layers each) and 20 two-platform indexes, every tag pushed at its own second. Then it
starts `regd serve` on that data and, over HTTP with one client, times:
- the first page of tags, newest first and by name (each asked `--repeat` times);
- `--pages` consecutive pages following the "Next page" cursor, in both orders;
- pages deep in the listing (cursors near the last tag), in both orders;
- the image page of a tag and the catalog.
Two figures for each: the server's own time (the `ms=` of its access log line, from the
request's arrival to the answer's last byte) and the client's wall time on loopback.
Last, on the same data, the CPU time per page of the app driven in-process: the figure a
loaded machine moves least.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
import time
from html import unescape
from pathlib import Path
from typing import Any, cast

import httpx
import trio
from sqlalchemy import insert

from regd.app import create_app
from regd.config import Config
from regd.metadata import MetadataStore, sqlite_url
from regd.metadata import schema as t
from regd.registry import Registry
from regd.storage import FilesystemDriver

# Run as a script, bench/ is not on the path as a package; its modules are shared.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.servers import HOST, REPO_ROOT, Server, _ready_or_stopped, _spawn, free_port
from bench.stats import ms, percentile

REPOSITORY = "big/app"
IMAGES = 200
INDEXES = 20
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
_NEXT = re.compile(r'<a rel="next" href="([^"]+)">')
_ROW = re.compile(r'<th scope="row">')


def digest_of(kind: str, i: int) -> str:
    return "sha256:" + hashlib.sha256(f"{kind}-{i}".encode()).hexdigest()


def populate(store: MetadataStore, tags: int) -> float:
    """Write the rows; returns the push time of the oldest tag."""
    now = time.time()
    start = now - tags - 60
    blobs = [digest_of("blob", i) for i in range(IMAGES * 4)]
    images = []
    for i in range(IMAGES):
        config, *layers = (
            {"mediaType": media_type, "digest": blobs[i * 4 + k], "size": 1_000_000 + i * 4 + k}
            for k, media_type in enumerate([OCI_CONFIG] + [OCI_LAYER] * 3)
        )
        payload = json.dumps(
            {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config, "layers": layers}
        ).encode()
        images.append((digest_of("image", i), payload))
    indexes = []
    for i in range(INDEXES):
        children = [images[(2 * i) % IMAGES], images[(2 * i + 1) % IMAGES]]
        payload = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": OCI_INDEX,
                "manifests": [
                    {
                        "mediaType": OCI_MANIFEST,
                        "digest": digest,
                        "size": len(body),
                        "platform": {"os": "linux", "architecture": arch},
                    }
                    for (digest, body), arch in zip(children, ("amd64", "arm64"), strict=True)
                ],
            }
        ).encode()
        indexes.append((digest_of("index", i), payload, [d for d, _ in children]))
    with store.engine.begin() as conn:
        conn.execute(insert(t.repositories), [{"id": 1, "name": REPOSITORY, "created_at": start}])
        conn.execute(
            insert(t.blobs),
            [
                {"digest": d, "size": 1_000_000 + i, "created_at": start, "linked_at": start}
                for i, d in enumerate(blobs)
            ],
        )
        conn.execute(
            insert(t.repository_blobs),
            [{"repository_id": 1, "digest": d, "created_at": start} for d in blobs],
        )
        rows: list[dict[str, Any]] = []
        links: list[dict[str, Any]] = []
        child_rows: list[dict[str, Any]] = []
        for i, (digest, payload) in enumerate(images):
            rows.append(_manifest_row(i + 1, digest, OCI_MANIFEST, payload, start))
            links += [{"manifest_id": i + 1, "digest": blobs[i * 4 + k]} for k in range(4)]
        for j, (digest, payload, kids) in enumerate(indexes):
            mid = IMAGES + j + 1
            rows.append(_manifest_row(mid, digest, OCI_INDEX, payload, start))
            child_rows += [{"manifest_id": mid, "digest": kid} for kid in kids]
        conn.execute(insert(t.manifests), rows)
        conn.execute(insert(t.manifest_blobs), links)
        conn.execute(insert(t.manifest_children), child_rows)
        total = IMAGES + INDEXES
        batch = []
        for n in range(tags):
            batch.append(
                {
                    "repository_id": 1,
                    "name": f"v{n:06d}",
                    "manifest_id": n % total + 1,
                    "updated_at": start + n,
                }
            )
            if len(batch) == 10_000:
                conn.execute(insert(t.tags), batch)
                batch = []
        if batch:
            conn.execute(insert(t.tags), batch)
    return start


def _manifest_row(
    mid: int, digest: str, media_type: str, payload: bytes, when: float
) -> dict[str, Any]:
    return {
        "id": mid,
        "repository_id": 1,
        "digest": digest,
        "media_type": media_type,
        "artifact_type": None,
        "size": len(payload),
        "payload": payload,
        "subject": None,
        "annotations": None,
        "created_at": when,
    }


# The label of every request, in order: the access log's lines come in the same order
# (one client, one request at a time), which is how server times are matched to them.
LABELS: list[str] = []


def timed(http: httpx.Client, path: str, label: str = "") -> tuple[float, str]:
    LABELS.append(label)
    began = time.perf_counter()
    answer = http.get(path)
    elapsed = time.perf_counter() - began
    if answer.status_code != 200:
        raise SystemExit(f"GET {path} answered {answer.status_code}: {answer.text[:300]}")
    return elapsed, answer.text


def summary(samples: list[float]) -> dict[str, Any]:
    return {
        "n": len(samples),
        "p50_ms": ms(percentile(samples, 50)),
        "p99_ms": ms(percentile(samples, 99)),
        "max_ms": ms(max(samples)),
    }


def walk(http: httpx.Client, first: str, pages: int, label: str) -> list[float]:
    samples: list[float] = []
    path: str | None = first
    while path is not None and len(samples) < pages:
        elapsed, html = timed(http, path, label)
        samples.append(elapsed)
        if len(_ROW.findall(html)) == 0:
            raise SystemExit(f"{path}: a page without tags")
        following = _NEXT.search(html)
        path = unescape(following[1]) if following else None
    return samples


def measure(base: str, tags: int, start: float, pages: int, repeat: int) -> dict[str, list[float]]:
    """Client wall times, by label."""
    results: dict[str, list[float]] = {}
    repo = f"/ui/repository?name={REPOSITORY}"
    last = tags - 1

    def many(label: str, paths: list[str]) -> None:
        results[label] = [timed(http, path, label)[0] for path in paths]

    with httpx.Client(base_url=base, timeout=60) as http:
        timed(http, "/ui/")  # the session cookie and the templates' first compilation
        for order in ("time", "name"):
            first = f"{repo}&order={order}"
            many(f"first_page_{order}", [first] * repeat)
            results[f"walk_{order}"] = walk(http, first, pages, f"walk_{order}")
        many(
            "deep_page_name",
            [f"{repo}&order=name&after=v{last - 60 - k:06d}" for k in range(repeat)],
        )
        # Newest first, the deepest pages hold the oldest pushes.
        many(
            "deep_page_time",
            [f"{repo}&order=time&after={start + 60 + k!r}~v{60 + k:06d}" for k in range(repeat)],
        )
        many(
            "image_page",
            [f"/ui/image?repository={REPOSITORY}&reference=v{k:06d}" for k in range(repeat)],
        )
        many("catalog", ["/ui/"] * repeat)
    return results


_ACCESS = re.compile(r"method=GET path=(/ui/\S*) status=\d+ length=\S+ ms=([\d.]+)")


def server_times(log: Path) -> dict[str, list[float]]:
    """The server's own time of every request, by the label it was asked under."""
    times = [float(m[2]) / 1000 for m in _ACCESS.finditer(log.read_text(errors="replace"))]
    if len(times) != len(LABELS):
        raise SystemExit(f"{len(times)} access log lines for {len(LABELS)} requests in {log}")
    out: dict[str, list[float]] = {}
    for label, seconds in zip(LABELS, times, strict=True):
        if label:
            out.setdefault(label, []).append(seconds)
    return out


def start_server(data_dir: Path, database: str | None) -> Server:
    """regd with its access log on (bench.servers.start_regd turns it off)."""
    workdir = Path(tempfile.mkdtemp(prefix="bench-ui-regd-"))
    port = free_port()
    cmd = [
        sys.executable, "-m", "regd", "serve",
        "--addr", f"{HOST}:{port}",
        "--data-dir", str(data_dir),
        "--log-level", "info",
        "--access-log",
    ]  # fmt: skip
    if database:
        cmd += ["--database", database]
    proc, log_path = _spawn(cmd, workdir, dict(os.environ, PYTHONPATH=str(REPO_ROOT)))
    server = Server("regd", port, proc, workdir, "regd --workers 1", log_path)
    _ready_or_stopped(server)
    return server


def cpu_per_page(
    data_dir: Path, database: str | None, tags: int, start: float, repeat: int
) -> dict[str, float]:
    """CPU milliseconds per page, the app driven in this process (its client's share
    included): unlike wall times, hardly moved by other work on a loaded machine."""
    repo = f"/ui/repository?name={REPOSITORY}"
    paths = {
        "first_page_time": f"{repo}&order=time",
        "first_page_name": f"{repo}&order=name",
        "deep_page_name": f"{repo}&order=name&after=v{tags - 60:06d}",
        "deep_page_time": f"{repo}&order=time&after={start + 60!r}~v000060",
        "image_page": f"/ui/image?repository={REPOSITORY}&reference=v000001",
        "catalog": "/ui/",
    }
    store = MetadataStore(database or sqlite_url(data_dir / "regd.db"))
    registry = Registry.create(FilesystemDriver(data_dir), store)
    config = Config(access_log=False, upload_purge_interval=0, data_dir=data_dir)
    app = create_app(registry, config)
    out: dict[str, float] = {}

    async def run() -> None:
        # Quart types its ASGI scopes and events, httpx takes plain mappings: one protocol.
        transport = httpx.ASGITransport(app=cast(Any, app))
        async with httpx.AsyncClient(transport=transport, base_url="http://regd") as http:
            for label, path in paths.items():
                for _ in range(3):  # warm: templates compiled, statements prepared
                    await http.get(path)
                began = time.process_time()
                for _ in range(repeat):
                    answer = await http.get(path)
                    if answer.status_code != 200:
                        raise SystemExit(f"GET {path} answered {answer.status_code}")
                out[label] = ms((time.process_time() - began) / repeat)
        await registry.aclose()

    trio.run(run)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tags", type=int, default=100_000)
    parser.add_argument("--pages", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=50)
    parser.add_argument("--database", default=None, help="a PostgreSQL URL (default SQLite)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-ui-"))
    data_dir = work / "data"
    data_dir.mkdir()
    store = MetadataStore(args.database or sqlite_url(data_dir / "regd.db"))
    store.create_schema()
    began = time.perf_counter()
    start = populate(store, args.tags)
    store.engine.dispose()
    print(f"seeded {args.tags} tags in {time.perf_counter() - began:.1f} s", file=sys.stderr)
    server = start_server(data_dir, args.database)
    try:
        client = measure(
            f"http://{server.host}:{server.port}", args.tags, start, args.pages, args.repeat
        )
        server.stop(keep=True)
        own = server_times(server.log_path)
    finally:
        server.stop()
    cpu = cpu_per_page(data_dir, args.database, args.tags, start, args.repeat)
    shutil.rmtree(work, ignore_errors=True)
    results: dict[str, Any] = {
        "tags": args.tags,
        "database": "postgresql" if args.database else "sqlite",
        "load_average": os.getloadavg()[0],
        "server": {label: summary(samples) for label, samples in own.items()},
        "client": {label: summary(samples) for label, samples in client.items()},
        "cpu_ms_per_page": cpu,
    }
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(
        f"UI pages at {args.tags} tags ({results['database']}; load average "
        f"{results['load_average']:.1f}): server time | client wall time"
    )
    for label, mine in results["server"].items():
        theirs = results["client"][label]
        print(
            f"  {label:16} n={mine['n']:4}  server p50 {mine['p50_ms']:6.1f} p99 "
            f"{mine['p99_ms']:6.1f} ms | client p50 {theirs['p50_ms']:6.1f} p99 "
            f"{theirs['p99_ms']:6.1f} ms"
        )
    print("CPU per page, in-process:")
    for label, cost in cpu.items():
        print(f"  {label:16} {cost:6.1f} ms")


if __name__ == "__main__":
    main()
