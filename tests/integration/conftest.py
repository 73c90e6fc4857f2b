from __future__ import annotations

import time

import pytest

from tests.harness.cluster import Agent, free_port, retry


@pytest.fixture(scope="package")
def dev(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dev")
    agent = Agent("dev", str(tmp), free_port(), free_port(), free_port(), [], str(tmp / "dev.log"))
    agent.args = ["-dev", "-node", "devnode", "-http-port", str(agent.http_port),
                  "-server-port", str(agent.server_port), "-raft-port", str(agent.raft_port), "-dns-port", "-1"]
    started = time.monotonic()
    agent.start()
    try:
        retry(lambda: agent.leader(), 10, 0.02, "dev agent leader")
        agent.ready_seconds = time.monotonic() - started
        retry(lambda: agent.get("/v1/catalog/service/consul"), 5)
        yield agent
    finally:
        agent.kill()


