"""Consul's ACL rules language: a policy's `Rules` text, parsed and validated. Pure.

A rules text is HCL, or JSON when its first non-space character is `{`:

    service "web" { policy = "write"  intentions = "read" }
    key_prefix "" { policy = "list" }
    operator = "read"

    {"service": {"web": {"policy": "write"}}, "operator": "read"}

Labeled resources (`service`, `node`, `key`, `session`, `agent`, `event`, `query`, each
also as `<kind>_prefix`) hold one rule per block, every block kept: merging two rules for
the same name is the authorizer's job (catalog/acl_authz.py), with the precedence Consul
uses across policies. Unlabeled ones (`acl`, `operator`, `mesh`, `keyring`, `peering`)
hold one level; "" means unset. Levels are `deny`, `read`, `write`, and `list` for keys.

A service rule's `intentions` is kept as written ("" when omitted) because Consul merges
the written values and only then defaults a missing one from the merged policy
(`read` for read or write, else `deny`): see `Rule.intentions_level`.

Where we are stricter than Consul (whose HCL decoder ignores what it does not know): an
unknown resource, an unknown field in a block and a non-string level are refused, so a
typo (`intenstions`) is a 400 instead of a silently missing grant. Levels are matched
case-insensitively (as Consul's AccessLevelFromString does) and kept lower case.

Identity policies (a token's service or node identities) are Consul's templates, built
here as Rules directly so that no name can inject rules.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from typing import Any, NamedTuple

from .errors import InvalidRequest

__all__ = [
    "Rule",
    "Rules",
    "NO_RULES",
    "LABELED_KINDS",
    "UNLABELED_KINDS",
    "LEVELS",
    "MAX_RULES_BYTES",
    "MAX_NESTING",
    "parse_rules",
    "service_identity_rules",
    "node_identity_rules",
    "intentions_default",
]

LABELED_KINDS = ("service", "node", "key", "session", "agent", "event", "query")
UNLABELED_KINDS = ("acl", "operator", "mesh", "keyring", "peering")
LEVELS = ("deny", "read", "list", "write")
MAX_RULES_BYTES = 64 * 1024
MAX_NESTING = 8  # brackets; the deepest legitimate form (JSON with list bodies) needs 5

_PREFIX = "Failed to parse ACL rules: "
_BLOCKS = frozenset(LABELED_KINDS) | frozenset(f"{k}_prefix" for k in LABELED_KINDS)


class Rule(NamedTuple):
    """One labeled rule: `name` is the exact name or the prefix, `access` its level;
    `intentions` only for service rules, "" when the rule did not say."""

    name: str
    access: str
    intentions: str = ""

    @property
    def intentions_level(self) -> str:
        """The intentions level in effect for this rule alone (Consul's default)."""
        return self.intentions or intentions_default(self.access)


def intentions_default(policy: str) -> str:
    """Consul (acl/policy_authorizer.go loadRules): a service rule without `intentions`
    may read intentions when it may read the service, else nothing."""
    return "read" if policy in ("read", "write") else "deny"


@dataclass(frozen=True, slots=True)
class Rules:
    """One policy's rules, in the order written. Compare with ==: the HCL and JSON forms
    of the same rules are equal."""

    service: tuple[Rule, ...] = ()
    service_prefix: tuple[Rule, ...] = ()
    node: tuple[Rule, ...] = ()
    node_prefix: tuple[Rule, ...] = ()
    key: tuple[Rule, ...] = ()
    key_prefix: tuple[Rule, ...] = ()
    session: tuple[Rule, ...] = ()
    session_prefix: tuple[Rule, ...] = ()
    agent: tuple[Rule, ...] = ()
    agent_prefix: tuple[Rule, ...] = ()
    event: tuple[Rule, ...] = ()
    event_prefix: tuple[Rule, ...] = ()
    query: tuple[Rule, ...] = ()
    query_prefix: tuple[Rule, ...] = ()
    acl: str = ""
    operator: str = ""
    mesh: str = ""
    keyring: str = ""
    peering: str = ""

    def labeled(self, kind: str, prefix: bool) -> tuple[Rule, ...]:
        """The exact (prefix=False) or prefix rules of a labeled kind."""
        if kind not in LABELED_KINDS:
            raise ValueError(f"not a labeled ACL resource: {kind!r}")
        return getattr(self, f"{kind}_prefix" if prefix else kind)

    def unlabeled(self, kind: str) -> str:
        if kind not in UNLABELED_KINDS:
            raise ValueError(f"not an unlabeled ACL resource: {kind!r}")
        return getattr(self, kind)

    def is_empty(self) -> bool:
        return self == NO_RULES


NO_RULES = Rules()
assert {f.name for f in fields(Rules)} == _BLOCKS | set(UNLABELED_KINDS)


def _fail(reason: str) -> InvalidRequest:
    return InvalidRequest(_PREFIX + reason)


def _quote(text: str) -> str:
    """A name quoted for an error message, on one line."""
    return json.dumps(text, ensure_ascii=False)


def _too_deep(text: str, limit: int) -> bool:
    """A lexical check before parsing (the HCL parser is slow on deep nesting): brackets
    outside double-quoted strings, nested more than `limit`."""
    depth, in_string, escaped = 0, False, False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{(":
            depth += 1
            if depth > limit:
                return True
        elif ch in "]})":
            depth -= 1
    return False


class _Dup(list):
    """Values of a key repeated in one JSON object (blocks repeat; levels must not)."""


def _json_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            prev = out[k]
            out[k] = _Dup([*prev, v]) if isinstance(prev, _Dup) else _Dup([prev, v])
        else:
            out[k] = v
    return out


def _hcl_string(raw: str, what: str) -> str:
    """python-hcl2 keeps a string's quotes and escapes; a bare word is an expression."""
    if not (len(raw) >= 2 and raw[0] == raw[-1] == '"'):
        raise _fail(f"{what} must be a quoted string, not {raw}")
    try:
        return json.loads(raw, strict=False)
    except ValueError:
        raise _fail(f"{what} has an invalid escape: {raw}") from None


def _hcl_unwrap(value: Any, key: str = "a value") -> Any:
    """python-hcl2's output as plain data: comments and block markers dropped, labels
    and strings unquoted; non-string scalars are left for validation to refuse."""
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if k.startswith("__") and k.endswith("__"):
                continue
            key = _hcl_string(k, "a label") if k.startswith('"') else k
            out[key] = _hcl_unwrap(v, key)
        return out
    if isinstance(value, list):
        return [_hcl_unwrap(v, key) for v in value]
    if isinstance(value, str):
        return _hcl_string(value, key)
    return value


def _load(text: str) -> dict[str, Any]:
    if len(text.encode("utf-8", "surrogatepass")) > MAX_RULES_BYTES:
        raise _fail(f"rules are longer than {MAX_RULES_BYTES} bytes")
    if _too_deep(text, MAX_NESTING):
        raise _fail(f"nested more than {MAX_NESTING} levels")
    if text.lstrip().startswith("{"):
        try:
            data = json.loads(text, object_pairs_hook=_json_pairs)
        except RecursionError:
            raise _fail(f"nested more than {MAX_NESTING} levels") from None
        except ValueError as exc:
            raise _fail(f"invalid JSON: {exc}") from None
    else:
        import hcl2  # imported lazily: only rule parsing needs it

        try:
            data = hcl2.loads(text)
        except RecursionError:
            raise _fail(f"nested more than {MAX_NESTING} levels") from None
        except Exception as exc:  # hcl2 raises lark's many exception types
            lines = str(exc).strip().splitlines()
            raise _fail(f"invalid HCL: {lines[0] if lines else type(exc).__name__}") from None
        data = _hcl_unwrap(data)
    if not isinstance(data, dict):
        raise _fail("rules must be an object")
    return data


def _level(value: Any, what: str, where: str, allow_list: bool, allow_empty: bool) -> str:
    """A level, lower-cased; `what` names it as Consul does ("service policy", "service
    intentions policy"), `where` is "" or ` for "<name>"`."""
    if isinstance(value, _Dup):
        field = what.split()[0] if not where else ("intentions" if "intentions" in what else "policy")
        raise _fail(f"The argument {_quote(field)}{where} was already set. "
                    "Each argument can only be defined once")
    if not isinstance(value, str):
        shown = json.dumps(value, default=str)
        shown = shown if len(shown) <= 40 else shown[:37] + "..."
        raise _fail(f"Invalid {what}: {shown} (not a string){where}")
    level = value.lower()
    if level == "" and allow_empty:
        return ""
    if level not in LEVELS or (level == "list" and not allow_list):
        raise _fail(f"Invalid {what}: {_quote(value)}{where}")
    return level


def _bodies(value: Any, block: str) -> list[tuple[str, dict[str, Any]]]:
    """A labeled block's value as (label, body) pairs. Accepted shapes: {label: body},
    [{label: body}, ...], and a body given as a list of bodies (HCL1's JSON form)."""
    items = value if isinstance(value, list) else [value]
    out = []
    for item in items:
        if not isinstance(item, dict):
            raise _fail(f"{block} must be a block with a name, e.g. {block} \"name\" {{ policy = \"read\" }}")
        for label, body in item.items():
            for one in body if isinstance(body, list) else [body]:
                if not isinstance(one, dict):
                    raise _fail(f"{block} must be a block with a name, e.g. {block} \"name\" {{ policy = \"read\" }}")
                out.append((label, one))
    return out


def _rule(block: str, label: str, body: dict[str, Any]) -> Rule:
    kind = block.removesuffix("_prefix")
    allowed = ("policy", "intentions") if kind == "service" else ("policy",)
    for key in body:
        if key not in allowed:
            if isinstance(body[key], dict):  # a second label: service "a" "b" { ... }
                raise _fail(f"{block} {_quote(label)} takes one name, not two")
            raise _fail(f"unknown field {_quote(key)} in {block} {_quote(label)}")
    if "policy" not in body:
        raise _fail(f"Invalid {block} policy: missing policy for {_quote(label)}")
    where = f" for {_quote(label)}"
    policy = _level(body["policy"], f"{block} policy", where, kind == "key", allow_empty=False)
    intentions = ""
    if "intentions" in body:
        intentions = _level(body["intentions"], f"{block} intentions policy", where, False, allow_empty=True)
    return Rule(label, policy, intentions)


def parse_rules(text: str) -> Rules:
    """A policy's rules text (HCL, or JSON when it starts with `{`) as Rules; "" is no
    rules. InvalidRequest `Failed to parse ACL rules: ...` for anything Consul refuses,
    and for what it would silently ignore (unknown resources and fields)."""
    if text == "":
        return NO_RULES
    data = _load(text)
    labeled: dict[str, list[Rule]] = {}
    unlabeled: dict[str, str] = {}
    for key, value in data.items():
        if key in _BLOCKS:
            for label, body in _bodies(value, key):
                labeled.setdefault(key, []).append(_rule(key, label, body))
        elif key in UNLABELED_KINDS:
            if isinstance(value, list | dict) and not isinstance(value, _Dup):
                raise _fail(f"{key} takes a level, e.g. {key} = \"read\"")
            unlabeled[key] = _level(value, f"{key} policy", "", False, allow_empty=True)
        else:
            raise _fail(f"unknown rule {_quote(key)}")
    return Rules(**{k: tuple(v) for k, v in labeled.items()}, **unlabeled)


def service_identity_rules(name: str) -> Rules:
    """Consul's service identity template (agent/structs/acl_ce.go):

        service "<name>" { policy = "write" }
        service "<name>-sidecar-proxy" { policy = "write" }
        service_prefix "" { policy = "read" }
        node_prefix "" { policy = "read" }
    """
    return Rules(
        service=(Rule(name, "write"), Rule(f"{name}-sidecar-proxy", "write")),
        service_prefix=(Rule("", "read"),),
        node_prefix=(Rule("", "read"),),
    )


def node_identity_rules(node: str) -> Rules:
    """Consul's node identity template (agent/structs/acl_ce.go): what an agent needs for
    itself, registering its node and reading the services on it.

        node "<node>" { policy = "write" }
        service_prefix "" { policy = "read" }
    """
    return Rules(node=(Rule(node, "write"),), service_prefix=(Rule("", "read"),))
