from __future__ import annotations

import pytest

from tests.harness.cluster import dev_agent, retry


@pytest.fixture(scope="package")
def dev(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dev")
    agent = dev_agent(tmp)
    try:
        retry(lambda: agent.get("/v1/catalog/service/consul"), 5)
        yield agent
    finally:
        agent.kill()


