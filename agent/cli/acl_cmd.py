"""`mesh acl`: Consul's `consul acl` commands (bootstrap, set-agent-token, and the
token, policy and role groups in acl_token.py and acl_policy.py) over the agent's
/v1/acl and /v1/agent/token endpoints.

Output is Consul's: its `pretty` format by default, `-format=json` the API's JSON.
Every failure is one line on stderr worded as Consul's CLI words it (for example
`Failed to create new token: Unexpected response code: 403 (Permission denied: ...)`),
exit 1.
"""

from __future__ import annotations

import sys

from .acl_common import FORMAT_FLAG, Fail, attempt, check_format, emit, load_source
from .acl_format import token_text
from .acl_policy import run_policy, run_role
from .acl_token import run_token
from .flags import UsageError
from .flags import client_for as _client
from .flags import parse_flags as _parse

__all__ = ["run_acl"]

USAGE = "usage: mesh acl bootstrap|set-agent-token|token|policy|role ..."

# Consul's TYPE names; the agent also takes its older ones (agent_master, acl_token, ...)
_AGENT_TOKEN_PATHS = {"default": "default", "agent": "agent", "recovery": "agent_recovery",
                      "replication": "replication"}


async def _bootstrap(argv: list[str]) -> int:
    flags, args = _parse(argv, {**FORMAT_FLAG})
    fmt = check_format(flags)
    if args:
        # Consul's optional argument (a secret of one's choosing) has no endpoint here
        raise Fail("This command takes no arguments")
    async with _client(flags) as c:
        token = await attempt("Failed ACL bootstrapping", c.put("/v1/acl/bootstrap"))
    emit(fmt, token, token_text)
    return 0


async def _set_agent_token(argv: list[str]) -> int:
    flags, args = _parse(argv, {})
    if not args:
        raise Fail("Error! Missing TYPE and TOKEN arguments")
    if len(args) == 1:
        raise Fail("Error! Missing TOKEN argument" if args[0] in _AGENT_TOKEN_PATHS else
                   "Error! MISSING TYPE argument")
    if len(args) > 2:
        raise Fail(f"Error! Too many arguments: expected 2 got {len(args)}")
    kind, token = args[0], load_source(args[1]).strip()
    if kind not in _AGENT_TOKEN_PATHS:
        raise Fail("Unknown token type")
    async with _client(flags) as c:
        await attempt(f'Failed to set ACL token "{kind}"', c.put(f"/v1/agent/token/{_AGENT_TOKEN_PATHS[kind]}", {"Token": token}))
    print(f'ACL token "{kind}" set successfully')
    return 0


async def run_acl(argv: list[str]) -> int:
    groups = {"token": run_token, "policy": run_policy, "role": run_role, "bootstrap": _bootstrap,
              "set-agent-token": _set_agent_token}
    if not argv or argv[0] not in groups:
        raise UsageError(USAGE)
    try:
        return await groups[argv[0]](argv[1:])
    except Fail as exc:
        print(str(exc), file=sys.stderr)
        return 1
