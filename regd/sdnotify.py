"""Telling a service manager (systemd's `Type=notify`) when regd serves and when it stops.

The protocol is one datagram of `KEY=VALUE` lines sent to the unix socket named by
$NOTIFY_SOCKET (a path, or an abstract address written with a leading `@`). Without that
variable nothing is sent: regd started by hand or by another supervisor is unaffected.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger("regd.server")

# A service manager reads its socket at once; a full queue must not hold up start-up
# or shutdown for longer than this.
SEND_TIMEOUT = 2.0


def _address(value: str) -> str | None:
    if value.startswith("@"):
        # The abstract namespace: the name starts with a NUL byte instead.
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    return None


def notify(state: str, env: Mapping[str, str] = os.environ) -> bool:
    """Send `state` (e.g. "READY=1") to $NOTIFY_SOCKET; whether it was delivered.

    A failure is logged as one line and otherwise ignored: the registry serves on."""
    raw = env.get("NOTIFY_SOCKET", "")
    if not raw:
        return False
    address = _address(raw)
    if address is None:
        log.warning("NOTIFY_SOCKET=%s is not a socket path or @name; not notifying", raw)
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.settimeout(SEND_TIMEOUT)
            sock.connect(address)
            sock.sendall(state.encode())
    except OSError as exc:
        log.warning("cannot notify the service manager at %s: %s", raw, exc.strerror or exc)
        return False
    return True


def ready(addr: str) -> bool:
    """Listening sockets are open and the database and storage were checked: connections
    are accepted from now on."""
    return notify(f"READY=1\nSTATUS=serving on {addr}")


def stopping() -> bool:
    return notify("STOPPING=1\nSTATUS=stopping")
