"""The broker's shortcut for the usual request (vsnetd/broker/protocol.py) against its
general parse: the same request, or the same error, for messages near the usual form."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vsnetd.broker import protocol
from vsnetd.broker.protocol import BrokerError, Request, parse_json_request, parse_request

SERVERS = [b"nas1", b"", b"a b", b"\xc3\xa9", b"\xed\xa0\x80", b"\xc0\x80", b"\xff", b"\x01",
           b"\x7f", b'a\\"b', b"\\u00e9", b"x" * 300]
TAILS = [b'"port":007', b'"port":-1', b'"port":1.0', b'"port":true', b'"port":"80"',
         b'"family":4', b'"family":6', b'"family":5', b'"family":"4"', b'"family":null',
         b'"family":4,"port":5', b'"port":5,"family":4', b'"port":80,"backlog":5']


def outcome(parse: object, data: bytes) -> object:
    try:
        return parse(data)  # type: ignore[operator]
    except BrokerError as exc:
        return exc.code, exc.message


@given(op=st.sampled_from([b"listen", b"socket", b"servers", b"listen "]),
       server=st.sampled_from(SERVERS) | st.binary(max_size=8),
       proto=st.sampled_from([b"tcp", b"udp", b"tc", b"TCP"]),
       tail=st.integers(-1, 100_000).map(lambda port: b'"port":%d' % port)
       | st.sampled_from(TAILS),
       change=st.none() | st.tuples(st.integers(0, 90), st.sampled_from(
           [b"", b" ", b'"', b"\\", b"}", b"{", b"x", b"\x00", b"0"])))
@settings(max_examples=3000, deadline=None)
def test_the_shortcut_agrees_with_the_general_parse(
        op: bytes, server: bytes, proto: bytes, tail: bytes,
        change: tuple[int, bytes] | None) -> None:
    data = b'{"v":1,"op":"%s","server":"%s","proto":"%s",%s}' % (op, server, proto, tail)
    if change is not None:
        at, piece = change
        data = data[:at] + piece + data[at + 1:]
    assert outcome(parse_request, data) == outcome(parse_json_request, data)


@pytest.mark.parametrize(("data", "expected"), [
    (b'{"v":1,"op":"listen","server":"nas1","proto":"tcp","port":2049}',
     Request("listen", "nas1", "tcp", 2049)),
    (b'{"v":1,"op":"listen","server":"\xc3\xa9","proto":"udp","port":65535}',
     Request("listen", "\xe9", "udp", 65535)),
    (b'{"v":1,"op":"socket","server":"nas1","proto":"tcp","family":6}',
     Request("socket", "nas1", "tcp", 0, None, 6)),
    (b'{"v":1,"op":"socket","server":"nas1","proto":"udp","port":5}',
     Request("socket", "nas1", "udp", 5)),
])
def test_the_usual_request_takes_the_shortcut(
        monkeypatch: pytest.MonkeyPatch, data: bytes, expected: Request) -> None:
    """What vsnetd.client sends for listen and socket is never parsed as JSON."""
    assert parse_json_request(data) == expected

    def general(_data: bytes) -> None:
        raise AssertionError("the general parse was used")

    monkeypatch.setattr(protocol, "parse_json_request", general)
    assert parse_request(data) == expected
