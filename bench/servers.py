"""Starting the two registries on temporary storage and free ports, and watching their processes."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench import auth
from bench.httpc import Connection

HOST = "127.0.0.1"
CLK_TCK = os.sysconf("SC_CLK_TCK")
REPO_ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                stat = fh.read()
        except OSError:
            continue
        # The command name may hold spaces and parentheses: fields start after the last ')'.
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    return children


def process_tree(root: int) -> list[int]:
    """`root` and all its descendants that are alive now."""
    children = _children_map()
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


def cpu_seconds(pid: int) -> float:
    """User + system time of one process, including its reaped children."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            stat = fh.read()
    except OSError:
        return 0.0
    fields = stat[stat.rindex(")") + 2 :].split()
    # utime, stime, cutime, cstime are fields 14..17 of stat(5); index 11..14 here.
    return sum(int(v) for v in fields[11:15]) / CLK_TCK


def status_kib(pid: int, key: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


@dataclass
class Server:
    """A running registry process and where to reach it."""

    name: str
    port: int
    proc: subprocess.Popen[bytes]
    workdir: Path
    description: str
    log_path: Path
    notes: dict[str, str] = field(default_factory=dict)
    credentials: auth.Credentials = auth.NO_AUTH

    @property
    def host(self) -> str:
        return HOST

    def connect(self, timeout: float = 120.0) -> Connection:
        if self.credentials.mode == "none":
            return Connection(HOST, self.port, timeout)
        return Connection(HOST, self.port, timeout, auth.TokenCache(self.credentials).headers_for)

    def cpu(self) -> float:
        """CPU seconds of the server and every process under it so far."""
        return sum(cpu_seconds(pid) for pid in process_tree(self.proc.pid))

    def memory(self) -> dict[str, float]:
        """Peak resident memory (VmHWM) of each process of the tree, in MiB."""
        tree = process_tree(self.proc.pid)
        peaks = {pid: status_kib(pid, "VmHWM") / 1024 for pid in tree}
        # With several workers the parent only supervises; the workers do the serving.
        workers = [v for pid, v in peaks.items() if pid != self.proc.pid] or list(peaks.values())
        return {
            "processes": len(tree),
            "peak_rss_max_process_mib": round(max(peaks.values()), 1),
            "peak_rss_max_worker_mib": round(max(workers), 1),
            "peak_rss_sum_mib": round(sum(peaks.values()), 1),
            "rss_now_sum_mib": round(sum(status_kib(p, "VmRSS") for p in tree) / 1024, 1),
        }

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited early; see {self.log_path}")
            try:
                with self.connect(timeout=2) as conn:
                    if conn.request("GET", "/v2/").status == 200:
                        self._check_auth_enforced()
                        return
            except (OSError, auth.AuthError):
                pass
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} did not answer /v2/ within {timeout} s")

    def _check_auth_enforced(self) -> None:
        """With authentication asked for, a request without credentials must be refused:
        otherwise the numbers would be those of an open registry."""
        if self.credentials.mode == "none":
            return
        with Connection(HOST, self.port, timeout=10) as conn:
            status = conn.request("GET", "/v2/").status
        if status != 401:
            raise RuntimeError(
                f"{self.name} answered {status} to a request without credentials; "
                f"--auth {self.credentials.mode} is not in force (see {self.log_path})"
            )

    def stop(self, keep: bool = False) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if not keep:
            shutil.rmtree(self.workdir, ignore_errors=True)


def _ready_or_stopped(server: Server) -> None:
    """Wait until `server` answers; a server that never does is not left running."""
    try:
        server.wait_ready()
    except BaseException:
        server.stop(keep=True)
        raise


def _spawn(
    cmd: list[str], workdir: Path, env: dict[str, str] | None = None
) -> tuple[subprocess.Popen[bytes], Path]:
    log_path = workdir / "server.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, cwd=workdir, env=env, start_new_session=True
        )
    return proc, log_path


def regd_command(port: int, data_dir: Path, workers: int | None, database: str | None) -> list[str]:
    """`regd serve` as the benchmark runs it: quiet, no access log; at regd's own number of
    workers unless `workers` names one."""
    cmd = [
        sys.executable, "-m", "regd", "serve",
        "--addr", f"{HOST}:{port}",
        "--data-dir", str(data_dir),
        "--log-level", "warning",
        "--no-access-log",
    ]  # fmt: skip
    if workers is not None:
        cmd += ["--workers", str(workers)]
    if database:
        cmd += ["--database", database]
    return cmd


def serving_processes(root: int) -> int:
    """How many processes of regd serve: its workers, or the main process alone. Workers
    are the children multiprocessing spawned (through spawn_main); its resource tracker, a
    child too, serves nothing."""
    workers = 0
    for pid in process_tree(root)[1:]:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                argv = fh.read().split(b"\0")
        except OSError:
            continue
        workers += any(b"spawn_main" in arg for arg in argv)
    return workers or 1


def regd_description(
    server: Server, workers: int | None, database: str | None, storage: str
) -> str:
    """regd's settings as the run found them: the workers it actually started (its default
    is derived from the CPUs), the metadata database, the blob storage."""
    count = serving_processes(server.proc.pid)
    how = f"--workers {workers}" if workers is not None else "default"
    if not database:
        db = "SQLite"
    elif database.startswith("postgres"):
        db = "PostgreSQL"
    else:
        db = database.split(":", 1)[0]
    return f"regd ({count} workers, {how}; {db}; {storage})"


def reference_description(binary: str, storage: str) -> str:
    """Distribution's version and its parallelism: Go runs on every core unless GOMAXPROCS
    says otherwise."""
    cores = len(os.sched_getaffinity(0))
    procs = os.environ.get("GOMAXPROCS") or f"{cores} (default: all cores)"
    return f"{reference_version(binary)} (GOMAXPROCS {procs}; {storage})"


def start_regd(
    workers: int | None,
    database: str | None = None,
    tmp_root: str | None = None,
    data_dir: Path | None = None,
    auth_mode: str = "none",
) -> Server:
    """Start regd on a free port; on a fresh data dir unless `data_dir` names one.

    With `auth_mode` basic or token, regd reads an htpasswd file holding the benchmark's
    account (every account may do everything when no `[[access]]` rule is given)."""
    workdir = Path(tempfile.mkdtemp(prefix="bench-regd-", dir=tmp_root))
    port = free_port()
    cmd = regd_command(port, data_dir or workdir / "data", workers, database)
    credentials = auth.NO_AUTH
    notes: dict[str, str] = {}
    if auth_mode != "none":
        htpasswd = workdir / "htpasswd"
        auth.write_htpasswd(htpasswd)
        config = workdir / "regd.toml"
        config.write_text(f'[auth]\nhtpasswd = "{htpasswd}"\n')
        cmd += ["--config", str(config)]
        credentials = auth.Credentials(auth_mode, token_host=HOST, token_port=port)
        notes["htpasswd"] = str(htpasswd)
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    proc, log_path = _spawn(cmd, workdir, env)
    server = Server("regd", port, proc, workdir, "regd", log_path, notes, credentials)
    _ready_or_stopped(server)
    server.description = regd_description(server, workers, database, "filesystem")
    return server


REFERENCE_CONFIG = """\
version: 0.1
storage:
  filesystem:
    rootdirectory: {root}
  delete:
    enabled: true
http:
  addr: {host}:{port}
log:
  level: warn
  accesslog:
    disabled: true
"""


def reference_version(binary: str) -> str:
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10)
    except OSError:
        return "unknown"
    return (out.stdout or out.stderr).strip()


REFERENCE_BASIC_AUTH = """\
auth:
  htpasswd:
    realm: bench
    path: {path}
"""

REFERENCE_TOKEN_AUTH = """\
auth:
  token:
    realm: http://{host}:{port}/auth/token
    service: {service}
    issuer: {issuer}
    rootcertbundle: {bundle}
"""


def _reference_auth(workdir: Path, regd: Server) -> str:
    """Distribution's `auth:` section for regd's mode: the same htpasswd file (basic) or
    trust in regd's token service (token)."""
    mode = regd.credentials.mode
    if mode == "basic":
        htpasswd = workdir / "htpasswd"
        shutil.copyfile(regd.notes["htpasswd"], htpasswd)
        return REFERENCE_BASIC_AUTH.format(path=htpasswd)
    with Connection(HOST, regd.port, timeout=30) as conn:
        certs = conn.request("GET", "/auth/certs.pem")
    if certs.status != 200:
        raise RuntimeError(f"regd's /auth/certs.pem answered {certs.status}")
    bundle = workdir / "regd-certs.pem"
    bundle.write_bytes(certs.body)
    return REFERENCE_TOKEN_AUTH.format(
        host=HOST, port=regd.port, service=auth.SERVICE, issuer=auth.ISSUER, bundle=bundle
    )


def start_reference(
    binary: str = "docker-registry", tmp_root: str | None = None, regd: Server | None = None
) -> Server:
    """Distribution on a free port; with the authentication of `regd` when it has some."""
    workdir = Path(tempfile.mkdtemp(prefix="bench-ref-", dir=tmp_root))
    port = free_port()
    config = workdir / "config.yml"
    root = workdir / "root"
    root.mkdir()
    text = REFERENCE_CONFIG.format(root=root, host=HOST, port=port)
    credentials = auth.NO_AUTH
    if regd is not None and regd.credentials.mode != "none":
        text += _reference_auth(workdir, regd)
        credentials = regd.credentials
    config.write_text(text)
    proc, log_path = _spawn([binary, "serve", str(config)], workdir)
    server = Server(
        "reference",
        port,
        proc,
        workdir,
        reference_description(binary, "filesystem"),
        log_path,
        {},
        credentials,
    )
    _ready_or_stopped(server)
    return server
