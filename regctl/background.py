"""Running a local regd in the background: pid file, log file and a state file.

Everything lives in regd's data directory, so two daemons with two data directories
never step on each other, and `regctl stop --data-dir X` finds the right one.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from regctl.runtime import STATE_FILE, CommandError, default_data_dir

PID_FILE = "regd.pid"
LOG_FILE = "regd.log"
# How many data directories `regctl start` remembers, newest first.
REMEMBERED = 16


@dataclass(frozen=True, slots=True)
class StartOptions:
    addr: str
    config: Path | None = None
    database: str | None = None
    workers: int | None = None
    log_level: str | None = None
    timeout: float = 30.0


@dataclass(frozen=True, slots=True)
class DaemonState:
    pid: int
    url: str
    addr: str
    started: float


def split_addr(addr: str) -> tuple[str, int]:
    host, sep, port = addr.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise CommandError(f"invalid address {addr!r}: expected HOST:PORT")
    return host.strip("[]") or "0.0.0.0", int(port)


def url_for(addr: str) -> str:
    host, port = split_addr(addr)
    # A wildcard listen address is reachable at loopback from this machine.
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


def regd_command() -> list[str]:
    """Prefer the `regd` script installed beside this interpreter; else `python -m regd`."""
    beside = Path(sys.executable).parent / "regd"
    if beside.is_file() and os.access(beside, os.X_OK):
        return [str(beside)]
    found = shutil.which("regd")
    if found:
        return [found]
    return [sys.executable, "-m", "regd"]


def _alive(pid: int) -> bool:
    # Reap it if it is our own child (tests start daemons in-process), so a zombie
    # does not pass for a running daemon.
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat.rsplit(")", 1)[-1].split()[0] == "Z":
            return False
    except (OSError, IndexError):
        pass
    return True


def _looks_like_regd(pid: int) -> bool:
    """Guards against a recycled pid: the process must be a regd."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True  # no /proc: trust the pid file
    return b"regd" in cmdline


class LocalDaemon:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir

    @property
    def pid_file(self) -> Path:
        return self.data_dir / PID_FILE

    @property
    def log_file(self) -> Path:
        return self.data_dir / LOG_FILE

    @property
    def state_file(self) -> Path:
        return self.data_dir / STATE_FILE

    def _read_pid(self) -> int | None:
        try:
            text = self.pid_file.read_text().strip()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise CommandError(f"cannot read {self.pid_file}: {exc.strerror}") from None
        return int(text) if text.isdigit() else -1

    def state(self) -> DaemonState | None:
        try:
            doc: Any = json.loads(self.state_file.read_text())
        except (OSError, json.JSONDecodeError):
            return None
        if not isinstance(doc, dict):
            return None
        try:
            return DaemonState(
                int(doc["pid"]), str(doc["url"]), str(doc["addr"]), float(doc["started"])
            )
        except (KeyError, TypeError, ValueError):
            return None

    def running(self) -> int | None:
        """The pid of the running daemon, or None; a stale pid file is not 'running'."""
        pid = self._read_pid()
        if pid is None or pid <= 0:
            return None
        if _alive(pid) and _looks_like_regd(pid):
            return pid
        return None

    def clean_stale(self) -> int | None:
        """Remove pid and state files left by a daemon that is gone; return its pid."""
        pid = self._read_pid()
        if pid is None or self.running() is not None:
            return None
        self._forget()
        return pid

    def _forget(self) -> None:
        self.pid_file.unlink(missing_ok=True)
        self.state_file.unlink(missing_ok=True)

    def start(self, options: StartOptions) -> DaemonState:
        host, port = split_addr(options.addr)
        _check_port_free(host, port, options.addr)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        command = [
            *regd_command(),
            "serve",
            "--addr",
            options.addr,
            "--data-dir",
            str(self.data_dir),
        ]
        if options.config is not None:
            command += ["--config", str(options.config)]
        if options.database:
            command += ["--database", options.database]
        if options.workers is not None:
            command += ["--workers", str(options.workers)]
        if options.log_level:
            command += ["--log-level", options.log_level]
        log_start = self.log_file.stat().st_size if self.log_file.exists() else 0
        with self.log_file.open("ab") as log:
            try:
                process = subprocess.Popen(
                    command,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    close_fds=True,
                )
            except OSError as exc:
                raise CommandError(f"cannot run {command[0]}: {exc.strerror}") from None
        url = url_for(options.addr)
        state = DaemonState(process.pid, url, options.addr, time.time())
        self.pid_file.write_text(f"{process.pid}\n")
        self.state_file.write_text(
            json.dumps(
                {
                    "pid": state.pid,
                    "url": state.url,
                    "addr": state.addr,
                    "started": state.started,
                    "command": command,
                },
                indent=2,
            )
            + "\n"
        )
        try:
            self._wait_until_serving(process, url, options.timeout, log_start)
        except BaseException:
            if process.poll() is None:
                _signal_group(process.pid, signal.SIGKILL)
                process.wait()
            self._forget()
            raise
        return state

    def _wait_until_serving(
        self, process: subprocess.Popen[bytes], url: str, timeout: float, log_start: int
    ) -> None:
        deadline = time.monotonic() + timeout
        while True:
            code = process.poll()
            if code is not None:
                raise CommandError(
                    f"regd exited with status {code} while starting" + self._log_excerpt(log_start)
                )
            try:
                httpx.get(url + "/v2/", timeout=1.0)
                return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise CommandError(
                    f"regd did not answer at {url}/v2/ within {timeout:g}s"
                    + self._log_excerpt(log_start)
                )
            time.sleep(0.1)

    def _log_excerpt(self, start: int) -> str:
        try:
            with self.log_file.open("rb") as log:
                log.seek(start)
                lines = log.read().decode(errors="replace").strip().splitlines()
        except OSError:
            return ""
        last = next((line.strip() for line in reversed(lines) if line.strip()), "")
        return f": {last} (log: {self.log_file})" if last else f" (log: {self.log_file})"

    def stop(self, timeout: float) -> tuple[int, bool] | None:
        """SIGTERM, wait, then SIGKILL. Returns (pid, killed) or None if nothing ran."""
        pid = self.running()
        if pid is None:
            self.clean_stale()
            return None
        _signal_group(pid, signal.SIGTERM)
        killed = False
        if not _wait_gone(pid, timeout):
            _signal_group(pid, signal.SIGKILL)
            killed = True
            if not _wait_gone(pid, 10.0):
                raise CommandError(f"regd (pid {pid}) survived SIGKILL")
        self._forget()
        return pid, killed

    def stored_bytes(self) -> int:
        """Bytes under the data directory, not counting regctl's own bookkeeping files."""
        own = {self.pid_file, self.log_file, self.state_file}
        total = 0
        for path in _walk_files(self.data_dir):
            if path not in own:
                with contextlib.suppress(OSError):
                    total += path.lstat().st_size
        return total


def _walk_files(root: Path) -> Iterator[Path]:
    for directory, _dirs, files in os.walk(root):
        for name in files:
            yield Path(directory) / name


def _signal_group(pid: int, sig: signal.Signals) -> None:
    # regd runs in its own session; its group holds any worker processes it forked.
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while _alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _check_port_free(host: str, port: int, addr: str) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise CommandError(
                    f"cannot start regd: {addr} is already in use by another process"
                ) from None
            if exc.errno == errno.EADDRNOTAVAIL:
                raise CommandError(
                    f"cannot start regd: {host} is not an address of this machine"
                ) from None
            raise CommandError(f"cannot start regd on {addr}: {exc.strerror}") from None


def follow(path: Path, *, tail: int | None, forever: bool) -> None:
    """Print the log (its last `tail` lines), then keep printing what is appended."""
    try:
        handle = path.open("rb")
    except FileNotFoundError:
        raise CommandError(f"no log file at {path}: has regd been started here?") from None
    with handle:
        data = handle.read()
        if tail is not None:
            lines = data.splitlines(keepends=True)
            data = b"".join(lines[-tail:]) if tail > 0 else b""
        out = sys.stdout.buffer
        out.write(data)
        out.flush()
        while forever:
            chunk = handle.read()
            if chunk:
                out.write(chunk)
                out.flush()
            else:
                time.sleep(0.25)


# -- finding the local regd ----------------------------------------------------------------
#
# `regctl start --data-dir X` records X outside X too, so later commands find that regd
# without being told where its data lives.


def _started_file() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "regctl" / "started.json"


def _started_dirs() -> list[Path]:
    try:
        doc: Any = json.loads(_started_file().read_text())
    except (OSError, json.JSONDecodeError):
        return []
    entries = doc.get("dataDirs") if isinstance(doc, dict) else None
    if not isinstance(entries, list):
        return []
    return [Path(e) for e in entries if isinstance(e, str) and e]


def remember_started(data_dir: Path) -> None:
    """Put `data_dir` first among the data directories host-less commands look in."""
    path = _started_file()
    mine = data_dir.resolve()
    dirs = [mine, *(d for d in _started_dirs() if d != mine)][:REMEMBERED]
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        scratch = path.with_name(f".{path.name}.{os.getpid()}")
        scratch.write_text(json.dumps({"dataDirs": [str(d) for d in dirs]}, indent=2) + "\n")
        scratch.replace(path)
    except OSError:
        # Only a convenience: $REGD_DATA_DIR or --data-dir still find this daemon.
        pass


def candidate_data_dirs() -> list[Path]:
    """$REGD_DATA_DIR, the directories `regctl start` used (newest first), the default."""
    out: list[Path] = []
    env = os.environ.get("REGD_DATA_DIR")
    for d in [Path(env)] if env else []:
        out.append(d)
    out += _started_dirs()
    out.append(Path.home() / ".local" / "share" / "regd")
    seen: set[Path] = set()
    unique = []
    for d in out:
        key = d.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(d)
    return unique


def running_local() -> tuple[LocalDaemon, DaemonState] | None:
    """The first regd started by regctl that still runs, in candidate_data_dirs() order."""
    for directory in candidate_data_dirs():
        daemon = LocalDaemon(directory)
        if daemon.running() is not None:
            state = daemon.state()
            if state is not None:
                return daemon, state
    return None


def local_daemon() -> LocalDaemon:
    """The daemon start/stop/status/logs act on when not given --data-dir."""
    found = running_local()
    return found[0] if found is not None else LocalDaemon(default_data_dir())


def probe(url: str, timeout: float = 2.0) -> bool:
    """Whether a registry answers /v2/ at `url` (any HTTP answer counts: 401 too)."""
    try:
        httpx.get(url.rstrip("/") + "/v2/", timeout=timeout)
    except httpx.HTTPError:
        return False
    return True
