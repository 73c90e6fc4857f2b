"""The chaos marker, so `-m "not chaos"` can leave the fault run out of a quick test pass."""

from __future__ import annotations


def pytest_configure(config):  # noqa: ANN001 - pytest hook
    config.addinivalue_line("markers", "chaos: the fault suite (network namespaces, minutes)")
