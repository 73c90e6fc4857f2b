from __future__ import annotations

import pytest

from tests.harness.cluster import Cluster


@pytest.fixture
def cluster(tmp_path, request):
    c = Cluster(tmp_path, 3)
    try:
        c.start()
        yield c
    finally:
        failed = getattr(request.node, "rep_call", None)
        if failed is not None and failed.failed:
            print(c.logs())
        c.stop()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)
