"""Running every workload against both registries, one workload at a time on each in turn."""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable
from typing import Any

from bench import machine, oci
from bench.servers import Server
from bench.settings import MIB, Settings
from bench.workloads import blob, hot, knee, listings, mixed, mounts, small, tokens

WORKLOADS = [
    "push_monolithic",
    "push_chunked",
    "pull",
    "range_read",
    "small_images",
    "manifest_head",
    "manifest_get",
    "blob_head",
    "manifest_get_py",
    "mounts",
    "mixed",
    "knee",
    "listings",
    "token_issue",
]

Step = Callable[[Server], dict[str, Any]]
Log = Callable[[str], None]


def measured(server: Server, step: Step) -> dict[str, Any]:
    """Run one step and add what the server and the machine spent during it."""
    cpu0, busy0, t0 = server.cpu(), machine.busy_cpu_seconds(), time.perf_counter()
    try:
        result = step(server)
    except Exception as exc:
        result = {"error": f"{type(exc).__name__}: {exc}"[:500], "trace": traceback.format_exc()}
    wall = time.perf_counter() - t0
    cpu = server.cpu() - cpu0
    busy = machine.busy_cpu_seconds() - busy0
    result["server"] = {
        "cpu_s": round(cpu, 2),
        "wall_s": round(wall, 2),
        "cores": round(cpu / wall, 2) if wall else 0.0,
        "machine_busy_cores": round(busy / wall, 2) if wall else 0.0,
        "memory": server.memory(),
    }
    return result


class Suite:
    def __init__(self, servers: list[Server], settings: Settings, selected: list[str], log: Log):
        self.servers = servers
        self.settings = settings
        self.selected = selected
        self.log = log
        self.results: dict[str, dict[str, Any]] = {s.name: {} for s in servers}

    def _each(self, name: str, step: Step, on: tuple[str, ...] | None = None) -> None:
        """Run `step` on each server, or only on those named in `on` (the others get a
        `skipped` result naming why)."""
        if name not in self.selected:
            return
        for server in self.servers:
            if on is not None and server.name not in on:
                self.results[server.name][name] = {"skipped": f"runs on {', '.join(on)} only"}
                continue
            self.log(f"{name} on {server.name}")
            out = measured(server, step)
            if "error" in out:
                self.log(f"  failed: {out['error']}")
            self.results[server.name][name] = out

    def _hot_step(self, name: str, layers: dict[str, str]) -> Step:
        def step(server: Server) -> dict[str, Any]:
            return hot.run(server, self.settings, layers[server.name], name)

        return step

    def run(self) -> dict[str, dict[str, Any]]:
        s = self.settings
        big_needed = {"push_monolithic", "push_chunked", "pull", "range_read"} & set(self.selected)
        if big_needed:
            self.log(f"making the {s.blob_mib} MiB blobs (not timed)")
            mono = blob.BigBlob(s.blob_mib * MIB, seed=1)
            chunked = blob.BigBlob(s.blob_mib * MIB, seed=2)
            self._each("push_monolithic", lambda srv: blob.push_monolithic(srv, mono))
            if "push_monolithic" not in self.selected and {"pull", "range_read"} & big_needed:
                for server in self.servers:  # what the reads read, pushed untimed
                    with server.connect(timeout=600) as conn:
                        oci.push_blob(conn, "big/mono", mono.data, mono.digest)
            self._each(
                "push_chunked", lambda srv: blob.push_chunked(srv, chunked, s.chunk_mib * MIB)
            )
            self._each("pull", lambda srv: blob.pull(srv, "big/mono", mono))
            self._each(
                "range_read",
                lambda srv: blob.range_reads(
                    srv, "big/mono", mono, s.range_reads, s.range_mib * MIB
                ),
            )
            del mono, chunked
        self._each(
            "small_images",
            lambda srv: small.push_small_images(srv, s.small_images, s.small_clients),
        )
        hot_names = [n for n in hot.NAMES if n in self.selected]
        if hot_names or "knee" in self.selected:
            layers = {srv.name: hot.prepare(srv) for srv in self.servers}
            for name in hot_names:
                self._each(name, self._hot_step(name, layers))
        self._each("mounts", lambda srv: mounts.run(srv, s.mounts, s.mount_mib))
        if {"mixed", "knee"} & set(self.selected):
            pools = {srv.name: mixed.prepare(srv, s.mixed_pool) for srv in self.servers}
            self._each("mixed", lambda srv: mixed.run(srv, s, pools[srv.name]))
            self._each("knee", lambda srv: knee.run(srv, s, pools[srv.name]))
        self._each(
            "listings",
            lambda srv: listings.run(
                srv,
                s,
                s.regd_populate_budget_s if srv.name == "regd" else s.reference_populate_budget_s,
            ),
        )
        # Distribution issues no tokens: the reference column stays empty.
        self._each("token_issue", lambda srv: tokens.run(srv, s), on=("regd",))
        return self.results
