"""One instance of an upstream as a sidecar reaches it: the value every picker, pool and
dial keys on. Its own module so the pure pickers (traffic/) and the balancer share it."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["Endpoint"]


@dataclass(frozen=True)
class Endpoint:
    """One healthy instance of an upstream, as its sidecar is reached."""

    address: str
    port: int
    service: str  # the destination service name its certificate must carry
    datacenter: str = ""
    node: str = ""
    service_id: str = ""
    key: str = field(default="", compare=False)  # "address:port", set once (read on every request)

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", f"{self.address}:{self.port}")
