"""The process id metric values are filed under: remembered, and renewed after a fork, so
that a forked child never writes into its parent's files."""

from __future__ import annotations

import os

from regd.observability import metrics


def test_a_forked_child_gets_its_own_process_id() -> None:
    assert metrics._process_id() == os.getpid()
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover (the child reports through the pipe)
        try:
            os.write(write, str(metrics._process_id()).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        reported = pipe.read()
    os.waitpid(child, 0)
    assert int(reported) == child
    assert metrics._process_id() == os.getpid()
