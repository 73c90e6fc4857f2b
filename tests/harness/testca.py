"""A throwaway Connect CA for proxy tests: roots and leaves made by ca/x509.py, as bodies
the FakeAgent (api/testing.py) serves, so a proxy under test sees what an agent gives it."""

from __future__ import annotations

import datetime
import itertools
from dataclasses import dataclass, field
from typing import Any

from mesh.api.builders import leaf_body, roots_body
from mesh.ca import x509 as ca
from mesh.ca.spiffe import ServiceID, trust_domain_for

TRUST_DOMAIN = trust_domain_for("11111111-2222-3333-4444-555555555555")
_serials = itertools.count(100)


@dataclass
class TestCA:
    __test__ = False  # not a pytest class

    trust_domain: str = TRUST_DOMAIN
    key: Any = None
    cert: Any = None
    chain: tuple[str, ...] = ()  # the cross-signed certificate after a rotation
    previous: list[TestCA] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.key is None:
            self.key = ca.generate_key("ec", 256)
            self.cert = ca.build_root(self.key, self.trust_domain, next(_serials), _now(),
                                      datetime.timedelta(days=3650))

    @property
    def root_pem(self) -> str:
        return ca.pem(self.cert)

    def leaf(self, service: str, *, dc: str = "dc1", uri: str = "", hours: float = 72) -> dict[str, Any]:
        """A /v1/agent/connect/ca/leaf body for `service` (or any SPIFFE `uri`)."""
        uri = uri or ServiceID(self.trust_domain, "default", dc, service).uri()
        key_pem, csr_pem = ca.make_csr(uri)
        csr, uri = ca.csr_service_uri(csr_pem.encode())
        serial = next(_serials)
        now = _now()
        cert = ca.sign_leaf(csr, uri, self.key, self.cert, serial, now, datetime.timedelta(hours=hours))
        return leaf_body(service, ca.pem(cert) + "".join(self.chain), key_pem, serial=serial,
                         valid_after=(now - datetime.timedelta(minutes=1)).timestamp(),
                         valid_before=(now + datetime.timedelta(hours=hours)).timestamp(),
                         trust_domain=self.trust_domain, datacenter=dc)

    def roots(self) -> dict[str, Any]:
        """Every root still trusted (older ones first), the newest active."""
        pems = [c.root_pem for c in self.previous] + [self.root_pem]
        return roots_body(pems, trust_domain=self.trust_domain)

    def rotate(self) -> TestCA:
        """The next root of the same trust domain, cross-signed by this one; both trusted."""
        new = TestCA(self.trust_domain, previous=[*self.previous, self])
        cross = ca.cross_sign(new.cert, self.key, self.cert, next(_serials), _now())
        new.chain = (ca.pem(cross),)
        return new


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)
