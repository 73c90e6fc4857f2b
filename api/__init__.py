"""mesh.api: the client of the agent's HTTP API, for the CLI and long-running programs.

    config    resolve(): address and token from flags and the environment (only here)
    client    Client (one aiohttp session, bounded pool, size-limited answers),
              Result, blocking_get with a wait + wait/16 + margin deadline
    errors    APIError (.status, .message) > DecodeError
    types     typed, validated answers (AgentService, Leaf, CARoots, ConnectEndpoint,
              IntentionMatch); pure
    agent     AgentAPI: the typed calls a sidecar proxy makes
    watch     Watch: the one blocking-query loop (index or hash), backoff and staleness
    testing   FakeAgent for tests (builders: the agent's JSON shapes); never imported by
              the product

Imports mesh.catalog only (DESIGN.md; tests/unit/test_architecture.py).
"""
