"""Command line of the benchmark: options, starting the servers, the run, the report."""

from __future__ import annotations

import argparse
import platform
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from bench import auth, machine, report, servers
from bench import s3 as object_storage
from bench.settings import Settings
from bench.suite import WORKLOADS, Suite

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python bench/run.py",
        description=(
            "Run a fixed set of workloads against regd and against the reference registry "
            "(Distribution, the Debian docker-registry package), both started here on temporary "
            "storage and free ports of 127.0.0.1, then print a comparison table and write "
            "bench/results/<timestamp>.json."
        ),
    )
    p.add_argument("--quick", action="store_true", help="small sizes: a smoke run of everything")
    p.add_argument(
        "--regd-workers", type=int, metavar="N",
        help="regd --workers N (default: none given, so regd runs its own default, one "
        "worker per usable CPU; give 1 to compare a single worker)",
    )  # fmt: skip
    p.add_argument("--database", metavar="URL", help="regd --database (default: its SQLite)")
    p.add_argument(
        "--reference-binary",
        default="docker-registry",
        metavar="PATH",
        help="the Distribution binary (default: docker-registry)",
    )
    p.add_argument(
        "--only", nargs="+", choices=WORKLOADS, metavar="WORKLOAD",
        help=f"run only these workloads: {', '.join(WORKLOADS)}",
    )  # fmt: skip
    p.add_argument(
        "--skip", nargs="+", choices=WORKLOADS, default=[], metavar="WORKLOAD",
        help="leave these workloads out",
    )  # fmt: skip
    p.add_argument("--no-reference", action="store_true", help="measure regd alone")
    p.add_argument(
        "--auth", choices=auth.MODES, default="none",
        help="authentication on both registries: none (default); basic (one htpasswd file, "
        "Basic credentials on every request); token (regd's token service, which "
        "Distribution trusts; Bearer tokens fetched before the timed run)",
    )  # fmt: skip
    p.add_argument(
        "--growth-sizes", metavar="N,N,...",
        help="entry counts for the page-cost growth (default 1000,10000,100000; --quick: 1000)",
    )  # fmt: skip
    p.add_argument(
        "--reference-budget", type=float, metavar="S",
        help="seconds the reference may spend populating tags, and again repositories "
        "(default 120; --quick 15); sizes beyond it are skipped and reported",
    )  # fmt: skip
    p.add_argument(
        "--regd-budget", type=float, metavar="S",
        help="the same for regd (default 900; --quick 30)",
    )  # fmt: skip
    p.add_argument(
        "--storage", choices=("filesystem", "s3"), default="filesystem",
        help="filesystem (default): both on temporary directories; s3: both on buckets of "
        "one moto server started here (regd's s3 driver vs Distribution's), quarter-size "
        "workloads, and by default only the workloads that touch storage",
    )  # fmt: skip
    p.add_argument("--blob-mib", type=int, metavar="MIB", help="large blob size (default 1024)")
    p.add_argument("--tmp", metavar="DIR", help="where the temporary stores go (default: $TMPDIR)")
    p.add_argument("--keep-data", action="store_true", help="leave the stores behind")
    p.add_argument(
        "--output", type=Path, metavar="FILE", help="JSON path (default: bench/results/)"
    )
    return p.parse_args(argv)


def settings_from(args: argparse.Namespace) -> Settings:
    s = Settings.quick() if args.quick else Settings()
    if args.growth_sizes:
        s.growth_sizes = [int(v) for v in args.growth_sizes.split(",") if v.strip()]
    if args.reference_budget is not None:
        s.reference_populate_budget_s = args.reference_budget
    if args.regd_budget is not None:
        s.regd_populate_budget_s = args.regd_budget
    if args.storage == "s3":
        s = object_storage.quarter(s)
    if args.blob_mib:
        s.blob_mib = args.blob_mib
    return s


def totals(server: servers.Server, started_cpu: float) -> dict[str, Any]:
    return {"cpu_s": round(server.cpu() - started_cpu, 2), **server.memory()}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    console = Console(width=None if sys.stdout.isatty() else 150)
    settings = settings_from(args)
    if args.storage == "s3" and args.auth != "none":
        console.print("--storage s3 runs without authentication only")
        return 2
    everything = object_storage.WORKLOADS if args.storage == "s3" else WORKLOADS
    selected = [w for w in (args.only or everything) if w not in args.skip]
    if "manifest_get" in selected and shutil.which("wrk") is None:
        console.print("wrk is not installed; skipping manifest_get")
        selected.remove("manifest_get")
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    started = time.perf_counter()

    def log(message: str) -> None:
        console.log(message, highlight=False)

    flag = "" if args.regd_workers is None else f" --workers {args.regd_workers}"
    log(f"starting regd{flag} (auth: {args.auth})")
    running: list[servers.Server] = []
    moto: object_storage.Moto | None = None
    try:
        if args.storage == "s3":
            log("starting moto_server (one S3 endpoint, a bucket for each registry)")
            moto = object_storage.start_moto(args.tmp)
            regd = object_storage.start_regd(args.regd_workers, moto, args.database, args.tmp)
        else:
            regd = servers.start_regd(
                args.regd_workers, args.database, args.tmp, auth_mode=args.auth
            )
        running.append(regd)
        if not args.no_reference:
            log(f"starting the reference registry (auth: {args.auth})")
            running.append(
                object_storage.start_reference(moto, args.reference_binary, args.tmp)
                if moto is not None
                else servers.start_reference(args.reference_binary, args.tmp, regd)
            )
        cpu_at_start = {srv.name: srv.cpu() for srv in running}
        load_before = machine.load_average()
        results = Suite(running, settings, selected, log).run()
        for srv in running:
            results[srv.name]["totals"] = totals(srv, cpu_at_start[srv.name])
    finally:
        for srv in running:
            srv.stop(keep=args.keep_data)
        if moto is not None:
            moto.stop()
    elapsed = time.perf_counter() - started
    reference = running[-1].description if len(running) > 1 else "no reference"
    title = f"{running[0].description} vs {reference}{' (quick)' if args.quick else ''}"
    if args.auth != "none":
        title += f", auth {args.auth}"
    variant = None
    if args.storage == "s3":
        title += ", both on S3 (one moto server)"
        variant = object_storage.variant(settings)
    verdicts = report.render(console, results, title, variant)
    document = {
        "timestamp": stamp,
        "title": title,
        "args": vars(args),
        "settings": settings.__dict__,
        "workloads": selected,
        "machine": {
            **machine.describe(),
            "python": sys.version.split()[0],
            "platform": platform.platform(),
            "load_average_before": load_before,
            "load_average_after": machine.load_average(),
        },
        "servers": {srv.name: srv.description for srv in running},
        "elapsed_s": round(elapsed, 1),
        "targets": verdicts,
        "results": results,
    }
    path = args.output or RESULTS_DIR / f"{stamp}.json"
    report.write_json(path, document)
    console.print(f"results: {path}  ({elapsed:.0f} s)")
    return 0
