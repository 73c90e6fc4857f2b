"""Errors of the pure catalog layer.

    MeshError
    ├── RateLimited          a server refused for load (CSRMaxPerSecond): retry later, 429
    ├── PermissionDenied     the token may not do this (or is unknown: "ACL not found"): 403
    └── CatalogError
        ├── InvalidRequest   bad input: the HTTP layer answers 400 with the message
        ├── NotFound         unknown object: 404
        └── FatalStateError  the replicated log cannot be applied: the server must stop
"""

from __future__ import annotations

__all__ = ["MeshError", "CatalogError", "InvalidRequest", "NotFound", "FatalStateError", "RateLimited",
           "PermissionDenied"]


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


class PermissionDenied(MeshError):
    """Consul's 403: `Permission denied: token with AccessorID '...' lacks permission
    '...'`, or `ACL not found` for a token that does not exist (or has expired)."""
