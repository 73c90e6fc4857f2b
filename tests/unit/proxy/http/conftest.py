"""Helpers for the pure HTTP decision tests: a request view built from plain values."""

from __future__ import annotations

import pytest

from mesh.proxy.http.normalize import split_target
from mesh.proxy.http.request_view import RequestView, lazy_headers


def make_view(target: str = "/", method: str = "GET", headers: list[tuple[str, str]] | None = None) -> RequestView:
    path, query = split_target(target)
    return RequestView(method, path, query, lazy_headers(headers or []))


@pytest.fixture
def view():
    return make_view
