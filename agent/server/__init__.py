"""The server role (Consul's agent/consul): Raft membership, RPC endpoints by area,
the leader's duties and the blocking-read engine. See role.py for the map.

Imported only by the composition root (agent/agent.py) and the backend
(agent/backend.py); tests/unit/test_architecture.py checks it.
"""

from .catalog_rpc import CLIENT_WRITABLE
from .raft import RaftFactory
from .role import ServerRole

__all__ = ["ServerRole", "CLIENT_WRITABLE", "RaftFactory"]
