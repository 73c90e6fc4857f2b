"""Forwarding names outside our domain to `-recursor` servers (Consul's recursors).

Tried in order; an answer other than NOERROR or NXDOMAIN moves on to the next; when all
fail or time out the caller answers SERVFAIL.
"""

from __future__ import annotations

import asyncio
from typing import Any

__all__ = ["forward"]


class _Exchange(asyncio.DatagramProtocol):
    def __init__(self, query_id: bytes) -> None:
        self.answer: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._id = query_id

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if data[:2] == self._id and not self.answer.done():
            self.answer.set_result(data)

    def error_received(self, exc: Exception) -> None:
        if not self.answer.done():
            self.answer.set_exception(exc)


def _address(recursor: str) -> tuple[str, int]:
    host, sep, port = recursor.rpartition(":")
    if sep and port.isdigit() and "]" not in port:
        return host.strip("[]"), int(port)
    return recursor.strip("[]"), 53


async def forward(query: bytes, recursors: tuple[str, ...], timeout: float) -> bytes | None:
    """The first usable answer from the recursors, or None."""
    loop = asyncio.get_running_loop()
    for recursor in recursors:
        host, port = _address(recursor)
        transport = None
        try:
            transport, protocol = await loop.create_datagram_endpoint(
                lambda: _Exchange(query[:2]), remote_addr=(host, port))
            transport.sendto(query)
            answer = await asyncio.wait_for(protocol.answer, timeout)
        except (TimeoutError, OSError):
            continue
        finally:
            if transport is not None:
                transport.close()
        if len(answer) >= 4 and answer[3] & 0x0F in (0, 3):  # NOERROR or NXDOMAIN
            return answer
    return None
