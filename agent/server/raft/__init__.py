"""Raft for the server role, behind one typed Protocol.

    protocol.py        the `Raft` Protocol the server role is written against, RaftConfig
    adapter.py         PysyncobjRaft: group commit, retries, reads, membership, the watchdog
    pysyncobj_node.py  the ONLY module that imports pysyncobj: the SyncObj subclass and the
                       library fixes and safe-wire glue (tests/unit/test_architecture.py)
    fixes.py           the pure halves of those fixes
    snapshot.py        the snapshot file format
    watchdog.py        the watchdog's recovery decision, pure
    memory.py          MemoryRaft and MemoryCluster: Raft in one process, for tests
    memory_net.py      their transport: cut, drop and delay messages on an injected clock

memory.py and memory_net.py never reach pysyncobj_node.py or the adapter (the
architecture test checks it): membership.py imports the adapter by name, as the default
Raft factory, and tests pass `raft_factory=MemoryCluster(...).factory` instead.
"""

from .protocol import OnChange, Raft, RaftConfig, RaftFactory

__all__ = ["Raft", "RaftConfig", "OnChange", "RaftFactory"]
