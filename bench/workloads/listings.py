"""Tags list and catalog: whole and paged at the workload sizes, and the cost of one page of
100 as the number of entries grows (1k, 10k, 100k).

Population goes through the API with concurrent clients (tags 100 at a time with `?tag=` where
the registry supports it) and is not timed; it is bounded by a time budget per server, and
sizes it cannot reach in that budget are reported as skipped.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from bench import oci
from bench.httpc import Connection
from bench.pool import run_indexed
from bench.servers import Server
from bench.settings import Settings
from bench.stats import ms, percentile

TAGS_REPO = "list/tags"
BASE_REPO = "list/base"
MEASURE_BUDGET_S = 10.0
TAG_BATCH = 100


def tag_name(i: int) -> str:
    return f"t{i:06d}"


def repo_name(i: int) -> str:
    return f"cat/r{i:06d}"


@dataclass
class Population:
    """What has been created so far on one server, and how fast."""

    server: Server
    clients: int
    budget_s: float
    manifest: bytes = b""
    config_digest: str = ""
    layer_digest: str = ""
    manifest_digest: str = ""
    batch_tags: bool | None = None
    tags: int = 0
    repos: int = 0
    other_repos: int = 0
    spent_s: dict[str, float] = field(default_factory=lambda: {"tags": 0.0, "repos": 0.0})
    skipped: list[str] = field(default_factory=list)

    def setup(self) -> None:
        config = json.dumps({"architecture": "amd64", "os": "linux"}).encode()
        layer = b"listing-layer"
        self.manifest = oci.manifest_for(config, [layer])
        self.config_digest = oci.digest_of(config)
        self.manifest_digest = oci.digest_of(self.manifest)
        self.layer_digest = oci.digest_of(layer)
        with self.server.connect() as conn:
            oci.push_blob(conn, BASE_REPO, config)
            oci.push_blob(conn, BASE_REPO, layer)
            oci.put_manifest(conn, BASE_REPO, "base", self.manifest)
            oci.mount_blob(conn, TAGS_REPO, self.config_digest, BASE_REPO)
            oci.mount_blob(conn, TAGS_REPO, self.layer_digest, BASE_REPO)
            self.other_repos = sum(
                len(page) for page in oci.walk_list(conn, "/v2/_catalog?n=100", "repositories")
            )

    def grow(self, kind: str, target: int, label: int) -> bool:
        """Create entries up to `target`; False (and a note) when the budget forbids it."""
        have = self.tags if kind == "tags" else self.repos
        if have >= target:
            return True
        left = self.budget_s - self.spent_s[kind]
        if have and self.spent_s[kind] > 0:
            projected = (target - have) * self.spent_s[kind] / have
            if projected > left:
                self.skipped.append(
                    f"{kind} at {label:,}: needs ~{projected:.0f} s more population, "
                    f"{max(left, 0):.0f} s of the {self.budget_s:.0f} s budget left"
                )
                return False
        t0 = time.perf_counter()
        if kind == "tags":
            added, stopped = self._add_tags(have, target, left)
            self.tags += added
        else:
            added, stopped = self._add_repos(have, target, left)
            self.repos += added
        self.spent_s[kind] += time.perf_counter() - t0
        if stopped:
            self.skipped.append(
                f"{kind} at {label:,}: population budget of {self.budget_s:.0f} s ran out at "
                f"{have + added:,}"
            )
            return False
        return True

    def _tag_batch(self, conn: Connection, first: int, last: int) -> bool:
        """PUT the manifest by digest with `?tag=` for tags [first, last); True when the
        registry created them all (OCI-Tag answers), False when it ignored the tags."""
        query = "&".join(f"tag={tag_name(i)}" for i in range(first, last))
        r = conn.request(
            "PUT",
            f"/v2/{TAGS_REPO}/manifests/{self.manifest_digest}?{query}",
            {"Content-Type": oci.OCI_MANIFEST},
            self.manifest,
        )
        oci.expect(r, "put manifest with tags", 201)
        return len([t for t in r.header("oci-tag").split(",") if t.strip()]) == last - first

    def _add_tags(self, have: int, target: int, left: float) -> tuple[int, bool]:
        if self.batch_tags is None:
            with self.server.connect() as conn:
                self.batch_tags = self._tag_batch(conn, have, min(have + TAG_BATCH, target))
            if self.batch_tags:
                have_now = min(have + TAG_BATCH, target)
                added, stopped = self._add_tags(have_now, target, left)
                return added + have_now - have, stopped
        if self.batch_tags:
            batches = -(-(target - have) // TAG_BATCH)

            def add_batch(conn: Connection, i: int) -> None:
                first = have + i * TAG_BATCH
                if not self._tag_batch(conn, first, min(first + TAG_BATCH, target)):
                    raise RuntimeError("registry stopped honouring ?tag=")

            result = run_indexed(
                self.server, batches, self.clients, add_batch, deadline_s=max(left, 1.0)
            )
            added = min(result.done * TAG_BATCH, target - have)
        else:

            def add_tag(conn: Connection, i: int) -> None:
                oci.put_manifest(conn, TAGS_REPO, tag_name(i), self.manifest)

            result = run_indexed(
                self.server, target - have, self.clients, add_tag, start=have,
                deadline_s=max(left, 1.0),
            )  # fmt: skip
            added = result.done
        if result.errors:
            raise RuntimeError(f"populating tags: {result.errors} errors: {result.first_error}")
        return added, result.stopped_by_deadline

    def _add_repos(self, have: int, target: int, left: float) -> tuple[int, bool]:
        def add_repo(conn: Connection, i: int) -> None:
            name = repo_name(i)
            for digest in (self.config_digest, self.layer_digest):
                if not oci.mount_blob(conn, name, digest, BASE_REPO):
                    raise RuntimeError(f"mount into {name} declined")
            oci.put_manifest(conn, name, "latest", self.manifest)

        result = run_indexed(
            self.server, target - have, self.clients, add_repo, start=have,
            deadline_s=max(left, 1.0),
        )  # fmt: skip
        if result.errors:
            raise RuntimeError(f"populating repos: {result.errors} errors: {result.first_error}")
        return result.done, result.stopped_by_deadline


def _timed_listing(conn: Connection, first: str, key: str) -> tuple[float, int, int]:
    """Fetch a listing, following `Link`; (seconds, requests, entries)."""
    start = time.perf_counter()
    pages = entries = 0
    for page in oci.walk_list(conn, first, key):
        pages += 1
        entries += len(page)
    return time.perf_counter() - start, pages, entries


def measure_listing(conn: Connection, first: str, key: str, repeats: int) -> dict[str, Any]:
    times: list[float] = []
    pages = entries = 0
    budget_end = time.perf_counter() + MEASURE_BUDGET_S
    for _ in range(repeats):
        seconds, pages, entries = _timed_listing(conn, first, key)
        times.append(seconds)
        if time.perf_counter() > budget_end:
            break
    return {
        "request": first,
        "ms": ms(percentile(times, 50)),
        "repeats": len(times),
        "requests": pages,
        "entries": entries,
    }


def measure_page(conn: Connection, target: str, key: str, repeats: int) -> dict[str, Any]:
    """Latency of one page request, repeated; also what the page held."""
    times: list[float] = []
    budget_end = time.perf_counter() + MEASURE_BUDGET_S
    entries, has_next = 0, False
    for _ in range(repeats):
        t0 = time.perf_counter()
        r = oci.expect(conn.request("GET", target), f"page {target}", 200)
        times.append(time.perf_counter() - t0)
        entries = len(json.loads(r.body).get(key) or [])
        has_next = oci.next_link(r) is not None
        if time.perf_counter() > budget_end:
            break
    return {
        "request": target,
        "p50_ms": ms(percentile(times, 50)),
        "p99_ms": ms(percentile(times, 99)),
        "repeats": len(times),
        "entries_returned": entries,
        "link_next": has_next,
    }


def _paging_behaviour(page: dict[str, Any], size: int, n: int) -> str:
    got = page["entries_returned"]
    if got <= n:
        return f"honours n={n} ({got} entries, next link: {page['link_next']})"
    return f"ignores n={n}: returned {got} of {size} entries in one response"


def _grow_and_measure(
    pop: Population, kind: str, settings: Settings, conn: Connection
) -> dict[str, Any]:
    n = settings.page_size
    key = "tags" if kind == "tags" else "repositories"
    workload_size = settings.tags if kind == "tags" else settings.repositories
    base = f"/v2/{TAGS_REPO}/tags/list" if kind == "tags" else "/v2/_catalog"
    name = tag_name if kind == "tags" else repo_name
    offset = 0 if kind == "tags" else pop.other_repos
    out: dict[str, Any] = {"growth": {}}
    for size in sorted({workload_size, *settings.growth_sizes}):
        # The catalog also lists the repositories earlier workloads created.
        if not pop.grow(kind, max(size - offset, 0), size):
            if size == workload_size:
                out["workload"] = {"skipped": pop.skipped[-1]}
            continue
        total = (pop.tags if kind == "tags" else pop.repos) + offset
        if size == workload_size:
            out["workload"] = {
                "entries": total,
                "whole": measure_listing(conn, base, key, settings.list_repeats),
                "paged": measure_listing(conn, f"{base}?n={n}", key, settings.list_repeats),
            }
        if size in settings.growth_sizes:
            middle = name(max(size - offset, 0) // 2)
            first = measure_page(conn, f"{base}?n={n}", key, settings.page_repeats)
            mid = measure_page(conn, f"{base}?n={n}&last={middle}", key, settings.page_repeats)
            out["growth"][str(size)] = {
                "entries": total,
                "first_page": first,
                "middle_page": mid,
                "paging": _paging_behaviour(first, total, n),
            }
    return out


def run(server: Server, settings: Settings, budget_s: float) -> dict[str, Any]:
    pop = Population(server, settings.populate_clients, budget_s)
    pop.setup()
    with server.connect(timeout=300) as conn:
        tags = _grow_and_measure(pop, "tags", settings, conn)
        catalog = _grow_and_measure(pop, "repos", settings, conn)
    return {
        "tags": tags,
        "catalog": catalog,
        "population": {
            "tags_created": pop.tags,
            "tags_created_with": "PUT by digest with 100 ?tag= each"
            if pop.batch_tags
            else "one manifest PUT per tag",
            "repositories_created": pop.repos,
            "seconds": {k: round(v, 1) for k, v in pop.spent_s.items()},
            "budget_s": budget_s,
            "skipped": pop.skipped,
        },
    }
