"""Hop-by-hop headers and request framing checks (proxy/http/hop.py)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mesh.proxy.http.hop import (
    BadRequest,
    Framing,
    check_framing,
    hop_by_hop_names,
    strip_hop_by_hop,
)


def test_standard_hop_by_hop_headers_are_dropped():
    headers = [("Host", "api"), ("Connection", "keep-alive"), ("Keep-Alive", "timeout=5"),
               ("Proxy-Connection", "x"), ("TE", "trailers"), ("Trailer", "x-sum"), ("Upgrade", "websocket"),
               ("Accept", "*/*"), ("Transfer-Encoding", "chunked")]
    assert strip_hop_by_hop(headers) == [("Host", "api"), ("Accept", "*/*"), ("Transfer-Encoding", "chunked")]


def test_names_listed_in_connection_are_dropped():
    headers = [("Connection", "close, X-Internal ,x-other"), ("x-internal", "1"), ("X-Other", "2"), ("x-kept", "3")]
    assert strip_hop_by_hop(headers) == [("x-kept", "3")]


def test_framing_and_host_survive_being_listed_in_connection():
    headers = [("Connection", "Content-Length, Host, Transfer-Encoding"), ("Content-Length", "3"), ("Host", "a")]
    assert strip_hop_by_hop(headers) == [("Content-Length", "3"), ("Host", "a")]
    assert "content-length" not in hop_by_hop_names(headers)


def test_upgrade_passthrough_keeps_upgrade():
    headers = [("Connection", "Upgrade"), ("Upgrade", "websocket"), ("Sec-WebSocket-Key", "k")]
    assert strip_hop_by_hop(headers, upgrade=True) == [
        ("Upgrade", "websocket"), ("Sec-WebSocket-Key", "k"), ("Connection", "upgrade")]


@pytest.mark.parametrize(
    "headers, version, framing",
    [
        ([], "1.1", Framing(None, False)),
        ([("Content-Length", "12")], "1.1", Framing(12, False)),
        ([("Content-Length", "0")], "1.0", Framing(0, False)),
        ([("Content-Length", "5"), ("content-length", "5")], "1.1", Framing(5, False)),
        ([("Content-Length", "5, 5")], "1.1", Framing(5, False)),
        ([("Transfer-Encoding", "chunked")], "1.1", Framing(None, True)),
        ([("Transfer-Encoding", "gzip, Chunked")], "1.1", Framing(None, True)),
        ([("Transfer-Encoding", "gzip"), ("Transfer-Encoding", "chunked")], "1.1", Framing(None, True)),
    ],
)
def test_good_framing(headers, version, framing):
    assert check_framing(headers, version) == framing


@pytest.mark.parametrize(
    "headers, version, reason",
    [
        ([("Content-Length", "5"), ("Transfer-Encoding", "chunked")], "1.1", "both Content-Length and Transfer-Encoding"),
        ([("Content-Length", "5"), ("Content-Length", "6")], "1.1", "differing Content-Length values"),
        ([("Content-Length", "5, 6")], "1.1", "differing Content-Length values"),
        ([("Content-Length", "-1")], "1.1", "invalid Content-Length"),
        ([("Content-Length", "+5")], "1.1", "invalid Content-Length"),
        ([("Content-Length", "0x10")], "1.1", "invalid Content-Length"),
        ([("Content-Length", "")], "1.1", "invalid Content-Length"),
        ([("Content-Length", "\u0665")], "1.1", "invalid Content-Length"),  # a non-ASCII digit
        ([("Content-Length", "9" * 20)], "1.1", "invalid Content-Length"),
        ([("Transfer-Encoding", "chunked, gzip")], "1.1", "Transfer-Encoding does not end with chunked"),
        ([("Transfer-Encoding", "gzip")], "1.1", "Transfer-Encoding does not end with chunked"),
        ([("Transfer-Encoding", "chunked, chunked")], "1.1", "chunked applied more than once"),
        ([("Transfer-Encoding", "xchunked")], "1.1", "unknown transfer coding"),
        ([("Transfer-Encoding", "chunked ,")], "1.1", "unknown transfer coding"),
        ([("Transfer-Encoding", "identity")], "1.1", "unknown transfer coding"),
        ([("Transfer-Encoding", "chunked")], "1.0", "Transfer-Encoding in an HTTP/1.0 request"),
    ],
)
def test_ambiguous_framing_is_refused(headers, version, reason):
    with pytest.raises(BadRequest) as info:
        check_framing(headers, version)
    assert info.value.reason == reason


names = st.sampled_from(["Connection", "Keep-Alive", "Host", "X-A", "x-b", "TE", "Upgrade", "Content-Length"])


@given(st.lists(st.tuples(names, st.sampled_from(["x-a", "X-B, host", "close", "1"])), max_size=8))
def test_stripped_headers_have_no_hop_by_hop_name_and_keep_the_rest_in_order(headers):
    out = strip_hop_by_hop(headers)
    dropped = hop_by_hop_names(headers)
    assert all(name.lower() not in dropped for name, _ in out)
    assert out == [pair for pair in headers if pair[0].lower() not in dropped]
    assert [p for p in headers if p[0].lower() in ("host", "content-length")] == \
        [p for p in out if p[0].lower() in ("host", "content-length")]
