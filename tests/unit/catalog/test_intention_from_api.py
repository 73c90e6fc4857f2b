"""intention_from_api reads back what Intention.to_api() rendered (the sidecar proxy
keeps its own copy of the intentions it gets over HTTP)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mesh.catalog.errors import InvalidRequest
from mesh.catalog.intentions import Intention, intention_from_api, parse_intention
from mesh.catalog.structs import evolve

NAMES = st.sampled_from(["*", "web", "db", "api.v2", "a-b_c"])
PERMISSIONS = st.lists(st.fixed_dictionaries({
    "Action": st.sampled_from(["allow", "deny"]),
    "HTTP": st.sampled_from([{"PathExact": "/a"}, {"PathPrefix": "/admin", "Methods": ["post"]},
                             {"PathRegex": "^/v[0-9]+/", "Header": [{"Name": "x-user", "Present": True}]}]),
}), max_size=2)


@given(src=NAMES, dst=NAMES, action=st.sampled_from(["allow", "deny"]), permissions=PERMISSIONS,
       description=st.text(max_size=20), meta=st.dictionaries(st.sampled_from(["team", "ticket"]), st.text(max_size=8)),
       create=st.integers(0, 2**63 - 1), modify=st.integers(0, 2**63 - 1))
def test_round_trip(src, dst, action, permissions, description, meta, create, modify):
    body = {"SourceName": src, "DestinationName": dst, "Description": description, "Meta": meta}
    body.update({"Permissions": permissions} if permissions else {"Action": action})
    row = evolve(parse_intention(body), id="a0b1c2d3-0000-4000-8000-000000000001",
                 created_at="2024-05-01T10:00:00.123456Z", updated_at="2024-05-02T10:00:00Z",
                 create_index=create, modify_index=modify)
    assert intention_from_api(row.to_api()) == row


def test_snake_case_and_unknown_fields_are_accepted():
    got = intention_from_api({"source_name": "web", "destination_name": "db", "action": "allow", "id": "x",
                              "modify_index": 7, "SomethingNew": {"a": 1}})
    assert got == Intention(id="x", source_name="web", destination_name="db", action="allow", precedence=9,
                            modify_index=7)


@pytest.mark.parametrize("body, message", [
    ("not an object", "JSON object"),
    ({"SourceName": "web", "DestinationName": "db", "Action": "allow", "ModifyIndex": "7"}, "ModifyIndex"),
    ({"SourceName": "web", "DestinationName": "db", "Action": "allow", "CreateIndex": -1}, "CreateIndex"),
    ({"SourceName": "web", "DestinationName": "db", "Action": "perhaps"}, "Action"),
])
def test_malformed_rows_are_refused_with_the_field(body, message):
    with pytest.raises(InvalidRequest, match=message):
        intention_from_api(body)
