"""SPIFFE identities of Connect services (../shared/reference/consul.md §4.1). Pure.

    spiffe://<trust-domain>/ns/<namespace>/dc/<datacenter>/svc/<service>

The trust domain is `<cluster-uuid>.consul`. Parsing is strict: anything else is an
error naming what is wrong, so a malformed certificate URI never authorizes anything.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from mesh.catalog.errors import InvalidRequest

__all__ = ["ServiceID", "parse_service_id", "trust_domain_for", "check_service_name", "AgentID", "parse_agent_id",
           "UNKNOWN_TRUST_DOMAIN"]

# What an agent puts in its first auto_encrypt CSR, before it knows the cluster's trust
# domain (Consul does the same); the servers sign it with the real one.
UNKNOWN_TRUST_DOMAIN = "unknown.consul"

_LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_TRUST_DOMAIN = re.compile(r"^[a-z0-9][a-z0-9.-]*[a-z0-9]$")
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


@dataclass(frozen=True)
class ServiceID:
    trust_domain: str
    namespace: str
    datacenter: str
    service: str

    def uri(self) -> str:
        return f"spiffe://{self.trust_domain}/ns/{self.namespace}/dc/{self.datacenter}/svc/{self.service}"


def check_service_name(name: str) -> None:
    """A service can have an identity only if its name fits in one URI path segment."""
    if not _LABEL.match(name):
        raise InvalidRequest(f"service name {name!r} cannot be part of a SPIFFE identity: "
                             "use letters, digits, '.', '_' and '-', starting with a letter or digit")


def trust_domain_for(cluster_id: str) -> str:
    """`<cluster-uuid>.consul`, as Consul names a cluster's trust domain."""
    if not _UUID.match(cluster_id):
        raise InvalidRequest(f"cluster ID {cluster_id!r} is not a UUID")
    return f"{cluster_id}.consul"


def parse_service_id(uri: str) -> ServiceID:
    """A service identity URI; InvalidRequest for anything malformed."""
    if not uri.startswith("spiffe://"):
        raise InvalidRequest("ClientCertURI not a valid Connect identifier: not a spiffe:// URI")
    rest = uri[len("spiffe://"):]
    if "?" in rest or "#" in rest:
        raise InvalidRequest("ClientCertURI not a valid Connect identifier: query or fragment present")
    trust_domain, _, path = rest.partition("/")
    if not _TRUST_DOMAIN.match(trust_domain):
        raise InvalidRequest(f"ClientCertURI not a valid Connect identifier: bad trust domain {trust_domain!r}")
    parts = path.split("/")
    if len(parts) != 6 or parts[0] != "ns" or parts[2] != "dc" or parts[4] != "svc":
        raise InvalidRequest("ClientCertURI not a valid Service identifier: expected /ns/<ns>/dc/<dc>/svc/<name>")
    namespace, datacenter, service = parts[1], parts[3], parts[5]
    for what, value in (("namespace", namespace), ("datacenter", datacenter), ("service", service)):
        if not _LABEL.match(value):
            raise InvalidRequest(f"ClientCertURI not a valid Service identifier: bad {what} {value!r}")
    return ServiceID(trust_domain, namespace, datacenter, service)


@dataclass(frozen=True)
class AgentID:
    """An agent's identity, as Consul's auto_encrypt certificates carry it:

        spiffe://<trust-domain>/agent/client/dc/<datacenter>/id/<node>
    """

    trust_domain: str
    datacenter: str
    node: str

    def uri(self) -> str:
        return f"spiffe://{self.trust_domain}/agent/client/dc/{self.datacenter}/id/{self.node}"


def parse_agent_id(uri: str) -> AgentID:
    """An agent identity URI; InvalidRequest for anything else (a service identity too)."""
    if not uri.startswith("spiffe://") or "?" in uri or "#" in uri:
        raise InvalidRequest("not a SPIFFE agent identity: expected spiffe://<trust-domain>/agent/client/...")
    trust_domain, _, path = uri[len("spiffe://"):].partition("/")
    if not _TRUST_DOMAIN.match(trust_domain):
        raise InvalidRequest(f"not a SPIFFE agent identity: bad trust domain {trust_domain!r}")
    parts = path.split("/")
    if len(parts) != 6 or parts[:2] != ["agent", "client"] or parts[2] != "dc" or parts[4] != "id":
        raise InvalidRequest("not a SPIFFE agent identity: expected /agent/client/dc/<dc>/id/<node>")
    datacenter, node = parts[3], parts[5]
    for what, value in (("datacenter", datacenter), ("node", node)):
        if not _LABEL.match(value):
            raise InvalidRequest(f"not a SPIFFE agent identity: bad {what} {value!r}")
    return AgentID(trust_domain, datacenter, node)
