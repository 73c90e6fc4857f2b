"""Forwarding names outside our domain to `-recursor` servers (Consul's recursors).

Tried in order; an answer other than NOERROR or NXDOMAIN moves on to the next; when all
fail or time out the caller answers SERVFAIL.
"""

from __future__ import annotations

import asyncio
import ipaddress
from typing import Any

from .names import name_problem

__all__ = ["forward", "parse_recursor"]


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


def parse_recursor(recursor: str) -> tuple[str, int]:
    """`IP`, `IP:PORT`, `[IPv6]:PORT`, `HOST` or `HOST:PORT` as (host, port); port 53 by
    default. Raises ValueError naming the problem: a bad recursor is refused at start,
    not discovered when the first query times out."""
    text = recursor.strip()
    try:
        return str(ipaddress.ip_address(text.strip("[]") if text.startswith("[") and text.endswith("]") else text)), 53
    except ValueError:
        pass
    if text.startswith("["):
        inside, bracket, rest = text[1:].partition("]")
        if not bracket or not rest.startswith(":"):
            raise ValueError(f"{recursor!r} is not IP, IP:PORT or [IPv6]:PORT")
        host, port_text = inside, rest[1:]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{recursor!r}: {host!r} is not an IPv6 address") from None
    else:
        host, sep, port_text = text.partition(":")
        if not sep:
            port_text = "53"
        if ":" in port_text:
            raise ValueError(f"{recursor!r} is not an IP address or HOST:PORT (write IPv6 as [IPv6]:PORT)")
        if name_problem(host) is not None:
            raise ValueError(f"{recursor!r}: {host!r} is not an IP address or host name")
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"{recursor!r}: port must be 1-65535")
    return host, int(port_text)


async def forward(query: bytes, recursors: tuple[str, ...], timeout: float) -> bytes | None:
    """The first usable answer from the recursors, or None."""
    loop = asyncio.get_running_loop()
    for recursor in recursors:
        host, port = parse_recursor(recursor)
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
