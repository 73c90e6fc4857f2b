"""The proxy's error for a start that cannot go on (shared by app.py and watches.py)."""

from __future__ import annotations

__all__ = ["StartError"]


class StartError(Exception):
    """The proxy cannot start: one line for the operator (the command exits 1)."""
