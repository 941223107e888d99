"""Sending a region of an open file into a non-blocking socket with sendfile(2), the part
that runs on a worker thread (regd.connections waits for room and holds the deadlines)."""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass

import trio

# sendfile calls one worker-thread hop makes before it hands back to the event loop: each
# moves what the socket's buffer has room for, so a hop ends sooner when the buffer fills.
SENDFILE_CALLS_PER_HOP = 16
# A sendfile failure with one of these means the client went away, not the file.
PEER_GONE = frozenset(
    {errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN, errno.ESHUTDOWN, errno.ETIMEDOUT}
)


@dataclass(slots=True)
class FileRegion:
    """Bytes of an open file still to send; h11 only needs their length."""

    fd: int
    offset: int
    count: int

    def __len__(self) -> int:
        return self.count


def sendfile_burst(out: int, region: FileRegion) -> bool:
    """sendfile into the non-blocking socket `out` until the region is sent, the socket's
    buffer is full (True: wait for room), or a hop's worth of calls is spent."""
    for _ in range(SENDFILE_CALLS_PER_HOP):
        if not region.count:
            return False
        try:
            sent = os.sendfile(out, region.fd, region.offset, region.count)
        except BlockingIOError:
            return True
        except OSError as exc:
            if exc.errno in PEER_GONE:
                raise trio.BrokenResourceError(str(exc)) from exc
            raise
        if sent == 0:
            # The file ends before the length promised: it was cut short underneath.
            raise OSError(errno.EIO, f"the file ended {region.count} bytes early")
        region.offset += sent
        region.count -= sent
    return False
