"""The ACL authorizer: what a token's merged policies allow. Pure; compiled once per
token (its policies, roles and identities), then every check is a few dict probes.

Semantics are Consul's (acl/policy_merger.go, acl/policy_authorizer.go,
acl/static_authorizer.go):

* Merging: rules for the same kind and the same name (exact and prefix apart) combine
  with the precedence deny > write > list > read. A service rule's written `intentions`
  merge the same way, and a missing one defaults from the merged policy afterwards.
* Deciding a labeled check: the exact rule for the name if any, else the longest prefix
  rule the name starts with; the level grants write ⊇ list ⊇ read (list only for
  keys), deny grants nothing. No rule: the agent's default policy.
* `mesh` and `peering`, when unset, follow `operator`; then the default policy.
* `acl` (and snapshots) are never granted by the default policy: Consul's allow-all
  root authorizer refuses ACL management; only an `acl` rule or a management token
  gives it.
* Intentions on `*` (a wildcard destination): read needs some rule that may read
  intentions; write needs every intentions rule to be write (Consul's anyAllowed and
  allAllowed).

`Authorizer.manage()` is a management token (and what Consul resolves every token to
when ACLs are disabled); `allow_all()` and `deny_all()` are the default-policy roots
(`deny_all` is also down_policy deny).

The decision does not depend on rule order, dict order or the time: the same rules give
the same answers on every server.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable

from .acl_rules import LABELED_KINDS, UNLABELED_KINDS, Rules, intentions_default
from .errors import PermissionDenied

__all__ = [
    "Authorizer",
    "ACCESSES",
    "RESOURCES",
    "merge_levels",
    "grants",
    "denied_message",
    "permission_denied",
]

ACCESSES = ("read", "list", "write")
RESOURCES = (*LABELED_KINDS, *UNLABELED_KINDS, "intention")
_RANK = {"": 0, "read": 1, "list": 2, "write": 3, "deny": 4}  # policy_merger precedence
_GRANTS = {
    "write": frozenset(ACCESSES),
    "list": frozenset(("read", "list")),
    "read": frozenset(("read",)),
    "deny": frozenset(),
}


def merge_levels(a: str, b: str) -> str:
    """Consul's takesPrecedenceOver as a merge: deny > write > list > read > unset."""
    return a if _RANK[a] >= _RANK[b] else b


def grants(level: str, access: str) -> bool:
    """Whether a rule at `level` allows `access` (Consul's enforce)."""
    return access in _GRANTS[level]


class _Table:
    """One labeled kind's merged rules: exact names and prefixes, with the lengths the
    prefixes come in, so a lookup probes only those lengths, longest first."""

    __slots__ = ("exact", "prefix", "lengths")

    def __init__(self, exact: dict[str, str], prefix: dict[str, str]) -> None:
        self.exact = exact
        self.prefix = prefix
        self.lengths = sorted({len(p) for p in prefix}, reverse=True)

    def lookup(self, name: str) -> str | None:
        """The level of the rule that decides for `name`, None when none applies."""
        level = self.exact.get(name)
        if level is not None:
            return level
        return self.longest_prefix(name)

    def longest_prefix(self, name: str) -> str | None:
        prefix, size = self.prefix, len(name)
        for n in self.lengths:
            if n <= size:
                level = prefix.get(name[:n])
                if level is not None:
                    return level
        return None

    def levels(self) -> Iterable[str]:
        yield from self.exact.values()
        yield from self.prefix.values()


_EMPTY = _Table({}, {})


def _merged(items: Iterable[tuple[str, str]]) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, level in items:
        out[name] = merge_levels(out.get(name, ""), level)
    return out


def _service_tables(rules: list[Rules]) -> tuple[_Table, _Table]:
    """The service and intentions tables: the written intentions merge like levels, then
    a missing one takes its default from the merged service level."""
    tables = []
    for prefix in (False, True):
        policy: dict[str, str] = {}
        intentions: dict[str, str] = {}
        for r in rules:
            for rule in r.labeled("service", prefix):
                policy[rule.name] = merge_levels(policy.get(rule.name, ""), rule.access)
                intentions[rule.name] = merge_levels(intentions.get(rule.name, ""), rule.intentions)
        effective = {n: intentions[n] or intentions_default(p) for n, p in policy.items()}
        tables.append((policy, effective))
    (exact, exact_i), (prefix, prefix_i) = tables
    return _Table(exact, prefix), _Table(exact_i, prefix_i)


class Authorizer:
    """Compiled decisions for one token. Build with `from_rules`, `manage`, `allow_all`
    or `deny_all`; ask with `allowed`/`allowed_global` or the named helpers."""

    __slots__ = ("_tables", "_globals", "_default_allow", "_manage", "_key_not_write",
                 "_intention_any", "_intention_all")

    def __init__(self, tables: dict[str, _Table], globals_: dict[str, str], default_allow: bool,
                 manage: bool = False) -> None:
        self._tables = tables
        self._globals = globals_
        self._default_allow = default_allow
        self._manage = manage
        keys = tables.get("key", _EMPTY)
        # names of key rules below write, sorted, for key_write_prefix's "none beneath"
        self._key_not_write = sorted({n for n, lv in (*keys.exact.items(), *keys.prefix.items())
                                      if lv != "write"})
        self._intention_any, self._intention_all = self._wildcard_intentions()

    # -- construction -------------------------------------------------------------------

    @classmethod
    def from_rules(cls, rules: Iterable[Rules], default: str) -> Authorizer:
        """A token's policies merged; `default` is acl.default_policy, "allow" or "deny"."""
        if default not in ("allow", "deny"):
            raise ValueError(f"default policy must be allow or deny, not {default!r}")
        rules = list(rules)
        tables: dict[str, _Table] = {}
        for kind in LABELED_KINDS:
            if kind == "service":
                continue
            exact = _merged((x.name, x.access) for r in rules for x in r.labeled(kind, False))
            prefix = _merged((x.name, x.access) for r in rules for x in r.labeled(kind, True))
            if exact or prefix:
                tables[kind] = _Table(exact, prefix)
        service, intention = _service_tables(rules)
        if service.exact or service.prefix:
            tables["service"], tables["intention"] = service, intention
        globals_ = {}
        for kind in UNLABELED_KINDS:
            level = ""
            for r in rules:
                level = merge_levels(level, r.unlabeled(kind))
            if level:
                globals_[kind] = level
        return cls(tables, globals_, default == "allow")

    @classmethod
    def manage(cls) -> Authorizer:
        """Everything allowed, ACL management included (global-management, bootstrap
        token; Consul also resolves every token to this when ACLs are disabled)."""
        return cls({}, {}, True, manage=True)

    @classmethod
    def allow_all(cls) -> Authorizer:
        """Default policy allow with no rules: everything but ACL management."""
        return cls({}, {}, True)

    @classmethod
    def deny_all(cls) -> Authorizer:
        """Default policy deny (and down_policy deny) with no rules: nothing."""
        return cls({}, {}, False)

    @property
    def is_management(self) -> bool:
        return self._manage

    # -- decisions ----------------------------------------------------------------------

    def allowed(self, kind: str, name: str, access: str) -> bool:
        """`access` (read, list, write) on `name` of a labeled kind (service, node, key,
        session, agent, event, query, or intention for a destination service)."""
        if access not in ACCESSES:
            raise ValueError(f"not an ACL access: {access!r}")
        table = self._tables.get(kind)
        if table is None:
            if kind not in LABELED_KINDS and kind != "intention":
                raise ValueError(f"not a labeled ACL resource: {kind!r}")
            return self._default_allow or self._manage
        if self._manage:
            return True
        level = table.lookup(name)
        return self._default_allow if level is None else access in _GRANTS[level]

    def allowed_global(self, kind: str, access: str) -> bool:
        """`access` (read or write) on an unlabeled kind: acl, operator, mesh, keyring,
        peering. mesh and peering follow operator when unset; acl never defaults."""
        if self._manage:
            return True
        if kind not in UNLABELED_KINDS:
            raise ValueError(f"not an unlabeled ACL resource: {kind!r}")
        level = self._globals.get(kind)
        if level is None and kind in ("mesh", "peering"):
            level = self._globals.get("operator")
        if level is None:
            return False if kind == "acl" else self._default_allow
        return access in _GRANTS[level]

    def intention_allowed(self, service: str, access: str) -> bool:
        """Reading or writing intentions whose destination is `service`; `*` is a
        wildcard destination (see the module docstring)."""
        if service == "*" and not self._manage:
            decided = self._intention_any if access == "read" else self._intention_all
            return self._default_allow if decided is None else decided
        return self.allowed("intention", service, access)

    def key_write_prefix(self, prefix: str) -> bool:
        """Consul's KeyWritePrefix (deleting a whole tree): the longest key_prefix rule
        at or above `prefix` (exact `key` rules do not count here) must be write, and no
        key or key_prefix rule whose name starts with `prefix` may be below write. With
        no prefix rule above and nothing beneath, the default policy decides."""
        if self._manage:
            return True
        keys = self._tables.get("key")
        if keys is None:
            return self._default_allow
        base = keys.longest_prefix(prefix)
        if base is not None and base != "write":
            return False
        beneath = self._key_not_write
        i = bisect.bisect_left(beneath, prefix)
        if i < len(beneath) and beneath[i].startswith(prefix):
            return False
        return self._default_allow if base is None else True

    def _wildcard_intentions(self) -> tuple[bool | None, bool | None]:
        table = self._tables.get("intention")
        if table is None:
            return None, None
        levels = list(table.levels())
        catch_all = table.prefix.get("")
        if any(lv != "deny" for lv in levels):
            any_read: bool | None = True
        else:
            any_read = False if catch_all is not None else None
        if any(lv != "write" for lv in levels):
            all_write: bool | None = False
        else:
            all_write = True if catch_all is not None else None
        return any_read, all_write

    # -- named checks, as the HTTP layer asks ---------------------------------------------

    def service_read(self, name: str) -> bool:
        return self.allowed("service", name, "read")

    def service_write(self, name: str) -> bool:
        return self.allowed("service", name, "write")

    def node_read(self, name: str) -> bool:
        return self.allowed("node", name, "read")

    def node_write(self, name: str) -> bool:
        return self.allowed("node", name, "write")

    def key_read(self, key: str) -> bool:
        return self.allowed("key", key, "read")

    def key_list(self, prefix: str) -> bool:
        """Listing keys (`?keys`, `?recurse`): needs list or write; read is not enough."""
        return self.allowed("key", prefix, "list")

    def key_write(self, key: str) -> bool:
        return self.allowed("key", key, "write")

    def session_read(self, node: str) -> bool:
        return self.allowed("session", node, "read")

    def session_write(self, node: str) -> bool:
        return self.allowed("session", node, "write")

    def agent_read(self, node: str) -> bool:
        return self.allowed("agent", node, "read")

    def agent_write(self, node: str) -> bool:
        return self.allowed("agent", node, "write")

    def event_read(self, name: str) -> bool:
        return self.allowed("event", name, "read")

    def event_write(self, name: str) -> bool:
        return self.allowed("event", name, "write")

    def query_read(self, name: str) -> bool:
        return self.allowed("query", name, "read")

    def query_write(self, name: str) -> bool:
        return self.allowed("query", name, "write")

    def intention_read(self, service: str) -> bool:
        return self.intention_allowed(service, "read")

    def intention_write(self, service: str) -> bool:
        return self.intention_allowed(service, "write")

    def operator_read(self) -> bool:
        return self.allowed_global("operator", "read")

    def operator_write(self) -> bool:
        return self.allowed_global("operator", "write")

    def acl_read(self) -> bool:
        return self.allowed_global("acl", "read")

    def acl_write(self) -> bool:
        return self.allowed_global("acl", "write")

    def snapshot(self) -> bool:
        """Saving or restoring a snapshot: Consul asks for acl write."""
        return self.allowed_global("acl", "write")

    def mesh_read(self) -> bool:
        return self.allowed_global("mesh", "read")

    def mesh_write(self) -> bool:
        return self.allowed_global("mesh", "write")

    def peering_read(self) -> bool:
        return self.allowed_global("peering", "read")

    def peering_write(self) -> bool:
        return self.allowed_global("peering", "write")

    def keyring_read(self) -> bool:
        return self.allowed_global("keyring", "read")

    def keyring_write(self) -> bool:
        return self.allowed_global("keyring", "write")


def denied_message(accessor_id: str, resource: str, access: str, name: str | None = None) -> str:
    """Consul's text (acl/errors.go PermissionDeniedError.Error): the name is wrapped in
    double quotes as is, without escaping, as Consul CE's ResourceDescriptor.ToString
    does; an empty or missing name leaves out the ` on ...` part."""
    who = f"token with AccessorID '{accessor_id}'" if accessor_id else "provided token"
    message = f"Permission denied: {who} lacks permission '{resource}:{access}'"
    if name:
        message += f' on "{name}"'
    return message


def permission_denied(accessor_id: str, resource: str, access: str,
                      name: str | None = None) -> PermissionDenied:
    """The exception to raise for a refused check (the HTTP layer answers 403)."""
    return PermissionDenied(denied_message(accessor_id, resource, access, name))
