"""Workload sizes: the full run and the `--quick` smoke run."""

from __future__ import annotations

from dataclasses import dataclass, field

MIB = 1024 * 1024


@dataclass
class Settings:
    blob_mib: int = 1024
    chunk_mib: int = 16
    range_reads: int = 200
    range_mib: int = 1
    small_images: int = 200
    small_clients: int = 16
    hot_clients: int = 32
    hot_seconds: float = 10.0
    loadgen_processes: int = 2
    tags: int = 5000
    repositories: int = 2000
    page_size: int = 100
    list_repeats: int = 5
    page_repeats: int = 30
    mounts: int = 50
    mount_mib: int = 64
    mixed_clients: int = 32
    mixed_seconds: float = 20.0
    mixed_pool: int = 32
    # The concurrency sweep (bench.workloads.knee): every level runs both loads.
    knee_clients: list[int] = field(default_factory=lambda: [64, 256])
    knee_seconds: float = 8.0
    growth_sizes: list[int] = field(default_factory=lambda: [1_000, 10_000, 100_000])
    populate_clients: int = 16
    regd_populate_budget_s: float = 900.0
    reference_populate_budget_s: float = 120.0

    @classmethod
    def quick(cls) -> Settings:
        return cls(
            blob_mib=64,
            range_reads=50,
            small_images=40,
            hot_seconds=2.0,
            tags=500,
            repositories=300,
            list_repeats=2,
            page_repeats=10,
            mounts=10,
            mount_mib=8,
            mixed_seconds=4.0,
            mixed_pool=8,
            knee_seconds=2.0,
            growth_sizes=[1_000],
            regd_populate_budget_s=30.0,
            reference_populate_budget_s=15.0,
        )
