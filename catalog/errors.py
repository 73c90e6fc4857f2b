"""Errors of the pure catalog layer.

    MeshError
    ├── RateLimited          a server refused for load (CSRMaxPerSecond): retry later, 429
    └── CatalogError
        ├── InvalidRequest   bad input: the HTTP layer answers 400 with the message
        ├── NotFound         unknown object: 404
        └── FatalStateError  the replicated log cannot be applied: the server must stop
"""

from __future__ import annotations

__all__ = ["MeshError", "CatalogError", "InvalidRequest", "NotFound", "FatalStateError", "RateLimited"]


class MeshError(Exception):
    """Root of every error mesh raises on purpose."""


class CatalogError(MeshError):
    pass


class RateLimited(MeshError):
    pass


class InvalidRequest(CatalogError):
    pass


class NotFound(CatalogError):
    pass


class FatalStateError(CatalogError):
    pass
