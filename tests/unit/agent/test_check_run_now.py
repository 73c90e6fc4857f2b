"""CheckManager.run_now: a service's checks probed at once, outside their intervals
(what a sidecar proxy's ready call asks for)."""

from __future__ import annotations

import asyncio
import socket
from types import SimpleNamespace

from mesh.agent.config import AgentConfig
from mesh.agent.local.checks import CheckManager
from mesh.agent.local.definitions import parse_check
from mesh.agent.local.state import LocalState
from mesh.catalog.structs import Node, Service


async def _until(pred, timeout: float = 3.0) -> None:
    async with asyncio.timeout(timeout):
        while True:
            if pred():
                return
            await asyncio.sleep(0.01)


async def test_run_now_probes_the_services_checks_once_each():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    addr = f"127.0.0.1:{listener.getsockname()[1]}"
    local = LocalState(Node(node="n1", address="127.0.0.1"), None)
    agent = SimpleNamespace(local=local, cfg=AgentConfig())
    manager = CheckManager(agent)
    hour = "1h"  # far past the test: only run_now can make these pass
    local.add_service(Service(id="p", service="p"), [
        parse_check({"CheckID": "p-tcp", "Name": "l", "ServiceID": "p", "TCP": addr, "Interval": hour}, what="c"),
        parse_check({"CheckID": "p-ttl", "Name": "t", "ServiceID": "p", "TTL": hour}, what="c"),
    ], "api")
    local.add_service(Service(id="q", service="q"), [
        parse_check({"CheckID": "q-tcp", "Name": "l", "ServiceID": "q", "TCP": addr, "Interval": hour}, what="c"),
    ], "api")
    try:
        manager.sync()
        assert manager.run_now("p") == ["p-tcp"]  # the TTL check has nothing to probe
        assert manager.run_now("p") == []  # one probe in flight per check, however often it is asked
        await _until(lambda: local.checks["p-tcp"].status == "passing")
        assert local.checks["q-tcp"].status == "critical"  # another service's check waits for its interval
        assert local.checks["p-ttl"].status == "critical"
        await _until(lambda: not manager._probes)
        assert manager.run_now("p") == ["p-tcp"]  # done: may be asked again
        assert manager.run_now("nope") == []
    finally:
        await manager.stop()
        listener.close()
    assert not manager._probes
