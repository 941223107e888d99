"""`--storage s3`: both registries on object storage, side by side on one moto server.

One moto server (moto's standalone S3 endpoint over plain HTTP) runs for the whole run;
regd's s3 driver and Distribution's each get a bucket of their own. Both talk to it without
the machine's AWS_CA_BUNDLE (it names a CA for an HTTPS proxy; moto is plain HTTP).
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench.report import Variant
from bench.servers import (
    HOST,
    REPO_ROOT,
    Server,
    _ready_or_stopped,
    _spawn,
    free_port,
    reference_description,
    regd_command,
    regd_description,
)
from bench.settings import Settings

ACCESS_KEY = "bench-access"
SECRET_KEY = "bench-secret"
REGION = "us-east-1"
START_TIMEOUT = 30.0

# What the object-storage comparison is about; listings and tokens do not touch storage.
WORKLOADS = [
    "push_monolithic",
    "push_chunked",
    "pull",
    "small_images",
    "manifest_head",
    "manifest_get",
    "blob_head",
    "mounts",
]

# regd / Distribution, on the same moto server (issue 13's performance targets).
TARGETS: dict[str, tuple[str, float]] = {
    "push_monolithic": ("ratio>=", 1.5),
    "push_chunked": ("ratio>=", 5.0),
    "pull": ("ratio>=", 1.5),
    "small_images": ("ratio>=", 3.0),
    "manifest_head": ("ratio>=", 10.0),
    "manifest_get": ("ratio>=", 10.0),
    "blob_head": ("ratio>=", 10.0),
    "mounts": ("ratio>=", 3.0),
}


def variant(settings: Settings) -> Variant:
    """The table of this run: its targets, and the sizes it really used in the labels."""
    return Variant(
        TARGETS,
        {
            "1 GiB": f"{settings.blob_mib} MiB",
            "64 MiB": f"{settings.mount_mib} MiB",
            "16 clients": f"{settings.small_clients} clients",
            "small images": f"{settings.small_images} small images",
        },
    )


def quarter(settings: Settings) -> Settings:
    """A quarter of each workload's size: moto keeps every object in its memory, and
    Distribution's per-request S3 round trips would make full-size runs last hours."""
    settings.blob_mib = max(16, settings.blob_mib // 4)
    settings.small_images = max(10, settings.small_images // 4)
    settings.mounts = max(5, settings.mounts // 4)
    settings.mount_mib = max(4, settings.mount_mib // 4)
    return settings


def _no_ca_bundle(env: dict[str, str] | None = None) -> dict[str, str]:
    out = dict(os.environ if env is None else env)
    out.pop("AWS_CA_BUNDLE", None)
    return out


@dataclass
class Moto:
    url: str
    proc: subprocess.Popen[bytes]
    workdir: Path

    def create_bucket(self, prefix: str) -> str:
        # moto takes any credentials; an unsigned PUT creates a bucket.
        name = f"{prefix}-{secrets.token_hex(4)}"
        answer = httpx.put(f"{self.url}/{name}", timeout=30)
        if answer.status_code != 200:
            raise RuntimeError(f"moto refused bucket {name}: {answer.status_code} {answer.text}")
        return name

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        shutil.rmtree(self.workdir, ignore_errors=True)


def moto_binary() -> str:
    found = shutil.which("moto_server") or str(Path(sys.executable).parent / "moto_server")
    if not Path(found).exists():
        raise RuntimeError("moto_server is not installed (pip install 'moto[server]')")
    return found


def start_moto(tmp_root: str | None = None) -> Moto:
    workdir = Path(tempfile.mkdtemp(prefix="bench-moto-", dir=tmp_root))
    port = free_port()
    proc, log_path = _spawn([moto_binary(), "-H", HOST, "-p", str(port)], workdir, _no_ca_bundle())
    moto = Moto(f"http://{HOST}:{port}", proc, workdir)
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"moto_server exited early; see {log_path}")
        try:
            httpx.get(f"{moto.url}/moto-api/", timeout=2)
            return moto
        except httpx.HTTPError:
            if time.monotonic() > deadline:
                moto.stop()
                raise RuntimeError(
                    f"moto_server did not answer within {START_TIMEOUT:.0f} s"
                ) from None
            time.sleep(0.1)


def regd_env(moto: Moto, bucket: str) -> dict[str, str]:
    return {
        "REGD_STORAGE": "s3",
        "REGD_S3_BUCKET": bucket,
        "REGD_S3_ENDPOINT_URL": moto.url,
        "REGD_S3_REGION": REGION,
        "REGD_S3_PATH_STYLE": "true",
        "REGD_S3_ACCESS_KEY": ACCESS_KEY,
        "REGD_S3_SECRET_KEY": SECRET_KEY,
    }


def start_regd(
    workers: int | None,
    moto: Moto,
    database: str | None = None,
    tmp_root: str | None = None,
    bucket: str | None = None,
) -> Server:
    """regd on a free port, its blobs in `bucket` of `moto` (a fresh one unless named:
    replicas share one)."""
    workdir = Path(tempfile.mkdtemp(prefix="bench-regd-s3-", dir=tmp_root))
    port = free_port()
    bucket = bucket or moto.create_bucket("bench-regd")
    cmd = regd_command(port, workdir / "data", workers, database)
    env = _no_ca_bundle({**os.environ, **regd_env(moto, bucket), "PYTHONPATH": str(REPO_ROOT)})
    proc, log_path = _spawn(cmd, workdir, env)
    server = Server(
        "regd",
        port,
        proc,
        workdir,
        "regd",
        log_path,
        {"bucket": bucket},
    )
    _ready_or_stopped(server)
    server.description = regd_description(server, workers, database, "s3 driver")
    return server


REFERENCE_S3_CONFIG = """\
version: 0.1
storage:
  s3:
    region: {region}
    bucket: {bucket}
    regionendpoint: {endpoint}
    accesskey: {access}
    secretkey: {secret}
    secure: false
    v4auth: true
  delete:
    enabled: true
  redirect:
    disable: true
http:
  addr: {host}:{port}
log:
  level: warn
  accesslog:
    disabled: true
"""


def start_reference(
    moto: Moto, binary: str = "docker-registry", tmp_root: str | None = None
) -> Server:
    """Distribution 2.8's s3 driver on a fresh bucket of `moto`. Redirects are off so
    both registries serve blob bytes themselves, as regd does by default."""
    workdir = Path(tempfile.mkdtemp(prefix="bench-ref-s3-", dir=tmp_root))
    port = free_port()
    bucket = moto.create_bucket("bench-ref")
    config = workdir / "config.yml"
    config.write_text(
        REFERENCE_S3_CONFIG.format(
            region=REGION,
            bucket=bucket,
            endpoint=moto.url,
            access=ACCESS_KEY,
            secret=SECRET_KEY,
            host=HOST,
            port=port,
        )
    )
    env = {k: v for k, v in _no_ca_bundle().items() if not k.startswith("REGISTRY_")}
    proc, log_path = _spawn([binary, "serve", str(config)], workdir, env)
    server = Server(
        "reference",
        port,
        proc,
        workdir,
        reference_description(binary, "s3 driver"),
        log_path,
        {"bucket": bucket},
    )
    _ready_or_stopped(server)
    return server
