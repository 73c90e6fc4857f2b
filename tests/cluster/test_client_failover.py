"""Clients never lose the cluster (issue 11): a client agent given one -retry-join
address keeps working when that server dies, restarts without its seeds, fails fast
with Consul's text when no server answers; servers are in the catalog within a second;
a client killed right after its start is failed by the leader."""

from __future__ import annotations

import json
import os
import time

import pytest

from tests.harness.cluster import Agent, Cluster, HTTPError, retry

pytestmark = pytest.mark.cluster

LIVENESS = 3.0


def _one_seed_client(cluster: Cluster, name: str, seed: Agent, extra: list[str] | None = None) -> Agent:
    """A client whose only -retry-join is `seed` (the way most people write it)."""
    agent = cluster.add_client(name, extra)
    args, out, skip = agent.args, [], False
    for a in args:
        if skip:
            skip = False
            continue
        if a == "-retry-join":
            skip = True
            continue
        out.append(a)
    agent.args = out + ["-retry-join", seed.rpc]
    agent.start()
    retry(lambda: agent.get("/v1/agent/self"), 15, 0.1, f"{name} up")
    return agent


@pytest.fixture
def cluster(tmp_path, request):
    c = Cluster(tmp_path, 3, extra_args=["-liveness-timeout", f"{LIVENESS}s"])
    try:
        yield c
    finally:
        rep = getattr(request.node, "rep_call", None)
        if rep is not None and rep.failed:
            print(c.logs())
        c.stop()


def test_servers_are_in_the_catalog_within_a_second_of_the_election(cluster):
    cluster.start()
    elected = time.monotonic()
    nodes = retry(lambda: len(cluster.agents[0].get("/v1/catalog/service/consul?stale")) == 3
                  and cluster.agents[0].get("/v1/catalog/service/consul?stale"), 5, 0.02, "3 consul services")
    assert time.monotonic() - elected < 1.5
    assert {n["Node"] for n in nodes} == {"s1", "s2", "s3"}
    for a in cluster.agents:
        checks = a.get(f"/v1/health/node/{a.name}?stale")
        assert any(c["CheckID"] == "serfHealth" and c["Status"] == "passing" for c in checks)


def test_client_survives_the_death_of_its_only_seed(cluster):
    cluster.start()
    seed = cluster.agents[0]
    client = _one_seed_client(cluster, "c1", seed)
    client.put("/v1/agent/service/register", {"Name": "before", "Port": 1})
    servers_file = os.path.join(client.data_dir, "servers.json")
    retry(lambda: os.path.exists(servers_file) and len(json.load(open(servers_file))) == 3, 10, 0.1,
          "the client learned all three servers")
    assert oct(os.stat(servers_file).st_mode & 0o777) == "0o600"

    seed.kill()
    cluster.wait_leader(among=cluster.live())
    started = time.monotonic()
    # writes and reads through the client keep working, without the seed
    client.put("/v1/agent/service/register", {"Name": "after", "Port": 2})
    retry(lambda: client.get("/v1/catalog/service/after"), 10, 0.1, "registered through the client")
    assert time.monotonic() - started < 10
    client.put("/v1/catalog/register", {"Node": "ext", "Address": "10.1.1.1"})
    assert client.get("/v1/catalog/node/ext")["Node"]["Address"] == "10.1.1.1"

    # restarted while its only seed is still down: it finds the cluster from servers.json
    client.kill()
    client.start()
    retry(lambda: client.get("/v1/catalog/service/after"), 15, 0.1, "restarted client reads through a learned server")
    client.put("/v1/catalog/register", {"Node": "ext2", "Address": "10.1.1.2"})


def test_no_reachable_server_fails_fast_with_consuls_text(cluster):
    cluster.start()
    client = cluster.start_client("c1")
    retry(lambda: client.get("/v1/catalog/nodes"), 10, 0.1, "client reads")
    for s in cluster.agents:
        s.kill()
    started = time.monotonic()
    with pytest.raises(HTTPError) as err:
        client.request("GET", "/v1/catalog/nodes", timeout=30)
    assert err.value.status == 500
    assert "No known Consul servers" in err.value.body
    assert time.monotonic() - started < 16


def test_a_client_killed_right_after_start_is_failed(tmp_path):
    """Repeatedly: servers and a client started together, the client killed within a
    second or two of registering a service: the service turns critical within the
    liveness timeout (plus the leader's one-second loop)."""
    for round_ in range(2):
        cluster = Cluster(tmp_path / f"round{round_}", 3, extra_args=["-liveness-timeout", f"{LIVENESS}s"])
        try:
            for agent in cluster.agents:
                agent.args = cluster._args(agent, cluster.agents, 3)
                agent.start()
            client = cluster.add_client(f"k{round_}", ["-ae-interval", "1s"])
            client.start()  # together with the servers
            retry(lambda c=client: c.put("/v1/agent/service/register", {"Name": "doomed", "Port": 7}) or True,
                  20, 0.1, "registered")
            leader = cluster.wait_leader()
            retry(lambda leader=leader: leader.get("/v1/catalog/service/doomed"), 10, 0.05, "in the catalog")
            client.kill()
            killed = time.monotonic()

            def critical(leader: Agent = leader) -> bool:
                entries = leader.get("/v1/health/service/doomed")
                return bool(entries) and all(
                    any(c["CheckID"] == "serfHealth" and c["Status"] == "critical" for c in e["Checks"])
                    for e in entries)

            retry(critical, LIVENESS + 5, 0.1, f"round {round_}: the killed client's service critical")
            assert time.monotonic() - killed < LIVENESS + 3
        except BaseException:
            print(cluster.logs())
            raise
        finally:
            cluster.stop()
