"""Benchmark regd's pull-through cache against a direct pull from its upstream.

    python bench/mirror.py [--size-mib 1024] [--layers 4] [--clients 20]

Starts Distribution (the upstream, access log on) and regd with a `[[mirror]]` table on
temporary storage and free ports of 127.0.0.1, pushes an image of `--size-mib` to the
upstream, then measures:

- direct:  a pull from the upstream itself;
- cold:    the first pull through regd (every layer fetched while it is served);
- warm:    the same pull again, from regd's cache;
- pushed:  the same image pushed into an ordinary regd repository and pulled (regd's own rate);
- burst:   `--clients` concurrent cold pulls of a second image, and how many times the
           upstream served each of its blobs (the cache promises once).

A pull reads the manifest, then its blobs, `--parallel` at a time (as docker and containerd
do), and throws the bytes away; rates are image bytes over wall time, and each phase's CPU
is the user + system seconds regd's and the upstream's processes spent on it, per GiB pulled
(less sensitive than rates to what else the machine is doing).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.servers import cpu_seconds, free_port, process_tree

MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DISTRIBUTION_CONFIG = """\
version: 0.1
log:
  level: warn
  accesslog:
    disabled: false
storage:
  filesystem:
    rootdirectory: {root}
http:
  addr: 127.0.0.1:{port}
"""
MIB = 1 << 20


def _wait(url: str, process: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{what} exited with status {process.returncode}")
        try:
            if httpx.get(f"{url}/v2/", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"{what} did not answer on {url} within 60 s")


def _layer(seed: int, size: int) -> Iterator[bytes]:
    """`size` bytes that differ per seed and do not compress, made lazily."""
    block = b"".join(hashlib.sha256(f"{seed}:{i}".encode()).digest() for i in range(MIB // 32))
    sent = 0
    while sent < size:
        piece = block[: min(MIB, size - sent)]
        sent += len(piece)
        yield piece


def _digest(chunks: Iterator[bytes]) -> str:
    h = hashlib.sha256()
    for chunk in chunks:
        h.update(chunk)
    return "sha256:" + h.hexdigest()


def _push_blob(http: httpx.Client, repo: str, body: bytes | Iterator[bytes], digest: str) -> None:
    start = http.post(f"/v2/{repo}/blobs/uploads/")
    start.raise_for_status()
    url = httpx.URL(str(http.base_url)).join(start.headers["location"])
    done = http.put(
        str(url.copy_merge_params({"digest": digest})),
        content=body,
        headers={"Content-Type": "application/octet-stream"},
    )
    done.raise_for_status()


def push_image(base: str, repo: str, seed: int, layers: int, layer_size: int) -> int:
    """An image of `layers` incompressible layers; returns its bytes."""
    with httpx.Client(base_url=base, timeout=600) as http:
        descriptors = []
        for n in range(layers):
            digest = _digest(_layer(seed * 1000 + n, layer_size))
            _push_blob(http, repo, _layer(seed * 1000 + n, layer_size), digest)
            descriptors.append(
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": digest,
                    "size": layer_size,
                }
            )
        config = json.dumps({"architecture": "amd64", "os": "linux", "seed": seed}).encode()
        config_digest = "sha256:" + hashlib.sha256(config).hexdigest()
        _push_blob(http, repo, config, config_digest)
        manifest = {
            "schemaVersion": 2,
            "mediaType": MANIFEST,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": config_digest,
                "size": len(config),
            },
            "layers": descriptors,
        }
        put = http.put(
            f"/v2/{repo}/manifests/v1",
            content=json.dumps(manifest).encode(),
            headers={"Content-Type": MANIFEST},
        )
        put.raise_for_status()
    return layers * layer_size + len(config)


def pull(base: str, repo: str, parallel: int) -> tuple[int, float]:
    """Pull manifest and blobs; (bytes, seconds)."""
    started = time.perf_counter()
    with httpx.Client(base_url=base, timeout=600) as http:
        answer = http.get(f"/v2/{repo}/manifests/v1", headers={"Accept": MANIFEST})
        answer.raise_for_status()
        doc = answer.json()
        digests = [doc["config"]["digest"], *(x["digest"] for x in doc["layers"])]

        def fetch(digest: str) -> int:
            received = 0
            with http.stream("GET", f"/v2/{repo}/blobs/{digest}") as blob:
                blob.raise_for_status()
                for chunk in blob.iter_raw(MIB):
                    received += len(chunk)
            return received

        with ThreadPoolExecutor(parallel) as pool:
            total = sum(pool.map(fetch, digests))
    return total, time.perf_counter() - started


def blob_gets(log: Path, digest: str) -> int:
    pattern = re.compile(rf'"GET /v2/[^ ]+/blobs/{re.escape(digest)} HTTP')
    return len(pattern.findall(log.read_text(errors="replace")))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--parallel", type=int, default=3)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--burst-mib", type=int, default=64)
    parser.add_argument(
        "--regd-data",
        type=Path,
        default=None,
        help="where regd keeps blobs (e.g. /dev/shm, to take the disk out of the comparison)",
    )
    args = parser.parse_args()
    binary = shutil.which("docker-registry") or shutil.which("registry")
    if binary is None:
        raise SystemExit("docker-registry is not installed; run scripts/setup")

    work = Path(tempfile.mkdtemp(prefix="regd-bench-mirror-"))
    processes: list[subprocess.Popen[bytes]] = []
    regd_data: Path | None = None
    try:
        up_port, regd_port = free_port(), free_port()
        config = work / "distribution.yml"
        config.write_text(DISTRIBUTION_CONFIG.format(root=work / "upstream", port=up_port))
        up_log = work / "upstream.log"
        with open(up_log, "wb") as log:
            processes.append(
                subprocess.Popen([binary, "serve", str(config)], stdout=log, stderr=log)
            )
        upstream = f"http://127.0.0.1:{up_port}"
        _wait(upstream, processes[-1], "distribution")

        regd_data = Path(tempfile.mkdtemp(dir=args.regd_data)) if args.regd_data else work / "regd"
        regd_config = work / "regd.toml"
        regd_config.write_text(
            f'[[mirror]]\nprefix = "up"\nupstream = "{upstream}"\ntimeout = "120s"\n'
        )
        with open(work / "regd.log", "wb") as log:
            processes.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "regd",
                        "serve",
                        "--addr",
                        f"127.0.0.1:{regd_port}",
                        "--data-dir",
                        str(regd_data),
                        "--log-level",
                        "warning",
                        "--no-access-log",
                    ],
                    stdout=log,
                    stderr=log,
                    env={"REGD_CONFIG": str(regd_config), "PATH": "/usr/bin:/bin"},
                )
            )
        regd = f"http://127.0.0.1:{regd_port}"
        _wait(regd, processes[-1], "regd")

        layer_size = args.size_mib * MIB // args.layers
        size = push_image(upstream, "big/image", 1, args.layers, layer_size)
        push_image(regd, "local/image", 1, args.layers, layer_size)
        results: dict[str, float] = {}

        def cpu(process: subprocess.Popen[bytes]) -> float:
            return sum(cpu_seconds(pid) for pid in process_tree(process.pid))

        for name, base, repo in (
            ("direct", upstream, "big/image"),
            ("cold", regd, "up/big/image"),
            ("warm", regd, "up/big/image"),
            ("pushed", regd, "local/image"),
        ):
            before = cpu(processes[0]), cpu(processes[1])
            got, seconds = pull(base, repo, args.parallel)
            after = cpu(processes[0]), cpu(processes[1])
            assert got == size, (name, got, size)
            results[name] = size / seconds / MIB
            gib = size / (1 << 30)
            print(
                f"{name:>7}: {size / MIB:.0f} MiB in {seconds:.2f} s = {results[name]:.0f} MiB/s; "
                f"CPU s/GiB regd {(after[1] - before[1]) / gib:.2f}, "
                f"upstream {(after[0] - before[0]) / gib:.2f}"
            )

        burst_size = args.burst_mib * MIB // args.layers
        push_image(upstream, "burst/image", 2, args.layers, burst_size)
        started = time.perf_counter()
        with ThreadPoolExecutor(args.clients) as pool:
            pulled = list(
                pool.map(lambda _: pull(regd, "up/burst/image", args.parallel), range(args.clients))
            )
        burst_seconds = time.perf_counter() - started
        with httpx.Client(base_url=upstream) as http:
            doc = http.get("/v2/burst/image/manifests/v1", headers={"Accept": MANIFEST}).json()
        digests = [doc["config"]["digest"], *(x["digest"] for x in doc["layers"])]
        fetches = {d: blob_gets(up_log, d) for d in digests}
        print(
            f"  burst: {args.clients} concurrent cold pulls of {args.burst_mib} MiB in "
            f"{burst_seconds:.2f} s; upstream GETs per blob: {sorted(set(fetches.values()))}"
        )
        assert all(p[0] == pulled[0][0] for p in pulled)
        print(
            f"ratios: cold/direct {results['cold'] / results['direct']:.2f} (target >= 0.9), "
            f"warm/pushed {results['warm'] / results['pushed']:.2f} (target >= 1.0)"
        )
        return 0
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
        shutil.rmtree(work, ignore_errors=True)
        if regd_data is not None and args.regd_data:
            shutil.rmtree(regd_data, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
