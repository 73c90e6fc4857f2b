"""Errors of the server side that both sides of the backend contract raise and catch.

They live apart from the Raft adapter so the HTTP layer, the client backend and the
server role can import them without importing pysyncobj (DESIGN.md principle 3)::

    MeshError (catalog.errors)
    └── RaftError            the replicated log refused or failed a write
        ├── NoLeader         no leader known, or none answered within the deadline
        ├── ApplyTimeout     a leader exists but the write did not commit in time
        └── MembershipError  a Raft configuration change was refused or failed

The HTTP middleware maps NoLeader and RaftError to 500 with their text (Consul's
"No cluster leader"); MembershipError becomes 400 where an operator asked for it.
"""

from __future__ import annotations

from mesh.catalog.errors import MeshError

__all__ = ["RaftError", "NoLeader", "ApplyTimeout", "MembershipError"]


class RaftError(MeshError):
    """The replicated log could not take or apply a write."""


class NoLeader(RaftError):
    """No leader is known, or the one known did not answer in time."""

    def __init__(self, msg: str = "No cluster leader") -> None:
        super().__init__(msg)


class ApplyTimeout(RaftError):
    """A leader exists, but the write did not commit within its deadline."""

    def __init__(self, msg: str = "timed out waiting for the write to commit") -> None:
        super().__init__(msg)


class MembershipError(RaftError):
    """A Raft configuration change (add or remove a server) was refused or failed."""
