"""regd's faster h11 body extraction (regd.mirror.upstream) hands out the same bytes as
h11's own, whether a read holds the whole remainder, less, or more than a body needs, and
hands a body read on without copying it."""

from __future__ import annotations

import h11

import regd.mirror.upstream  # noqa: F401  (installs the faster extraction)


def _body(pieces: list[bytes]) -> tuple[bytes, bytes]:
    """(body, what follows it) as h11 parses a response delivered in `pieces`."""
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method="GET", target="/", headers=[("Host", "x")]))
    conn.send(h11.EndOfMessage())
    body = bytearray()
    for piece in pieces:
        conn.receive_data(piece)
        while True:
            event = conn.next_event()
            if isinstance(event, h11.Data):
                body += event.data
            elif event in (h11.NEED_DATA, h11.PAUSED) or isinstance(event, h11.EndOfMessage):
                break
    return bytes(body), bytes(conn.trailing_data[0])


def test_bodies_and_what_follows_them_are_intact() -> None:
    head = b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n"
    assert _body([head + b"0123456789"]) == (b"0123456789", b"")
    assert _body([head, b"0123", b"456789"]) == (b"0123456789", b"")
    # More than the body in one read: the rest stays for the next response.
    assert _body([head + b"0123456789HTTP/1.1 204"]) == (b"0123456789", b"HTTP/1.1 204")


def test_heads_split_across_reads_and_chunked_bodies() -> None:
    head = b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n"
    assert _body([head[:7], head[7:30], head[30:] + b"01", b"23456789"]) == (b"0123456789", b"")
    chunked = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
    body = b"4\r\n0123\r\n6\r\n456789\r\n0\r\n\r\n"
    assert _body([chunked + body]) == (b"0123456789", b"")
    assert _body([chunked, body[:5], body[5:9], body[9:]]) == (b"0123456789", b"")


def test_a_body_read_is_handed_on_as_it_came() -> None:
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method="GET", target="/", headers=[("Host", "x")]))
    conn.send(h11.EndOfMessage())
    conn.receive_data(b"HTTP/1.1 200 OK\r\ncontent-length: 2000000\r\n\r\n")
    assert isinstance(conn.next_event(), h11.Response)
    assert conn.next_event() is h11.NEED_DATA
    read = b"x" * 1_000_000
    conn.receive_data(read)
    event = conn.next_event()
    assert isinstance(event, h11.Data)
    assert event.data is read
    # httpcore passes it through bytes(), which keeps bytes as they are.
    assert bytes(event.data) is read
