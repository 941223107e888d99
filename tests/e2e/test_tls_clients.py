"""Real clients over TLS to regd, trusting the test CA: skopeo and podman through
`--cert-dir`, regctl through `--ca-cert` / `$REGCTL_CA_CERT`."""

from __future__ import annotations

import ipaddress
import os
import socket
import ssl
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme

from tests.helpers.clients import Podman, Skopeo
from tests.helpers.oci import LayoutImage, sha256
from tests.helpers.servers import RegdFactory, RegdServer, free_port

pytestmark = pytest.mark.e2e


def outward_address() -> str | None:
    """This machine's own non-loopback IPv4 address (regctl speaks plain HTTP to loopback)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            # Picks the route's source address; a UDP connect sends nothing.
            probe.connect(("192.0.2.1", 9))
        except OSError:
            return None
        address: str = probe.getsockname()[0]
    return None if ipaddress.ip_address(address).is_loopback else address


@dataclass
class TlsRegd:
    server: RegdServer
    cert_dir: Path  # containers' layout: CA certificates as *.crt
    ca_file: Path
    outward: str | None


@pytest.fixture
def tls_regd(regd_factory: RegdFactory, database_url: str | None, tmp_path: Path) -> TlsRegd:
    ca = trustme.CA()
    outward = outward_address()
    leaf = ca.issue_cert("127.0.0.1", "localhost", *([outward] if outward else []))
    pki = tmp_path / "pki"
    cert_dir = pki / "certs.d"
    cert_dir.mkdir(parents=True)
    ca_file = cert_dir / "ca.crt"
    ca.cert_pem.write_to_path(str(ca_file))
    leaf.cert_chain_pems[0].write_to_path(str(pki / "cert.pem"))
    leaf.private_key_pem.write_to_path(str(pki / "key.pem"))
    trust = ssl.create_default_context()
    ca.configure_trust(trust)
    port = free_port()
    server = regd_factory(
        database_url=database_url,
        port=port,
        # On every address, so regctl can reach it by one that is not loopback.
        extra_args=["--addr", f"0.0.0.0:{port}"] if outward else [],
        env={
            "REGD_TLS_CERT": str(pki / "cert.pem"),
            "REGD_TLS_KEY": str(pki / "key.pem"),
            # Off loopback regd refuses to serve everyone unless told that is meant; these
            # tests are about TLS, not accounts.
            "REGD_AUTH_OPEN": "1",
        },
        tls_verify=trust,
    )
    return TlsRegd(server, cert_dir, ca_file, outward)


def test_skopeo_copies_over_tls_with_the_ca(
    tls_regd: TlsRegd, skopeo: Skopeo, oci_image: LayoutImage
) -> None:
    target = f"docker://{tls_regd.server.host}/e2e/tls:v1"
    with pytest.raises(AssertionError, match="certificate signed by unknown authority"):
        skopeo("copy", oci_image.ref, target)

    skopeo("copy", "--dest-cert-dir", str(tls_regd.cert_dir), oci_image.ref, target)
    raw = skopeo("inspect", "--raw", "--cert-dir", str(tls_regd.cert_dir), target).encode()
    assert sha256(raw) == oci_image.digest


def regctl(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("REGCTL_")}
    return subprocess.run(
        [str(Path(sys.executable).with_name("regctl")), *args],
        env={**clean, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_regctl_verifies_with_ca_cert(
    tls_regd: TlsRegd, skopeo: Skopeo, oci_image: LayoutImage
) -> None:
    if tls_regd.outward is None:
        pytest.skip("no non-loopback address to reach regd over HTTPS")
    skopeo(
        "copy",
        "--dest-cert-dir",
        str(tls_regd.cert_dir),
        oci_image.ref,
        f"docker://{tls_regd.server.host}/e2e/regctl-tls:v1",
    )
    remote = f"{tls_regd.outward}:{tls_regd.server.port}/e2e/regctl-tls:v1"

    untrusted = regctl("inspect", "--json", remote)
    assert untrusted.returncode == 1
    assert "TLS verification failed" in untrusted.stderr
    assert len(untrusted.stderr.strip().splitlines()) == 1

    by_flag = regctl("--ca-cert", str(tls_regd.ca_file), "inspect", "--json", remote)
    assert by_flag.returncode == 0, by_flag.stderr
    assert oci_image.digest in by_flag.stdout

    by_env = regctl("inspect", "--json", remote, env={"REGCTL_CA_CERT": str(tls_regd.ca_file)})
    assert by_env.returncode == 0, by_env.stderr
    assert by_env.stdout == by_flag.stdout


@pytest.mark.parametrize("database_url", [None])
def test_podman_pushes_and_pulls_over_tls(
    tls_regd: TlsRegd, skopeo: Skopeo, podman: Podman, oci_image: LayoutImage, tmp_path: Path
) -> None:
    cert_dir = str(tls_regd.cert_dir)
    source = f"{tls_regd.server.host}/e2e/podman-tls-source:v1"
    skopeo("copy", "--dest-cert-dir", cert_dir, oci_image.ref, f"docker://{source}")

    podman("pull", "--cert-dir", cert_dir, source)
    pushed = f"{tls_regd.server.host}/e2e/podman-tls-pushed:v1"
    digest_file = tmp_path / "pushed.digest"
    podman("push", "--cert-dir", cert_dir, "--digestfile", str(digest_file), source, pushed)
    raw = skopeo("inspect", "--raw", "--cert-dir", cert_dir, f"docker://{pushed}").encode()
    assert sha256(raw) == digest_file.read_text().strip()

    podman.reset()
    podman("pull", "--cert-dir", cert_dir, pushed)
    digest = podman("image", "inspect", "--format", "{{.Digest}}", pushed).strip()
    assert digest == digest_file.read_text().strip()
