"""Real registry processes on 127.0.0.1: regd itself and the reference registry.

Each server runs in its own process group so that a SIGKILL reaches any worker processes
too, and its output goes to a file (a pipe nobody drains would stall the server).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import httpx

START_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0


class ServerStartError(RuntimeError):
    pass


def free_port() -> int:
    # Asked of the wildcard address, so the port is free on every address: some servers
    # here listen on 0.0.0.0 as well, and a port free on loopback alone may be taken there.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("0.0.0.0", 0))
        port: int = sock.getsockname()[1]
        return port


class ServerProcess:
    """A server started from a fixed command line, restartable on the same port."""

    kind = "server"

    def __init__(
        self,
        argv: Sequence[str],
        *,
        port: int,
        log_dir: Path,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.argv = list(argv)
        self.port = port
        self.host = f"127.0.0.1:{port}"
        self.url = f"http://{self.host}"
        # A server that speaks TLS gets an https url and the context that trusts its CA.
        self.verify: ssl.SSLContext | bool = True
        self.env = dict(env if env is not None else os.environ)
        self.log_dir = log_dir
        self.process: subprocess.Popen[bytes] | None = None
        self._starts = 0

    @property
    def log_path(self) -> Path:
        return self.log_dir / f"{self.kind}-{self.port}-{self._starts}.log"

    def output(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def start(self, timeout: float = START_TIMEOUT) -> None:
        if self.process is not None and self.process.poll() is None:
            raise RuntimeError(f"{self.kind} on {self.host} is already running")
        self._starts += 1
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                start_new_session=True,
            )
        self._wait_ready(timeout)

    def _wait_ready(self, timeout: float) -> None:
        assert self.process is not None
        deadline = time.monotonic() + timeout
        last_error = "no answer yet"
        with httpx.Client(timeout=2.0, verify=self.verify) as client:
            while time.monotonic() < deadline:
                code = self.process.poll()
                if code is not None:
                    raise ServerStartError(
                        f"{self.kind} exited with status {code} before answering on {self.url}\n"
                        f"command: {' '.join(self.argv)}\n--- output ---\n{self.output()}"
                    )
                try:
                    answer = client.get(f"{self.url}/v2/")
                except httpx.TransportError as exc:
                    last_error = repr(exc)
                else:
                    # 401: up, and asking for credentials (authentication is on).
                    if answer.status_code in (200, 401):
                        return
                    last_error = f"GET /v2/ answered {answer.status_code}: {answer.text[:500]}"
                time.sleep(0.05)
        self._kill_group(signal.SIGKILL)
        raise ServerStartError(
            f"{self.kind} did not answer 200 or 401 on {self.url}/v2/ within {timeout:.0f} s "
            f"({last_error})\ncommand: {' '.join(self.argv)}\n--- output ---\n{self.output()}"
        )

    def _kill_group(self, sig: signal.Signals) -> None:
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, sig)
        if sig == signal.SIGKILL:
            self.process.wait(timeout=STOP_TIMEOUT)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL after STOP_TIMEOUT; returns the exit status."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=STOP_TIMEOUT)
        # Whatever the main process left behind (workers) goes too.
        self._kill_group(signal.SIGKILL)
        return self.process.returncode

    def kill9(self) -> None:
        self._kill_group(signal.SIGKILL)

    def restart(self, timeout: float = START_TIMEOUT) -> None:
        self.stop()
        self.start(timeout)


def _clean_env(extra: Mapping[str, str], scratch: Path) -> dict[str, str]:
    # The operator's own REGD_* settings and config files must not leak into a test server.
    env = {k: v for k, v in os.environ.items() if not k.startswith("REGD_")}
    env["XDG_CONFIG_HOME"] = str(scratch / "xdg-config")
    env["XDG_DATA_HOME"] = str(scratch / "xdg-data")
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


class RegdServer(ServerProcess):
    kind = "regd"

    def __init__(
        self,
        *,
        data_dir: Path,
        database_url: str | None,
        scratch: Path,
        port: int | None = None,
        # One process unless a test asks for more: regd's own default is one worker per
        # CPU, and the suite starts hundreds of servers on a machine it shares. None
        # passes no --workers, to get that default.
        workers: int | None = 1,
        log_level: str = "warning",
        extra_args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        tls_verify: ssl.SSLContext | None = None,
    ) -> None:
        port = port or free_port()
        argv = [
            sys.executable,
            "-m",
            "regd",
            "serve",
            "--addr",
            f"127.0.0.1:{port}",
            "--data-dir",
            str(data_dir),
            "--log-level",
            log_level,
        ]
        if database_url is not None:
            argv += ["--database", database_url]
        if workers is not None:
            argv += ["--workers", str(workers)]
        argv += list(extra_args)
        super().__init__(
            argv,
            port=port,
            log_dir=scratch / "logs",
            env=_clean_env({"REGD_ACCESS_LOG": "0", **(env or {})}, scratch),
        )
        self.data_dir = data_dir
        self.database_url = database_url
        if tls_verify is not None:
            self.url = f"https://{self.host}"
            self.verify = tls_verify


# What the `regd_factory` fixture hands out: call it with RegdServer's keyword arguments.
RegdFactory = Callable[..., RegdServer]


DISTRIBUTION_CONFIG = """\
version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: {root}
  delete:
    enabled: true
http:
  addr: 127.0.0.1:{port}
"""


def distribution_binary() -> str | None:
    return shutil.which("docker-registry") or shutil.which("registry")


class DistributionServer(ServerProcess):
    """The reference registry (CNCF Distribution 2.8, Debian's `docker-registry`)."""

    kind = "distribution"

    def __init__(
        self, *, root: Path, scratch: Path, port: int | None = None, extra_config: str = ""
    ) -> None:
        """`extra_config`: more top-level YAML, e.g. an `auth:` section."""
        binary = distribution_binary()
        if binary is None:
            raise ServerStartError("docker-registry is not installed; run scripts/setup")
        port = port or free_port()
        scratch.mkdir(parents=True, exist_ok=True)
        config = scratch / f"distribution-{port}.yml"
        config.write_text(DISTRIBUTION_CONFIG.format(root=root, port=port) + extra_config)
        env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
        env.pop("AWS_CA_BUNDLE", None)
        super().__init__([binary, "serve", str(config)], port=port, log_dir=scratch, env=env)
        self.root = root
        self.config = config
