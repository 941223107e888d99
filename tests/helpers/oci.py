"""Real OCI images for tests, built offline from files already on this machine.

`umoci` makes the images (real gzip tar layers, real configs); `Layout` is a small reader and
writer of the OCI image-layout format, used to add what umoci cannot make: a multi-platform
image index.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"
REF_NAME = "org.opencontainers.image.ref.name"

EMPTY_JSON = b"{}"


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def descriptor(media_type: str, data: bytes, **extra: Any) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": sha256(data), "size": len(data), **extra}


def run_tool(argv: Sequence[str], *, timeout: float = 120, **kwargs: Any) -> str:
    """Run a command line tool; a failure raises with everything it printed."""
    try:
        done = subprocess.run(
            list(argv),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            **kwargs,
        )
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(
            f"timed out after {timeout} s: {' '.join(argv)}\n{exc.stdout}\n{exc.stderr}"
        ) from exc
    if done.returncode != 0:
        raise AssertionError(
            f"exit status {done.returncode}: {' '.join(argv)}\n"
            f"--- stdout ---\n{done.stdout}\n--- stderr ---\n{done.stderr}"
        )
    return done.stdout


class Layout:
    """An OCI image layout directory (`oci-layout`, `index.json`, `blobs/`)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def init(self) -> Layout:
        (self.path / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
        marker = self.path / "oci-layout"
        if not marker.exists():
            marker.write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
        if not (self.path / "index.json").exists():
            self.write_index({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []})
        return self

    def blob_path(self, digest: str) -> Path:
        algorithm, _, hexpart = digest.partition(":")
        return self.path / "blobs" / algorithm / hexpart

    def read_blob(self, digest: str) -> bytes:
        data = self.blob_path(digest).read_bytes()
        if sha256(data) != digest:
            raise ValueError(f"blob {digest} in {self.path} is corrupt")
        return data

    def write_blob(self, data: bytes) -> str:
        digest = sha256(data)
        path = self.blob_path(digest)
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(data)
            os.replace(tmp, path)
        return digest

    def index(self) -> dict[str, Any]:
        value: dict[str, Any] = json.loads((self.path / "index.json").read_text())
        return value

    def write_index(self, index: Mapping[str, Any]) -> None:
        tmp = self.path / "index.json.tmp"
        tmp.write_text(json.dumps(index, indent=2))
        os.replace(tmp, self.path / "index.json")

    def resolve(self, tag: str) -> dict[str, Any]:
        for desc in self.index()["manifests"]:
            if desc.get("annotations", {}).get(REF_NAME) == tag:
                found: dict[str, Any] = desc
                return found
        raise KeyError(f"no tag {tag!r} in {self.path}")

    def set_tag(self, tag: str, desc: Mapping[str, Any]) -> None:
        index = self.index()
        kept = [d for d in index["manifests"] if d.get("annotations", {}).get(REF_NAME) != tag]
        entry = dict(desc)
        entry["annotations"] = {**desc.get("annotations", {}), REF_NAME: tag}
        index["manifests"] = [*kept, entry]
        self.write_index(index)

    def manifest(self, tag_or_digest: str) -> dict[str, Any]:
        digest = tag_or_digest if ":" in tag_or_digest else self.resolve(tag_or_digest)["digest"]
        value: dict[str, Any] = json.loads(self.read_blob(digest))
        return value

    def reachable(self, tag: str) -> tuple[set[str], set[str]]:
        """Digests reachable from `tag`: (manifests and indexes, configs and layers)."""
        manifests: set[str] = set()
        blobs: set[str] = set()
        pending = [self.resolve(tag)["digest"]]
        while pending:
            digest = pending.pop()
            if digest in manifests:
                continue
            manifests.add(digest)
            doc = json.loads(self.read_blob(digest))
            pending.extend(child["digest"] for child in doc.get("manifests", []))
            for blob in [doc.get("config"), *doc.get("layers", [])]:
                if blob:
                    blobs.add(blob["digest"])
        return manifests, blobs

    def referenced_blobs(self, tag: str) -> set[str]:
        manifests, blobs = self.reachable(tag)
        return manifests | blobs


@dataclass(frozen=True)
class LayoutImage:
    layout: Path
    tag: str
    digest: str
    media_type: str

    @property
    def ref(self) -> str:
        """The image as a containers-image (skopeo, podman) reference."""
        return f"oci:{self.layout}:{self.tag}"


def build_image(
    layout_dir: Path,
    tag: str,
    *,
    files: Mapping[str, Path],
    architecture: str = "amd64",
    os_name: str = "linux",
    entrypoint: Sequence[str] = ("/bin/true",),
    labels: Mapping[str, str] | None = None,
) -> LayoutImage:
    """One image with a layer per entry of `files` (image path -> file or folder here)."""
    layout = Layout(layout_dir)
    if not (layout_dir / "index.json").exists():
        layout_dir.parent.mkdir(parents=True, exist_ok=True)
        run_tool(["umoci", "init", "--layout", str(layout_dir)])
    image = f"{layout_dir}:{tag}"
    run_tool(["umoci", "new", "--image", image])
    for target, source in files.items():
        run_tool(["umoci", "insert", "--image", image, str(source), target])
    config = [
        "umoci",
        "config",
        "--image",
        image,
        "--architecture",
        architecture,
        "--os",
        os_name,
    ]
    for part in entrypoint:
        config += ["--config.entrypoint", part]
    for key, value in (labels or {}).items():
        config += ["--config.label", f"{key}={value}"]
    run_tool(config)
    desc = layout.resolve(tag)
    return LayoutImage(layout_dir, tag, desc["digest"], desc["mediaType"])


def machine_files(scratch: Path, *, unique: bytes = b"") -> dict[str, Path]:
    """Real files from this machine, plus one small file that makes the image distinct."""
    scratch.mkdir(parents=True, exist_ok=True)
    marker = scratch / "marker.txt"
    marker.write_bytes(b"regd test image\n" + unique)
    files: dict[str, Path] = {"/etc/regd-test-marker": marker}
    for target, source in (
        ("/bin/true", Path("/usr/bin/true")),
        ("/etc/os-release", Path("/etc/os-release")),
        ("/usr/share/common-licenses/Apache-2.0", Path("/usr/share/common-licenses/Apache-2.0")),
    ):
        if source.exists():
            files[target] = source.resolve()
    return files


def build_index(
    layout_dir: Path,
    tag: str,
    images: Sequence[LayoutImage],
    *,
    annotations: Mapping[str, str] | None = None,
) -> LayoutImage:
    """An image index over images already in `layout_dir`, each with its platform."""
    layout = Layout(layout_dir)
    entries = []
    for image in images:
        if image.layout != layout_dir:
            raise ValueError("all images of an index must live in the same layout")
        manifest = layout.manifest(image.digest)
        config = json.loads(layout.read_blob(manifest["config"]["digest"]))
        platform = {"architecture": config["architecture"], "os": config["os"]}
        if config.get("variant"):
            platform["variant"] = config["variant"]
        size = layout.blob_path(image.digest).stat().st_size
        entries.append(
            {
                "mediaType": image.media_type,
                "digest": image.digest,
                "size": size,
                "platform": platform,
            }
        )
    index: dict[str, Any] = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}
    if annotations:
        index["annotations"] = dict(annotations)
    body = json.dumps(index, indent=2).encode()
    digest = layout.write_blob(body)
    layout.set_tag(tag, {"mediaType": OCI_INDEX, "digest": digest, "size": len(body)})
    return LayoutImage(layout_dir, tag, digest, OCI_INDEX)


def build_multiplatform(
    layout_dir: Path,
    tag: str,
    scratch: Path,
    platforms: Sequence[str] = ("linux/amd64", "linux/arm64"),
) -> tuple[LayoutImage, list[LayoutImage]]:
    images = []
    for platform in platforms:
        os_name, architecture = platform.split("/", 1)
        images.append(
            build_image(
                layout_dir,
                f"{tag}-{os_name}-{architecture}",
                files=machine_files(scratch / platform, unique=platform.encode()),
                architecture=architecture,
                os_name=os_name,
            )
        )
    return build_index(layout_dir, tag, images), images


def artifact_manifest(
    subject: Mapping[str, Any],
    *,
    artifact_type: str,
    payload: bytes,
    payload_type: str = "text/plain",
    annotations: Mapping[str, str] | None = None,
) -> bytes:
    """An OCI 1.1 artifact: empty config, one layer, and a `subject` it refers to."""
    manifest: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": artifact_type,
        "config": descriptor(OCI_EMPTY, EMPTY_JSON),
        "layers": [descriptor(payload_type, payload)],
        "subject": {
            "mediaType": subject["mediaType"],
            "digest": subject["digest"],
            "size": subject["size"],
        },
    }
    if annotations:
        manifest["annotations"] = dict(annotations)
    return json.dumps(manifest, indent=2).encode()
