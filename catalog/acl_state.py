"""ACL tokens, policies and roles: the replicated table and its writes.

Consul's model (../shared/reference/consul.md §1.9): a token links policies and roles
(by ID; a name given in a request is resolved to an ID when the write applies) and
carries service and node identities, which stand for Consul's templated policies. A
token's rules are the union of all of them (catalog.acl_authz merges them).

Writes are `ACLWrite` commands: the receiving server stamps `now` (agent/server/
catalog_rpc.py), so CreateTime and ExpirationTime come from a server's clock and the
state machine reads none. Validation problems are results, as elsewhere in the FSM.

SecretIDs are kept as written: Consul's API returns a token's SecretID to whoever may
read it (`GET /v1/acl/token/:id`, `mesh acl token read`), so a hash alone cannot answer
it. They never reach a log line, and listings redact them for tokens without
`acl = "write"`.
"""

from __future__ import annotations

import datetime
import hashlib
from dataclasses import dataclass, field
from typing import Any

from .durations import format_duration, parse_duration
from .errors import InvalidRequest
from .fields import Fields

__all__ = [
    "MANAGEMENT_POLICY_ID",
    "MANAGEMENT_POLICY_NAME",
    "ANONYMOUS_ACCESSOR",
    "ANONYMOUS_SECRET",
    "ACLPolicy",
    "ACLRole",
    "ACLToken",
    "ACLTable",
    "ACLWrite",
    "Resolved",
    "parse_policy",
    "parse_role",
    "parse_token",
    "resolve",
]

MANAGEMENT_POLICY_ID = "00000000-0000-0000-0000-000000000001"
MANAGEMENT_POLICY_NAME = "global-management"
ANONYMOUS_ACCESSOR = "00000000-0000-0000-0000-000000000002"
ANONYMOUS_SECRET = "anonymous"
MAX_RULES_BYTES = 64 * 1024
MAX_LINKS = 256


def _hash(*parts: Any) -> str:
    """Consul's `Hash` field: a digest of the object's content, base64 in Consul; any
    stable digest serves its purpose (telling versions apart)."""
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:44]


@dataclass(frozen=True, slots=True)
class ACLPolicy:
    id: str
    name: str
    description: str = ""
    rules: str = ""
    datacenters: tuple[str, ...] = ()
    create_index: int = 0
    modify_index: int = 0

    def to_api(self) -> dict[str, Any]:
        return {"ID": self.id, "Name": self.name, "Description": self.description, "Rules": self.rules,
                "Datacenters": list(self.datacenters) or None,
                "Hash": _hash(self.name, self.description, self.rules, self.datacenters),
                "CreateIndex": self.create_index, "ModifyIndex": self.modify_index}

    def to_list_api(self) -> dict[str, Any]:
        """The listing's stub: no Rules, as in Consul's ACLPolicyListStub."""
        out = self.to_api()
        del out["Rules"]
        return out


Identity = tuple[str, tuple[str, ...]]  # (service name, datacenters) / (node name, (datacenter,))


@dataclass(frozen=True, slots=True)
class ACLRole:
    id: str
    name: str
    description: str = ""
    policies: tuple[str, ...] = ()  # policy IDs
    service_identities: tuple[Identity, ...] = ()
    node_identities: tuple[Identity, ...] = ()
    create_index: int = 0
    modify_index: int = 0

    def to_api(self, table: ACLTable) -> dict[str, Any]:
        return {"ID": self.id, "Name": self.name, "Description": self.description,
                "Policies": table.policy_links(self.policies) or None,
                "ServiceIdentities": _service_identities_api(self.service_identities),
                "NodeIdentities": _node_identities_api(self.node_identities),
                "Hash": _hash(self.name, self.description, self.policies, self.service_identities,
                              self.node_identities),
                "CreateIndex": self.create_index, "ModifyIndex": self.modify_index}


@dataclass(frozen=True, slots=True)
class ACLToken:
    accessor_id: str
    secret_id: str
    description: str = ""
    policies: tuple[str, ...] = ()  # policy IDs
    roles: tuple[str, ...] = ()  # role IDs
    service_identities: tuple[Identity, ...] = ()
    node_identities: tuple[Identity, ...] = ()
    local: bool = False
    expiration_ttl: float = 0.0  # seconds; 0 for none
    expiration_time: float = 0.0  # unix seconds; 0 for none
    create_time: float = 0.0
    create_index: int = 0
    modify_index: int = 0

    def expired(self, now: float) -> bool:
        return bool(self.expiration_time) and now >= self.expiration_time

    def to_api(self, table: ACLTable, *, secret: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {
            "AccessorID": self.accessor_id,
            "SecretID": self.secret_id if secret else "<hidden>",
            "Description": self.description,
            "Policies": table.policy_links(self.policies) or None,
            "Roles": table.role_links(self.roles) or None,
            "ServiceIdentities": _service_identities_api(self.service_identities),
            "NodeIdentities": _node_identities_api(self.node_identities),
            "Local": self.local,
            "CreateTime": _rfc3339(self.create_time),
            "Hash": _hash(self.description, self.policies, self.roles, self.service_identities,
                          self.node_identities, self.local, self.expiration_time),
            "CreateIndex": self.create_index,
            "ModifyIndex": self.modify_index,
        }
        if self.expiration_time:
            out["ExpirationTime"] = _rfc3339(self.expiration_time)
            out["ExpirationTTL"] = format_duration(self.expiration_ttl) if self.expiration_ttl else None
        for key in ("Policies", "Roles", "ServiceIdentities", "NodeIdentities"):
            if out[key] is None:
                del out[key]  # Consul omits empty links (omitempty)
        return out


def _rfc3339(ts: float) -> str:
    moment = datetime.datetime.fromtimestamp(ts, tz=datetime.UTC)
    return moment.isoformat(timespec="microseconds").replace("+00:00", "Z")


def _parse_rfc3339(text: str, what: str) -> float:
    try:
        moment = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidRequest(f"{what}: not an RFC 3339 time: {text!r}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return moment.timestamp()


def _service_identities_api(rows: tuple[Identity, ...]) -> list[dict[str, Any]] | None:
    out = []
    for name, dcs in rows:
        row: dict[str, Any] = {"ServiceName": name}
        if dcs:
            row["Datacenters"] = list(dcs)
        out.append(row)
    return out or None


def _node_identities_api(rows: tuple[Identity, ...]) -> list[dict[str, Any]] | None:
    return [{"NodeName": name, "Datacenter": dcs[0] if dcs else ""} for name, dcs in rows] or None


# ---- request bodies ----------------------------------------------------------------
_NAME_OK = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_")


def _check_name(name: str, what: str) -> str:
    """Consul's validPolicyName/validRoleName: letters, digits, '-' and '_', 1-128."""
    if not name or len(name) > 128 or not set(name) <= _NAME_OK:
        raise InvalidRequest(f"Invalid {what} Name: {name!r} (letters, digits, '-' and '_'; at most 128)")
    return name


def _objects(fields: Fields, key: str, what: str) -> list[Fields]:
    """A list of at most MAX_LINKS objects under `key` (none when absent)."""
    raw = fields.raw(key)
    if raw is None:
        return []
    if not isinstance(raw, list) or len(raw) > MAX_LINKS:
        raise InvalidRequest(f"{what}.{key} must be a list of at most {MAX_LINKS} objects")
    return [Fields(item, f"{what}.{key}[]") for item in raw]


def _links(fields: Fields, key: str, what: str) -> tuple[tuple[str, str], ...]:
    """[{ID} or {Name}] as (id, name) pairs, resolved to IDs when the write applies."""
    out = []
    for link in _objects(fields, key, what):
        ident, name = link.str("ID"), link.str("Name")
        if not ident and not name:
            raise InvalidRequest(f"{what}.{key}: each link needs an ID or a Name")
        out.append((ident, name))
    return tuple(out)


_SERVICE_NAME_OK = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-_")


def _service_identities(fields: Fields, what: str) -> tuple[Identity, ...]:
    out = []
    for f in _objects(fields, "ServiceIdentities", what):
        name = f.str("ServiceName")
        if not name or len(name) > 256 or not set(name.lower()) <= _SERVICE_NAME_OK:
            raise InvalidRequest(f"Service identity {name!r} has an invalid name. Only lowercase alphanumeric "
                                 "characters, '-' and '_' are allowed")
        dcs = f.raw("Datacenters") or []
        if not isinstance(dcs, list) or not all(isinstance(d, str) for d in dcs):
            raise InvalidRequest(f"{what}.ServiceIdentities[].Datacenters must be a list of strings")
        out.append((name, tuple(dcs)))
    return tuple(out)


def _node_identities(fields: Fields, what: str) -> tuple[Identity, ...]:
    out = []
    for f in _objects(fields, "NodeIdentities", what):
        name, dc = f.str("NodeName"), f.str("Datacenter")
        if not name:
            raise InvalidRequest("Node identity is missing the node name field on this token")
        if not dc:
            raise InvalidRequest("Node identity is missing the datacenter field on this token")
        out.append((name, (dc,)))
    return tuple(out)


# Consul 1.17's templated policies that are identities under another name
_TEMPLATES = {"builtin/service": "service", "builtin/node": "node"}


def _templated(fields: Fields, what: str) -> tuple[list[Identity], list[Identity]]:
    """`TemplatedPolicies: [{TemplateName, TemplateVariables: {Name, Datacenter?}}]` as
    the service and node identities they stand for; any other template is a 400 rather
    than a grant silently dropped."""
    services: list[Identity] = []
    nodes: list[Identity] = []
    for f in _objects(fields, "TemplatedPolicies", what):
        name = f.str("TemplateName")
        variables = Fields(f.raw("TemplateVariables") or {}, f"{what}.TemplatedPolicies[].TemplateVariables")
        if name not in _TEMPLATES:
            raise InvalidRequest(f"templated policy {name!r} is not supported (mesh knows builtin/service and "
                                 "builtin/node)")
        target = variables.str("Name")
        if not target:
            raise InvalidRequest(f"templated policy {name!r} needs TemplateVariables.Name")
        if _TEMPLATES[name] == "service":
            services.append((target, ()))
        else:
            nodes.append((target, (variables.str("Datacenter") or "dc1",)))
    return services, nodes


def parse_policy(body: Any, policy_id: str) -> dict[str, Any]:
    """A policy create/update body as the ACLWrite payload (rules checked by the caller
    with catalog.acl_rules, which knows the language)."""
    f = Fields(body, "policy")
    rules = f.str("Rules")
    if len(rules.encode()) > MAX_RULES_BYTES:
        raise InvalidRequest(f"policy Rules larger than {MAX_RULES_BYTES} bytes")
    dcs = f.raw("Datacenters") or []
    if not isinstance(dcs, list) or not all(isinstance(d, str) for d in dcs):
        raise InvalidRequest("policy.Datacenters must be a list of strings")
    return {"id": policy_id, "name": _check_name(f.str("Name"), "Policy"), "description": f.str("Description"),
            "rules": rules, "datacenters": list(dcs)}


def parse_role(body: Any, role_id: str) -> dict[str, Any]:
    f = Fields(body, "role")
    services, nodes = _templated(f, "role")
    return {"id": role_id, "name": _check_name(f.str("Name"), "Role"), "description": f.str("Description"),
            "policies": [list(x) for x in _links(f, "Policies", "role")],
            "service_identities": [[n, list(d)] for n, d in (*_service_identities(f, "role"), *services)],
            "node_identities": [[n, list(d)] for n, d in (*_node_identities(f, "role"), *nodes)]}


def parse_token(body: Any, accessor_id: str, secret_id: str) -> dict[str, Any]:
    """A token create/update body. AccessorID and SecretID may be given on create
    (Consul allows it, for migrations); they are UUIDs either way."""
    f = Fields(body, "token")
    ttl = 0.0
    if f.has("ExpirationTTL"):
        raw = f.raw("ExpirationTTL")
        ttl = parse_duration(raw, what="ExpirationTTL") if isinstance(raw, str) else float(raw) / 1e9
        if ttl < 60 or ttl > 24 * 3600:
            raise InvalidRequest("ExpirationTTL cannot be less than 1m0s or more than 24h0m0s")
    expires = _parse_rfc3339(f.str("ExpirationTime"), "ExpirationTime") if f.has("ExpirationTime") else 0.0
    if ttl and expires:
        raise InvalidRequest("Expiration TTL and Expiration Time cannot both be set")
    services, nodes = _templated(f, "token")
    return {"accessor_id": accessor_id, "secret_id": secret_id, "description": f.str("Description"),
            "policies": [list(x) for x in _links(f, "Policies", "token")],
            "roles": [list(x) for x in _links(f, "Roles", "token")],
            "service_identities": [[n, list(d)] for n, d in (*_service_identities(f, "token"), *services)],
            "node_identities": [[n, list(d)] for n, d in (*_node_identities(f, "token"), *nodes)],
            "local": f.bool("Local"), "expiration_ttl": ttl, "expiration_time": expires}


# ---- the command --------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ACLWrite:
    """One ACL write: `op` names it (bootstrap, token-set, token-delete, policy-set,
    policy-delete, role-set, role-delete), `body` is its payload, `now` the receiving
    server's wall time."""

    op: str
    body: dict[str, Any] = field(default_factory=dict)
    now: float = 0.0

    def to_wire(self) -> list[Any]:
        return [self.op, self.body, self.now]

    @classmethod
    def from_wire(cls, data: list[Any]) -> ACLWrite:
        op, body, now = data
        return cls(str(op), dict(body), float(now))


# ---- the table ----------------------------------------------------------------------
class ACLTable:
    """Tokens by AccessorID (and SecretID), policies and roles by ID (and name)."""

    def __init__(self) -> None:
        self.tokens: dict[str, ACLToken] = {}
        self.by_secret: dict[str, str] = {}
        self.policies: dict[str, ACLPolicy] = {}
        self.policy_names: dict[str, str] = {}
        self.roles: dict[str, ACLRole] = {}
        self.role_names: dict[str, str] = {}
        self.bootstrap_index = 0

    def copy(self) -> ACLTable:
        other = ACLTable()
        other.tokens, other.by_secret = dict(self.tokens), dict(self.by_secret)
        other.policies, other.policy_names = dict(self.policies), dict(self.policy_names)
        other.roles, other.role_names = dict(self.roles), dict(self.role_names)
        other.bootstrap_index = self.bootstrap_index
        return other

    # ---- reads ---------------------------------------------------------------------
    def token_by_secret(self, secret: str) -> ACLToken | None:
        accessor = self.by_secret.get(secret)
        return self.tokens.get(accessor) if accessor else None

    def policy_links(self, ids: tuple[str, ...]) -> list[dict[str, str]]:
        return [{"ID": i, "Name": self.policies[i].name} for i in ids if i in self.policies]

    def role_links(self, ids: tuple[str, ...]) -> list[dict[str, str]]:
        return [{"ID": i, "Name": self.roles[i].name} for i in ids if i in self.roles]

    # ---- writes (called by the FSM; each returns the API result or {"Error": ...}) ---
    def _resolve_links(self, links: list[Any], ids: dict[str, Any], names: dict[str, str], what: str) -> tuple[str, ...]:
        out: list[str] = []
        for ident, name in links:
            if ident:
                if ident not in ids:
                    raise InvalidRequest(f"cannot find {what} {ident}")
                found = ident
            else:
                found = names.get(name, "")
                if not found:
                    raise InvalidRequest(f"cannot find {what} {name}")
            if found not in out:
                out.append(found)
        return tuple(out)

    def put_policy(self, index: int, body: dict[str, Any]) -> ACLPolicy:
        policy_id, name = body["id"], body["name"]
        old = self.policies.get(policy_id)
        holder = self.policy_names.get(name)
        if holder and holder != policy_id:
            raise InvalidRequest(f"Invalid Policy: A Policy with Name {name!r} already exists")
        if policy_id == MANAGEMENT_POLICY_ID and old is not None and body["rules"] != old.rules:
            raise InvalidRequest("Changing the Rules for the builtin global-management policy is not permitted")
        row = ACLPolicy(policy_id, name, body["description"], body["rules"], tuple(body["datacenters"]),
                        old.create_index if old else index, index)
        if old is not None:
            self.policy_names.pop(old.name, None)
        self.policies[policy_id] = row
        self.policy_names[name] = policy_id
        return row

    def delete_policy(self, policy_id: str) -> bool:
        if policy_id == MANAGEMENT_POLICY_ID:
            raise InvalidRequest("Delete operation not permitted on the builtin global-management policy")
        old = self.policies.pop(policy_id, None)
        if old is not None:
            self.policy_names.pop(old.name, None)
        return True

    def put_role(self, index: int, body: dict[str, Any]) -> ACLRole:
        role_id, name = body["id"], body["name"]
        old = self.roles.get(role_id)
        holder = self.role_names.get(name)
        if holder and holder != role_id:
            raise InvalidRequest(f"Invalid Role: A Role with Name {name!r} already exists")
        policies = self._resolve_links(body["policies"], self.policies, self.policy_names, "policy")
        row = ACLRole(role_id, name, body["description"], policies,
                      tuple((n, tuple(d)) for n, d in body["service_identities"]),
                      tuple((n, tuple(d)) for n, d in body["node_identities"]),
                      old.create_index if old else index, index)
        if old is not None:
            self.role_names.pop(old.name, None)
        self.roles[role_id] = row
        self.role_names[name] = role_id
        return row

    def delete_role(self, role_id: str) -> bool:
        old = self.roles.pop(role_id, None)
        if old is not None:
            self.role_names.pop(old.name, None)
        return True

    def put_token(self, index: int, body: dict[str, Any], now: float, *, create: bool) -> ACLToken:
        accessor, secret = body["accessor_id"], body["secret_id"]
        old = self.tokens.get(accessor)
        if create and old is not None:
            raise InvalidRequest("Invalid Token: AccessorID is already in use")
        if not create and old is None:
            raise InvalidRequest(f"Cannot find token {accessor!r}")
        if old is not None:
            secret = old.secret_id  # an update never changes the secret
        holder = self.by_secret.get(secret)
        if holder and holder != accessor:
            raise InvalidRequest("Invalid Token: SecretID is already in use")
        ttl = float(body.get("expiration_ttl") or 0.0)
        expires = float(body.get("expiration_time") or 0.0)
        if old is not None:
            changed_ttl = ttl and ttl != old.expiration_ttl
            changed_time = expires and abs(expires - old.expiration_time) > 1e-3
            if changed_ttl or changed_time:
                raise InvalidRequest("Cannot change expiration time")
            ttl, expires, created = old.expiration_ttl, old.expiration_time, old.create_time
        else:
            created = now
            if ttl:
                expires = now + ttl
            elif expires and expires <= now:
                raise InvalidRequest("ExpirationTime cannot be in the past")
        row = ACLToken(
            accessor, secret, body["description"],
            self._resolve_links(body["policies"], self.policies, self.policy_names, "policy"),
            self._resolve_links(body["roles"], self.roles, self.role_names, "role"),
            tuple((n, tuple(d)) for n, d in body["service_identities"]),
            tuple((n, tuple(d)) for n, d in body["node_identities"]),
            bool(old.local if old else body.get("local")), ttl, expires, created,
            old.create_index if old else index, index)
        self.tokens[accessor] = row
        self.by_secret[secret] = accessor
        return row

    def delete_token(self, accessor: str) -> bool:
        if accessor == ANONYMOUS_ACCESSOR:
            raise InvalidRequest("Deletion of the builtin anonymous token is not permitted")
        old = self.tokens.pop(accessor, None)
        if old is not None:
            self.by_secret.pop(old.secret_id, None)
        return True

    def bootstrap(self, index: int, accessor: str, secret: str, now: float, *, description: str) -> ACLToken:
        """The cluster's first management token, the builtin policy and the anonymous
        token; once per cluster (the caller refuses a second time)."""
        if MANAGEMENT_POLICY_ID not in self.policies:
            self.put_policy(index, {"id": MANAGEMENT_POLICY_ID, "name": MANAGEMENT_POLICY_NAME,
                                    "description": "Builtin Policy that grants unlimited access",
                                    "rules": "", "datacenters": []})
        if ANONYMOUS_ACCESSOR not in self.tokens:
            self.put_token(index, _token_body(ANONYMOUS_ACCESSOR, ANONYMOUS_SECRET, "Anonymous Token", []),
                           now, create=True)
        token = self.put_token(index, _token_body(accessor, secret, description, [[MANAGEMENT_POLICY_ID, ""]]),
                               now, create=True)
        self.bootstrap_index = index
        return token

    def rows(self) -> list[tuple[str, Any]]:
        """Snapshot records, in an order that restores (policies before their users)."""
        out: list[tuple[str, Any]] = [("ap", _wire(p)) for p in self.policies.values()]
        out += [("ar", _wire(r)) for r in self.roles.values()]
        out += [("at", _wire(t)) for t in self.tokens.values()]
        if self.bootstrap_index:
            out.append(("ab", self.bootstrap_index))
        return out

    def restore_row(self, kind: str, values: Any) -> None:
        if kind == "ap":
            policy = ACLPolicy(*values[:4], tuple(values[4]), *values[5:])
            self.policies[policy.id] = policy
            self.policy_names[policy.name] = policy.id
        elif kind == "ar":
            role = ACLRole(values[0], values[1], values[2], tuple(values[3]), _idents(values[4]), _idents(values[5]),
                           *values[6:])
            self.roles[role.id] = role
            self.role_names[role.name] = role.id
        elif kind == "at":
            token = ACLToken(values[0], values[1], values[2], tuple(values[3]), tuple(values[4]),
                             _idents(values[5]), _idents(values[6]), *values[7:])
            self.tokens[token.accessor_id] = token
            self.by_secret[token.secret_id] = token.accessor_id
        elif kind == "ab":
            self.bootstrap_index = int(values)


def _idents(rows: Any) -> tuple[Identity, ...]:
    return tuple((str(n), tuple(d)) for n, d in rows)


def _idents_wire(rows: tuple[Identity, ...]) -> list[Any]:
    return [[n, list(d)] for n, d in rows]


def _wire(row: ACLPolicy | ACLRole | ACLToken) -> list[Any]:
    """A row as a positional msgpack list (restore_row reads it back)."""
    out: list[Any] = []
    for name in row.__slots__:
        value = getattr(row, name)
        if name in ("service_identities", "node_identities"):
            value = _idents_wire(value)
        elif isinstance(value, tuple):
            value = list(value)
        out.append(value)
    return out


def _token_body(accessor: str, secret: str, description: str, policies: list[Any]) -> dict[str, Any]:
    return {"accessor_id": accessor, "secret_id": secret, "description": description, "policies": policies,
            "roles": [], "service_identities": [], "node_identities": [], "local": False,
            "expiration_ttl": 0.0, "expiration_time": 0.0}


# ---- resolution -------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Resolved:
    """What a secret stands for: the rules its authorizer is built from (policy texts
    plus identities, which catalog.acl_rules templates), or management."""

    accessor_id: str
    management: bool = False
    rules: tuple[str, ...] = ()
    service_identities: tuple[str, ...] = ()
    node_identities: tuple[str, ...] = ()
    expiration_time: float = 0.0

    def to_wire(self) -> dict[str, Any]:
        return {"a": self.accessor_id, "m": self.management, "r": list(self.rules),
                "s": list(self.service_identities), "n": list(self.node_identities), "e": self.expiration_time}

    @classmethod
    def from_wire(cls, d: dict[str, Any]) -> Resolved:
        return cls(str(d["a"]), bool(d["m"]), tuple(d["r"]), tuple(d["s"]), tuple(d["n"]), float(d["e"]))


def resolve(table: ACLTable, secret: str, now: float, datacenter: str) -> Resolved | None:
    """The token behind `secret` ("" is the anonymous token), or None when there is no
    such token or it has expired (Consul: "ACL not found"). Identities and policies
    scoped to other datacenters do not apply here."""
    token = table.token_by_secret(secret or ANONYMOUS_SECRET)
    if token is None:
        if not secret:
            return Resolved(ANONYMOUS_ACCESSOR)  # before bootstrap: the default policy decides
        return None
    if token.expired(now):
        return None
    policy_ids = list(token.policies)
    services = [n for n, dcs in token.service_identities if not dcs or datacenter in dcs]
    nodes = [n for n, dcs in token.node_identities if not dcs or datacenter in dcs]
    for role_id in token.roles:
        role = table.roles.get(role_id)
        if role is None:
            continue
        policy_ids += role.policies
        services += [n for n, dcs in role.service_identities if not dcs or datacenter in dcs]
        nodes += [n for n, dcs in role.node_identities if not dcs or datacenter in dcs]
    rules: list[str] = []
    management = False
    for policy_id in dict.fromkeys(policy_ids):
        policy = table.policies.get(policy_id)
        if policy is None or (policy.datacenters and datacenter not in policy.datacenters):
            continue
        if policy_id == MANAGEMENT_POLICY_ID:
            management = True
        rules.append(policy.rules)
    return Resolved(token.accessor_id, management, tuple(rules), tuple(dict.fromkeys(services)),
                    tuple(dict.fromkeys(nodes)), token.expiration_time)

