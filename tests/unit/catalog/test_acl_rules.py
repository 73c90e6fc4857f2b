"""The ACL rules language: HCL and JSON give the same Rules, every refusal has its
one-line `Failed to parse ACL rules: ...` message, and the identity templates are
Consul's."""

from __future__ import annotations

import pytest

from mesh.catalog.acl_authz import Authorizer
from mesh.catalog.acl_rules import (
    MAX_RULES_BYTES,
    NO_RULES,
    Rule,
    Rules,
    node_identity_rules,
    parse_rules,
    service_identity_rules,
)
from mesh.catalog.errors import InvalidRequest

SAME = [
    (
        'service "web" { policy = "write" intentions = "read" }',
        '{"service": {"web": {"policy": "write", "intentions": "read"}}}',
        Rules(service=(Rule("web", "write", "read"),)),
    ),
    (
        'key_prefix "" { policy = "list" }\nkey "a/b" { policy = "deny" }',
        '{"key_prefix": {"": {"policy": "list"}}, "key": {"a/b": {"policy": "deny"}}}',
        Rules(key_prefix=(Rule("", "list"),), key=(Rule("a/b", "deny"),)),
    ),
    (
        'operator = "read"\nacl = "write"\nmesh = "write"\nkeyring = "read"\npeering = "deny"',
        '{"operator": "read", "acl": "write", "mesh": "write", "keyring": "read", "peering": "deny"}',
        Rules(operator="read", acl="write", mesh="write", keyring="read", peering="deny"),
    ),
    (
        'node "n1" { policy = "write" }\nnode_prefix "" { policy = "read" }\n'
        'session_prefix "" { policy = "write" }\nagent "n1" { policy = "read" }\n'
        'agent_prefix "x" { policy = "deny" }\nevent_prefix "" { policy = "read" }\n'
        'event "deploy" { policy = "write" }\nquery "q" { policy = "write" }\n'
        'query_prefix "" { policy = "read" }\nsession "n1" { policy = "deny" }\n'
        'service_prefix "" { policy = "read" intentions = "deny" }',
        '{"node": {"n1": {"policy": "write"}}, "node_prefix": {"": {"policy": "read"}},'
        ' "session_prefix": {"": {"policy": "write"}}, "agent": {"n1": {"policy": "read"}},'
        ' "agent_prefix": {"x": {"policy": "deny"}}, "event_prefix": {"": {"policy": "read"}},'
        ' "event": {"deploy": {"policy": "write"}}, "query": {"q": {"policy": "write"}},'
        ' "query_prefix": {"": {"policy": "read"}}, "session": {"n1": {"policy": "deny"}},'
        ' "service_prefix": {"": {"policy": "read", "intentions": "deny"}}}',
        Rules(node=(Rule("n1", "write"),), node_prefix=(Rule("", "read"),),
              session_prefix=(Rule("", "write"),), agent=(Rule("n1", "read"),),
              agent_prefix=(Rule("x", "deny"),), event_prefix=(Rule("", "read"),),
              event=(Rule("deploy", "write"),), query=(Rule("q", "write"),),
              query_prefix=(Rule("", "read"),), session=(Rule("n1", "deny"),),
              service_prefix=(Rule("", "read", "deny"),)),
    ),
    (  # several blocks of one kind, even for one name, are all kept, in order
        'service "a" { policy = "read" }\nservice "b" { policy = "write" }\nservice "a" { policy = "deny" }',
        '{"service": [{"a": {"policy": "read"}}, {"b": {"policy": "write"}}, {"a": {"policy": "deny"}}]}',
        Rules(service=(Rule("a", "read"), Rule("b", "write"), Rule("a", "deny"))),
    ),
    (  # levels are case-insensitive (Consul's AccessLevelFromString), kept lower case
        'service "a" { policy = "WRITE" intentions = "Read" }',
        '{"service": {"a": {"policy": "WRITE", "intentions": "Read"}}}',
        Rules(service=(Rule("a", "write", "read"),)),
    ),
    (  # names with quotes, backslashes, unicode: HCL escapes decoded like JSON's
        'service "a\\"b\\\\c\\u00e9" { policy = "read" }',
        '{"service": {"a\\"b\\\\c\\u00e9": {"policy": "read"}}}',
        Rules(service=(Rule('a"b\\cé', "read"),)),
    ),
    (  # comments, an empty unlabeled level (unset)
        '# team rules\nservice "a" {\n  policy = "read" // inline\n}\noperator = ""',
        '{"service": {"a": {"policy": "read"}}, "operator": ""}',
        Rules(service=(Rule("a", "read"),)),
    ),
]


@pytest.mark.parametrize(("hcl", "js", "expected"), SAME)
def test_hcl_and_json_parse_to_the_same_rules(hcl: str, js: str, expected: Rules) -> None:
    assert parse_rules(hcl) == expected
    assert parse_rules(js) == expected
    assert parse_rules("  \n" + js) == expected  # JSON is told by its first non-space `{`


def test_json_repeated_keys_keep_every_block() -> None:
    text = '{"service": {"a": {"policy": "read"}}, "service": {"b": {"policy": "write"}}}'
    assert parse_rules(text) == Rules(service=(Rule("a", "read"), Rule("b", "write")))


@pytest.mark.parametrize("text", ["", "   \n", "# nothing\n", "{}"])
def test_empty_rules(text: str) -> None:
    assert parse_rules(text) == NO_RULES
    assert parse_rules(text).is_empty()


BAD = [
    ('service "web" { policy = "nope" }', 'Invalid service policy: "nope" for "web"'),
    ('{"service": {"web": {"policy": "nope"}}}', 'Invalid service policy: "nope" for "web"'),
    ('service_prefix "" { policy = "list" }', 'Invalid service_prefix policy: "list" for ""'),
    ('service "a" { policy = "read" intentions = "list" }', 'Invalid service intentions policy: "list" for "a"'),
    ('service_prefix "a" { policy = "read" intentions = "x" }', 'Invalid service_prefix intentions policy: "x" for "a"'),
    ('node "n" { policy = "list" }', 'Invalid node policy: "list" for "n"'),
    ('node_prefix "" { policy = "all" }', 'Invalid node_prefix policy: "all" for ""'),
    ('key "k" { policy = "admin" }', 'Invalid key policy: "admin" for "k"'),
    ('session "n" { policy = "list" }', 'Invalid session policy: "list" for "n"'),
    ('agent_prefix "" { policy = "list" }', 'Invalid agent_prefix policy: "list" for ""'),
    ('event "e" { policy = "fire" }', 'Invalid event policy: "fire" for "e"'),
    ('query_prefix "" { policy = "run" }', 'Invalid query_prefix policy: "run" for ""'),
    ('operator = "list"', 'Invalid operator policy: "list"'),
    ('{"acl": "manage"}', 'Invalid acl policy: "manage"'),
    ('mesh = "nope"', 'Invalid mesh policy: "nope"'),
    ('peering = "nope"', 'Invalid peering policy: "nope"'),
    ('keyring = "list"', 'Invalid keyring policy: "list"'),
    ('{"operator": 3}', "Invalid operator policy: 3 (not a string)"),
    ('{"service": {"a": {"policy": true}}}', 'Invalid service policy: true (not a string) for "a"'),
    ('service "a" { policy = 3 }', 'Invalid service policy: 3 (not a string) for "a"'),
    ('service "a" {}', 'Invalid service policy: missing policy for "a"'),
    ('{"key": {"k": {}}}', 'Invalid key policy: missing policy for "k"'),
    ('service "a" { policy = "" }', 'Invalid service policy: "" for "a"'),
    ('servce "a" { policy = "read" }', 'unknown rule "servce"'),
    ('{"namespace": "x"}', 'unknown rule "namespace"'),
    ('key "a" { policy = "read" intentions = "read" }', 'unknown field "intentions" in key "a"'),
    ('service "a" { policy = "read" intenstions = "read" }', 'unknown field "intenstions" in service "a"'),
    ('service "a" "b" { policy = "read" }', 'service "a" takes one name, not two'),
    ('service { policy = "read" }', 'service must be a block with a name, e.g. service "name" { policy = "read" }'),
    ('service = "web"', 'service must be a block with a name, e.g. service "name" { policy = "read" }'),
    ('operator { policy = "read" }', 'operator takes a level, e.g. operator = "read"'),
    ('service "a" { policy = read }', "policy must be a quoted string, not read"),
    ('{"service": {"a": {"policy": "read", "policy": "write"}}}',
     'The argument "policy" for "a" was already set. Each argument can only be defined once'),
    ('{"operator": "read", "operator": "write"}',
     'The argument "operator" was already set. Each argument can only be defined once'),
    ('["service"]', "invalid HCL: "),
    ('{"service": ', "invalid JSON: "),
    ("[1]", "invalid HCL: "),
    ("service \"a\" { policy = \"read\"", "invalid HCL: "),
    ("{" * 9 + "}" * 9, "nested more than 8 levels"),
    ("[" * 60_000, "nested more than 8 levels"),
]


@pytest.mark.parametrize(("text", "message"), BAD)
def test_bad_rules_say_why(text: str, message: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        parse_rules(text)
    text_out = str(info.value)
    assert text_out.startswith("Failed to parse ACL rules: " + message)
    assert "\n" not in text_out


def test_brackets_inside_names_do_not_count_as_nesting() -> None:
    name = "{[(" * 10
    assert parse_rules(f'key "{name}" {{ policy = "read" }}') == Rules(key=(Rule(name, "read"),))


def test_rules_over_64_kib_are_refused() -> None:
    filler = "# " + "x" * (MAX_RULES_BYTES) + "\n"
    with pytest.raises(InvalidRequest, match="^Failed to parse ACL rules: rules are longer than 65536 bytes$"):
        parse_rules(filler + 'operator = "read"')
    near = "# " + "x" * (MAX_RULES_BYTES - 40) + '\noperator = "read"'
    assert parse_rules(near) == Rules(operator="read")


INTENTIONS = [
    ("write", "", "read"),
    ("read", "", "read"),
    ("deny", "", "deny"),
    ("deny", "write", "write"),
    ("write", "deny", "deny"),
    ("read", "write", "write"),
]


@pytest.mark.parametrize(("policy", "intentions", "effective"), INTENTIONS)
def test_intentions_default_from_the_policy(policy: str, intentions: str, effective: str) -> None:
    extra = f' intentions = "{intentions}"' if intentions else ""
    rules = parse_rules(f'service "web" {{ policy = "{policy}"{extra} }}')
    assert rules.service == (Rule("web", policy, intentions),)
    assert rules.service[0].intentions_level == effective
    authz = Authorizer.from_rules([rules], "deny")
    assert authz.intention_read("web") == (effective in ("read", "write"))
    assert authz.intention_write("web") == (effective == "write")


SERVICE_IDENTITY = """
service "web" { policy = "write" }
service "web-sidecar-proxy" { policy = "write" }
service_prefix "" { policy = "read" }
node_prefix "" { policy = "read" }
"""

NODE_IDENTITY = """
node "n1" { policy = "write" }
service_prefix "" { policy = "read" }
"""


def test_identity_templates_are_consuls() -> None:
    assert service_identity_rules("web") == parse_rules(SERVICE_IDENTITY)
    assert node_identity_rules("n1") == parse_rules(NODE_IDENTITY)


def test_identity_names_cannot_inject_rules() -> None:
    rules = service_identity_rules('x" { policy = "read" }\nacl = "write')
    assert rules.acl == ""
    assert rules.service[0].name == 'x" { policy = "read" }\nacl = "write'


SERVICE_IDENTITY_DECISIONS = [
    ("service", "web", "write", True),
    ("service", "web-sidecar-proxy", "write", True),
    ("service", "api", "read", True),
    ("service", "api", "write", False),
    ("service", "web-other", "write", False),
    ("node", "any-node", "read", True),
    ("node", "any-node", "write", False),
    ("key", "a", "read", False),
    ("intention", "web", "read", True),
    ("intention", "web", "write", False),
    ("intention", "api", "read", True),
]


@pytest.mark.parametrize(("kind", "name", "access", "expected"), SERVICE_IDENTITY_DECISIONS)
def test_service_identity_decisions(kind: str, name: str, access: str, expected: bool) -> None:
    authz = Authorizer.from_rules([service_identity_rules("web")], "deny")
    assert authz.allowed(kind, name, access) is expected


def test_node_identity_decisions() -> None:
    authz = Authorizer.from_rules([node_identity_rules("n1")], "deny")
    assert authz.node_write("n1") and not authz.node_write("n2") and not authz.node_read("n2")
    assert authz.service_read("anything") and not authz.service_write("anything")
