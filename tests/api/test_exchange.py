"""Request ids made by regd: unique within a process and across processes, without a
read of the system's randomness per request."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid

import pytest

from regd.api.exchange import REQUEST_ID_HEADER, request_id_from

NEW_ID = re.compile(r"[0-9a-f]{32}")


def test_new_ids_look_as_before_and_never_repeat() -> None:
    ids = [request_id_from([]) for _ in range(10_000)]
    assert all(NEW_ID.fullmatch(i) for i in ids)
    assert len(set(ids)) == len(ids)


def test_a_good_incoming_id_is_kept_and_a_bad_one_replaced() -> None:
    assert request_id_from([(REQUEST_ID_HEADER, b"lb-7f3a:edge/1")]) == "lb-7f3a:edge/1"
    assert NEW_ID.fullmatch(request_id_from([(REQUEST_ID_HEADER, b"has space")]))


def test_a_new_id_reads_no_randomness(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_randomness(*args: object) -> bytes:
        raise AssertionError("a request id read the system's randomness")

    monkeypatch.setattr(os, "urandom", no_randomness)
    monkeypatch.setattr(uuid, "uuid4", no_randomness)
    assert NEW_ID.fullmatch(request_id_from([]))


def _id_in_new_process() -> str:
    code = "from regd.api.exchange import request_id_from; print(request_id_from([]))"
    return subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True
    ).stdout.strip()


def test_processes_make_different_ids() -> None:
    # Each worker and each restart counts from zero: only the random part tells them apart.
    ids = {_id_in_new_process() for _ in range(3)} | {request_id_from([])}
    assert len(ids) == 4


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork here")
def test_a_forked_child_makes_ids_of_its_own() -> None:
    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        try:
            os.write(writer, request_id_from([]).encode())
        finally:
            os._exit(0)
    os.close(writer)
    try:
        child = os.read(reader, 64).decode()
    finally:
        os.close(reader)
        os.waitpid(pid, 0)
    parent = request_id_from([])
    assert NEW_ID.fullmatch(child)
    assert child[:20] != parent[:20]
