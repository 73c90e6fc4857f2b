"""Request-target normalization (proxy/http/normalize.py): one spelling per path."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mesh.proxy.http.normalize import MAX_TARGET, BadRequestTarget, normalize_path, split_target

UNRESERVED = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~"


@pytest.mark.parametrize(
    "raw, path",
    [
        ("/", "/"),
        ("/api/v1/users", "/api/v1/users"),
        ("/admin", "/admin"),
        ("/x/../admin", "/admin"),
        ("//admin", "/admin"),
        ("/%61dmin", "/admin"),
        ("/./admin", "/admin"),
        ("/%2e%2e/admin", "/admin"),
        ("/x/%2E%2E/admin", "/admin"),
        ("/x/.%2e/admin", "/admin"),
        ("/a/b/../../../../admin", "/admin"),
        ("/..", "/"),
        ("/.", "/"),
        ("/admin/", "/admin/"),
        ("/admin/.", "/admin/"),
        ("/admin/x/..", "/admin/"),
        ("/admin//", "/admin/"),
        ("/a///b////c", "/a/b/c"),
        ("/...", "/..."),
        ("/.hidden/x", "/.hidden/x"),
        ("/a%2fb", "/a%2Fb"),
        ("/a%2Fb", "/a%2Fb"),
        ("/a%5cb", "/a%5Cb"),
        ("/x%2F..%2Fadmin", "/x%2F..%2Fadmin"),  # one segment: an encoded slash is data
        ("/%2561", "/%2561"),  # decoded once only
        ("/a%20b", "/a%20b"),
        ("/a%7eb", "/a~b"),
        ("/x\\..\\admin", "/admin"),
        ("/caf\xe9", "/caf%C3%A9"),
        ("/a{b}|c", "/a%7Bb%7D%7Cc"),
        ("/admin?x=1", "/admin"),
        ("/admin?", "/admin"),
        ("/x/../admin?a=/../b", "/admin"),
        ("http://api.internal/admin", "/admin"),
        ("HTTPS://api:8443//x/../admin?q", "/admin"),
        ("http://api.internal", "/"),
        ("http://api.internal?x", "/"),
        ("*", "*"),
    ],
)
def test_normalized_paths(raw, path):
    assert normalize_path(raw) == path
    assert normalize_path(raw.encode("utf-8")) == path


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "admin",
        "ftp://x/admin",
        "/a%zzb",
        "/a%4",
        "/a%",
        "/a\x00b",
        "/a\x01b",
        "/a\x7fb",
        "/a b",
        "/a\tb",
        "/a#frag",
        "/a?b\nc",
        "/" + "a" * MAX_TARGET,
    ],
)
def test_refused_targets(raw):
    with pytest.raises(BadRequestTarget) as info:
        normalize_path(raw)
    assert info.value.reason


def test_query_is_split_off_raw():
    assert split_target(b"/x/../a?b=%2F&c") == ("/a", "b=%2F&c")
    assert split_target("/a?b?c") == ("/a", "b?c")


def test_asterisk_only_for_options():
    assert normalize_path("*", method="OPTIONS") == "*"
    with pytest.raises(BadRequestTarget, match="OPTIONS"):
        normalize_path("*", method="GET")


def test_clean_paths_come_back_as_the_same_object():
    raw = "/api/v1/users"
    assert split_target(raw)[0] is raw


segment = st.one_of(
    st.sampled_from(["", ".", "..", "%2e", "%2E%2e", "admin", "a", "%61", "%2F", "%5c", "\\", "~x", "%7E"]),
    st.text(alphabet=UNRESERVED + "!$&'()*+,;=:@%\\\"<>{}^|`\xe9", max_size=6),
)
paths = st.lists(segment, max_size=8).map(lambda parts: "/" + "/".join(parts))


def _valid(path: str) -> str | None:
    try:
        return normalize_path(path)
    except BadRequestTarget:
        return None


@settings(max_examples=400)
@given(paths)
def test_idempotent_and_canonical(path):
    out = _valid(path)
    if out is None:
        return
    assert out.startswith("/")
    assert normalize_path(out) == out
    for bad in ("//", "/./", "/../"):
        assert bad not in out
    assert not out.endswith(("/.", "/.."))
    segments = out.split("/")
    assert ".." not in segments and "." not in segments
    # no escape of an unreserved character, hex upper-case
    i = out.find("%")
    while i != -1:
        pair = out[i + 1:i + 3]
        assert pair == pair.upper() and chr(int(pair, 16)) not in UNRESERVED
        i = out.find("%", i + 1)


@given(paths, st.data())
def test_decoding_unreserved_characters_commutes(path, data):
    """Encoding any unreserved character of a path does not change its normal form."""
    out = _valid(path)
    if out is None:
        return
    tokens = re.findall(r"%..|.", path, re.S)  # an escape's own digits are not characters to encode
    flags = data.draw(st.lists(st.booleans(), min_size=len(tokens), max_size=len(tokens)))
    encoded = "".join(
        f"%{ord(tok):02x}" if flag and tok in UNRESERVED else tok for tok, flag in zip(tokens, flags, strict=True)
    )
    assert normalize_path(encoded) == out


@given(st.lists(st.sampled_from(["..", ".", "", "%2e%2e", "x", "\\.."]), max_size=10), st.sampled_from(["admin", "api/v1"]))
def test_traversal_never_escapes_the_root(prefix, rest):
    """Whatever dot segments come first, the result is the path under the root."""
    out = normalize_path("/" + "/".join(prefix) + "/" + rest)
    kept = [p for p in prefix if p in ("x",)]
    assert out.endswith("/" + rest)
    assert out.startswith("/")
    assert len(out.split("/")) - 1 <= len(kept) + rest.count("/") + 1


@pytest.mark.parametrize(
    "spelling", ["/admin", "/x/../admin", "//admin", "/%61dmin", "/./admin", "/%2E/admin", "/a/b/../../admin", "/x\\..\\admin"]
)
def test_every_spelling_of_admin_is_admin(spelling):
    assert normalize_path(spelling) == "/admin"
