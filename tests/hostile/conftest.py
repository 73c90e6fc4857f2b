"""Real `mesh agent` processes for replaying hostile input, on 127.0.0.1 with free ports."""

from __future__ import annotations

import json

import pytest

from tests.harness.cluster import dev_agent, retry

# A script check in the agent's own config file: allowed with -enable-local-script-checks.
# It prints 100,000 bytes (its marker last: the end is kept) while asking to keep 1,000,000: the agent's 4 KiB limit wins.
LOCAL_SCRIPT_CHECK = {
    "check": {
        "id": "local-script",
        "name": "local script",
        "args": ["/bin/sh", "-c", "head -c 100000 /dev/zero | tr '\\000' x; echo local-script-ran"],
        "interval": "1s",
        "output_max_size": 1000000,
    }
}


@pytest.fixture(scope="package")
def dev(tmp_path_factory):
    """A dev agent at debug level (so a traceback anywhere would show), with
    -enable-local-script-checks and one script check from a config file."""
    tmp = tmp_path_factory.mktemp("hostile-dev")
    config = tmp / "local.json"
    config.write_text(json.dumps(LOCAL_SCRIPT_CHECK))
    agent = dev_agent(tmp, extra=["-log-level", "debug", "-enable-local-script-checks", "-config-file", str(config)])
    try:
        retry(lambda: agent.get("/v1/catalog/service/consul"), 5)
        yield agent
    finally:
        agent.kill()
