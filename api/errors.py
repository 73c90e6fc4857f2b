"""The errors of mesh.api, one tree so a caller can catch all of it or one branch.

    APIError            .status (HTTP status; 0 when no answer came at all) and .message
     └── DecodeError    an answer that arrived but is not the shape the caller needs
                        (also a ValueError: pure parsing raises it with no I/O around)

The messages are Consul's CLI wording ("Unexpected response code: 404 (text)", "Error
connecting to agent at ..."), so `mesh` prints what `consul` prints.
"""

from __future__ import annotations

__all__ = ["APIError", "DecodeError"]


class APIError(Exception):
    """A request to the agent failed: it answered with a status other than 200
    (`status` keeps it), or could not be reached or timed out (`status` 0)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.status}, {self.message!r})"


class DecodeError(APIError, ValueError):
    """The agent answered, but the body or a header is not what the endpoint returns:
    a buggy or hostile agent, or a version mismatch. `status` is the HTTP status of
    that answer (0 when the value was parsed away from any response)."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(status, message)
