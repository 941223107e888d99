"""TLS against a real `regd serve`: HTTPS, HTTP/2, client certificates, reload on SIGHUP,
and the one line a bad certificate file gets at start."""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import trustme

from regd import config as cfg
from regd.errors import ConfigError
from tests.helpers.servers import RegdFactory, RegdServer, free_port

pytestmark = pytest.mark.e2e


@dataclass
class Pki:
    ca: trustme.CA
    cert: Path
    key: Path
    ca_file: Path
    served: trustme.LeafCert

    def client_context(self, client: trustme.LeafCert | None = None) -> ssl.SSLContext:
        context = ssl.create_default_context()
        self.ca.configure_trust(context)
        if client is not None:
            client.configure_cert(context)
        return context

    def issue(self) -> trustme.LeafCert:
        """A new server certificate, written over the served files."""
        self.served = self.ca.issue_cert("127.0.0.1", "localhost")
        write_leaf(self.served, self.cert, self.key)
        return self.served


def write_leaf(leaf: trustme.LeafCert, cert: Path, key: Path) -> None:
    # Written beside and renamed, as a certificate renewal tool does.
    for data, path in (
        (leaf.cert_chain_pems[0].bytes(), cert),
        (leaf.private_key_pem.bytes(), key),
    ):
        partial = path.with_suffix(".new")
        partial.write_bytes(data)
        partial.replace(path)


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    ca = trustme.CA()
    directory = tmp_path / "pki"
    directory.mkdir()
    ca_file = directory / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    served = ca.issue_cert("127.0.0.1", "localhost")
    cert, key = directory / "cert.pem", directory / "key.pem"
    write_leaf(served, cert, key)
    return Pki(ca, cert, key, ca_file, served)


def tls_env(pki: Pki, **extra: str) -> dict[str, str]:
    return {"REGD_TLS_CERT": str(pki.cert), "REGD_TLS_KEY": str(pki.key), **extra}


def peer_certificate(server: RegdServer, context: ssl.SSLContext) -> bytes:
    """The DER certificate a new connection is shown."""
    with (
        socket.create_connection(("127.0.0.1", server.port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as conn,
    ):
        der = conn.getpeercert(binary_form=True)
        assert der is not None
        return der


def der(leaf: trustme.LeafCert) -> bytes:
    return ssl.PEM_cert_to_DER_cert(leaf.cert_chain_pems[0].bytes().decode())


def wait_for(predicate: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"not reached within {timeout:.0f} s: {what}")


def access_lines(server: RegdServer) -> list[str]:
    return [line for line in server.output().splitlines() if "logger=regd.access" in line]


def test_https_serves_v2_and_plain_http_is_told_why(
    regd_factory: RegdFactory, database_url: str | None, pki: Pki
) -> None:
    server = regd_factory(
        database_url=database_url, env=tls_env(pki), tls_verify=pki.client_context()
    )
    with httpx.Client(verify=pki.client_context()) as client:
        answer = client.get(f"https://{server.host}/v2/")
    assert answer.status_code == 200
    assert answer.headers["docker-distribution-api-version"] == "registry/2.0"

    plain = httpx.get(f"http://{server.host}/v2/", timeout=10)
    assert plain.status_code == 400
    assert "speaks HTTPS" in plain.text

    # A client that does not trust the CA refuses the server.
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(f"https://{server.host}/v2/", verify=ssl.create_default_context())


def test_http2_capable_clients_get_http1(regd_factory: RegdFactory, pki: Pki) -> None:
    """HTTP/2 is not offered (it was slower for pulls); a client offering it falls back."""
    server = regd_factory(env=tls_env(pki), tls_verify=pki.client_context())
    with httpx.Client(verify=pki.client_context(), http2=True) as client:
        answer = client.get(f"https://{server.host}/v2/")
        assert answer.status_code == 200
        assert answer.http_version == "HTTP/1.1"


def test_required_client_certificate(regd_factory: RegdFactory, pki: Pki) -> None:
    alice = pki.ca.issue_cert("alice@example.org", common_name="alice")
    server = regd_factory(
        env=tls_env(pki, REGD_TLS_CLIENT_CA=str(pki.ca_file), REGD_ACCESS_LOG="1"),
        log_level="info",
        tls_verify=pki.client_context(alice),
    )
    # Without a certificate the handshake is refused (under TLS 1.3 the client learns it
    # on its first read).
    with pytest.raises(httpx.TransportError):
        httpx.get(f"https://{server.host}/v2/", verify=pki.client_context(), timeout=10)

    stranger_ca = trustme.CA()
    mallory = stranger_ca.issue_cert("mallory@example.org", common_name="mallory")
    with pytest.raises(httpx.TransportError):
        httpx.get(f"https://{server.host}/v2/", verify=pki.client_context(mallory), timeout=10)

    for _ in range(2):
        with httpx.Client(verify=pki.client_context(alice)) as client:
            assert client.get(f"https://{server.host}/v2/_catalog").status_code == 200
    wait_for(
        lambda: sum("path=/v2/_catalog" in line for line in access_lines(server)) == 2,
        "two access log lines for the catalog",
    )
    catalog = [line for line in access_lines(server) if "path=/v2/_catalog" in line]
    assert all(line.endswith("user=alice") for line in catalog), catalog
    assert not any("mallory" in line for line in access_lines(server))


def test_optional_client_certificate(regd_factory: RegdFactory, pki: Pki) -> None:
    alice = pki.ca.issue_cert("alice@example.org", common_name="alice")
    server = regd_factory(
        env=tls_env(
            pki,
            REGD_TLS_CLIENT_CA=str(pki.ca_file),
            REGD_TLS_CLIENT_AUTH="optional",
            REGD_ACCESS_LOG="1",
        ),
        log_level="info",
        tls_verify=pki.client_context(),
    )
    anonymous = httpx.get(f"https://{server.host}/v2/_catalog", verify=pki.client_context())
    assert anonymous.status_code == 200
    named = httpx.get(f"https://{server.host}/v2/_catalog", verify=pki.client_context(alice))
    assert named.status_code == 200
    wait_for(
        lambda: sum("path=/v2/_catalog" in line for line in access_lines(server)) == 2,
        "two access log lines for the catalog",
    )
    users = [line.rsplit(" ", 1)[1] for line in access_lines(server) if "_catalog" in line]
    assert users == ["user=-", "user=alice"]
    # A certificate that is offered must still verify.
    stranger = trustme.CA().issue_cert("mallory@example.org", common_name="mallory")
    with pytest.raises(httpx.TransportError):
        httpx.get(f"https://{server.host}/v2/", verify=pki.client_context(stranger), timeout=10)


def https_get_on(conn: ssl.SSLSocket, path: str) -> bytes:
    """The status line of one HTTP/1.1 request on an open connection, its body consumed."""
    conn.sendall(f"GET {path} HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n".encode())
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        assert chunk, "connection closed"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        chunk = conn.recv(65536)
        assert chunk, "connection closed"
        body += chunk
    return head.split(b"\r\n", 1)[0]


@pytest.mark.parametrize("workers", [1, 2])
def test_sighup_reloads_certificate_for_new_connections(
    regd_factory: RegdFactory, pki: Pki, workers: int
) -> None:
    server = regd_factory(
        env=tls_env(pki), workers=workers, log_level="info", tls_verify=pki.client_context()
    )
    # The server answers once one worker is up; the signal is meant for all of them.
    wait_for(lambda: server.output().count("Running on") == workers, "every worker listening")
    first = pki.served
    context = pki.client_context()
    assert peer_certificate(server, context) == der(first)

    # A connection opened before the reload, kept alive across it.
    with (
        socket.create_connection(("127.0.0.1", server.port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as open_conn,
    ):
        assert https_get_on(open_conn, "/v2/") == b"HTTP/1.1 200 "
        second = pki.issue()
        assert server.process is not None
        os.kill(server.process.pid, signal.SIGHUP)
        wait_for(
            lambda: server.output().count("tls reloaded") == workers,
            f"{workers} worker(s) logging the reload",
        )
        # Every new connection, whichever worker takes it, sees the new certificate.
        for _ in range(8 * workers):
            assert peer_certificate(server, context) == der(second)
        assert https_get_on(open_conn, "/v2/") == b"HTTP/1.1 200 "
        assert open_conn.getpeercert(binary_form=True) == der(first)
    assert server.running


def test_bad_files_on_sighup_keep_the_served_certificate(
    regd_factory: RegdFactory, pki: Pki
) -> None:
    server = regd_factory(env=tls_env(pki), log_level="info", tls_verify=pki.client_context())
    first = pki.served
    other = pki.ca.issue_cert("127.0.0.1")
    # A renewal half done: the new certificate is in place, its key is not.
    pki.cert.write_bytes(other.cert_chain_pems[0].bytes())
    assert server.process is not None
    os.kill(server.process.pid, signal.SIGHUP)
    wait_for(lambda: "tls reload failed" in server.output(), "the failed reload logged")
    failed = [line for line in server.output().splitlines() if "tls reload failed" in line]
    assert len(failed) == 1
    assert str(pki.key) in failed[0]
    assert peer_certificate(server, pki.client_context()) == der(first)
    assert server.running


def run_regd(env: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("REGD_")}
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "regd",
            "serve",
            "--addr",
            f"127.0.0.1:{free_port()}",
            "--data-dir",
            str(tmp_path / "data"),
        ],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def encrypted_key(leaf: trustme.LeafCert) -> bytes:
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(leaf.private_key_pem.bytes(), password=None)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    )


@pytest.mark.parametrize(
    ("case", "named"),
    [
        ("missing cert", "tls_cert: cannot read {cert}: No such file or directory"),
        ("key is a directory", "tls_key: cannot read {key}: Is a directory"),
        ("garbage cert", "tls_cert: {cert} holds no PEM certificate"),
        ("key of another cert", "tls_key: {key} does not match the certificate in {cert}"),
        ("encrypted key", "tls_key: {key} is encrypted"),
        ("garbage client CA", "tls_client_ca: {ca} holds no PEM certificate"),
    ],
)
def test_bad_tls_files_stop_regd_with_one_line(
    pki: Pki, tmp_path: Path, case: str, named: str
) -> None:
    env = tls_env(pki)
    ca = tmp_path / "client-ca.pem"
    if case == "missing cert":
        pki.cert.unlink()
    elif case == "key is a directory":
        pki.key.unlink()
        pki.key.mkdir()
    elif case == "garbage cert":
        pki.cert.write_text("not a certificate\n")
    elif case == "key of another cert":
        pki.key.write_bytes(pki.ca.issue_cert("127.0.0.1").private_key_pem.bytes())
    elif case == "encrypted key":
        pki.key.write_bytes(encrypted_key(pki.served))
    elif case == "garbage client CA":
        ca.write_text("nothing here\n")
        env["REGD_TLS_CLIENT_CA"] = str(ca)
    result = run_regd(env, tmp_path)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    expected = named.format(cert=pki.cert, key=pki.key, ca=ca)
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"regd: {expected}"), result.stderr
    assert "Traceback" not in result.stderr + result.stdout


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"REGD_TLS_CERT": "/c.pem"}, "tls_cert and tls_key must be given together"),
        ({"REGD_TLS_CLIENT_CA": "/ca.pem"}, "tls_client_ca needs tls_cert and tls_key"),
        (
            {"REGD_TLS_CERT": "/c.pem", "REGD_TLS_KEY": "/k.pem", "REGD_TLS_CLIENT_AUTH": "maybe"},
            "tls_client_auth must be require or optional",
        ),
    ],
)
def test_incomplete_tls_settings_are_refused(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        cfg.load(env=env)
