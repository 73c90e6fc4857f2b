"""The proxy supervisor's shell with real processes: a fake proxy command
(tests/harness/fake_proxy.py) stands in for `mesh connect proxy`. Every wait is
bounded; every process is cleaned up by its recorded pid."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from mesh.agent.proxies.files import PidFile, ProxyFiles
from mesh.agent.proxies.plan import Policy, State, backoff_delay
from mesh.agent.proxies.procfs import boot_id, read_proc
from mesh.agent.proxies.readiness import ReadyReport
from mesh.agent.proxies.supervisor import ProxySupervisor, SidecarInfo, SupervisorSettings

FAKE = str(Path(__file__).resolve().parents[1] / "harness" / "fake_proxy.py")
P = "web-sidecar-proxy"
POLICY = Policy(initial_backoff=0.3, max_backoff=1.2, reset_after=30.0, drain_timeout=1.0)


async def until(pred: Callable[[], object], timeout: float = 5.0, what: str = "") -> object:
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or pred}")
        await asyncio.sleep(0.02)


def exists(path: str) -> bool:
    return os.path.exists(path)


def private_dir(path: str) -> bool:
    return os.path.isdir(path) and (os.stat(path).st_mode & 0o777) == 0o700


def alive(pid: int) -> bool:
    info = read_proc(pid)
    return info is not None and not info.gone


class Harness:
    def __init__(self, tmp: Path) -> None:
        self.markers = tmp / "markers"
        self.markers.mkdir()
        self.directory = str(tmp / "data" / "proxies")
        self.wanted: dict[str, SidecarInfo] = {}
        self.supervisors: list[ProxySupervisor] = []
        self.others: list[subprocess.Popen[bytes]] = []

    def command(self, parent_id: str) -> list[str]:
        return [sys.executable, FAKE, str(self.markers), "connect", "proxy", "-sidecar-for", parent_id]

    def make(self, **overrides: object) -> ProxySupervisor:
        options: dict[str, object] = {"directory": self.directory, "policy": POLICY, "tick": 0.05,
                                      "command": self.command}
        options.update(overrides)
        sup = ProxySupervisor(SupervisorSettings(**options), lambda: self.wanted)  # type: ignore[arg-type]
        self.supervisors.append(sup)
        return sup

    def started(self) -> list[dict[str, object]]:
        """Every fake proxy that has started, oldest first."""
        out = [json.loads(p.read_text()) for p in self.markers.glob("*.json")]
        return sorted(out, key=lambda m: os.stat(self.markers / f"{m['pid']}.json").st_mtime_ns)

    def pids(self) -> list[int]:
        return [int(m["pid"]) for m in self.started()]  # type: ignore[call-overload]

    def terminated(self, pid: int) -> bool:
        return (self.markers / f"{pid}.term").exists()

    def cleanup(self) -> None:
        for pid in self.pids():
            info = read_proc(pid)
            if info is not None and FAKE in info.cmdline:  # only what this test started
                os.kill(pid, signal.SIGKILL)
        for proc in self.others:
            proc.kill()
            proc.wait(5)


@pytest.fixture
async def h(tmp_path):
    harness = Harness(tmp_path)
    yield harness
    for sup in harness.supervisors:
        await sup.detach()
    harness.cleanup()


async def test_a_registered_sidecar_gets_a_proxy_with_its_environment(h, monkeypatch):
    monkeypatch.setenv("MESH_HTTP_ADDR", "10.9.9.9:1")  # would point the proxy at another agent
    monkeypatch.setenv("CONSUL_HTTP_TOKEN", "the-operators-own")
    sup = h.make(default_token="agent-default")
    await sup.start("127.0.0.1:8599")
    assert sup.describe() == {}
    h.wanted[P] = SidecarInfo("web", token="sidecar-token")
    h.wanted["db-sidecar-proxy"] = SidecarInfo("db")
    sup.wake()
    await until(lambda: len(h.started()) == 2, what="two proxies")
    by_parent = {m["argv"][-1]: m for m in h.started()}
    web, db = by_parent["web"], by_parent["db"]
    assert web["argv"] == ["connect", "proxy", "-sidecar-for", "web"]
    assert web["env"] == {"CONSUL_HTTP_ADDR": "127.0.0.1:8599", "CONSUL_HTTP_TOKEN": "sidecar-token",
                          "CONNECT_SIDECAR_FOR": "web", "MESH_PROXY_SUPERVISED": "1", "MESH_HTTP_ADDR": None,
                          "CONNECT_PROXY_ID": None}
    assert db["env"]["CONSUL_HTTP_TOKEN"] == "agent-default"
    assert web["sid"] == web["pid"] == web["pgid"]  # its own session: the agent's terminal and death leave it be
    assert web["stdin_tty"] is False
    files = ProxyFiles(h.directory)
    record = dict(files.pidfiles())[files.pid_path(P)]
    assert record is not None and (record.pid, record.parent_id, record.boot_id) == (web["pid"], "web", boot_id())
    assert record.start_time == read_proc(web["pid"]).start_time
    await until(lambda: f"fake proxy {web['pid']} started" in Path(files.log_path(P)).read_text(), what="log")
    entry = sup.describe()[P]
    assert entry["Supervised"] and entry["PID"] == web["pid"] and entry["State"] == "starting"
    assert entry["DestinationServiceID"] == "web" and entry["LogFile"] == files.log_path(P)
    assert entry["Restarts"] == 0 and entry["LastExit"] is None and not entry["Adopted"]
    sup.report_ready(P, ReadyReport(pid=web["pid"], public="127.0.0.1:21000", config_age=0.2))
    entry = sup.describe()[P]
    assert entry["State"] == "ready" and entry["Listeners"] == {"Public": "127.0.0.1:21000", "Upstreams": {}}
    assert entry["ConfigAge"] == 0.2 and entry["ReportedAt"]


async def test_no_token_anywhere_leaves_the_variable_unset(h, monkeypatch):
    monkeypatch.setenv("CONSUL_HTTP_TOKEN", "the-operators-own")
    sup = h.make()
    h.wanted[P] = SidecarInfo("web")
    await sup.start("[::1]:8500")
    await until(lambda: h.started(), what="a proxy")
    assert h.started()[0]["env"]["CONSUL_HTTP_TOKEN"] is None
    assert h.started()[0]["env"]["CONSUL_HTTP_ADDR"] == "[::1]:8500"


async def test_a_killed_proxy_is_restarted_with_growing_backoff(h):
    sup = h.make()
    h.wanted[P] = SidecarInfo("web")
    await sup.start("127.0.0.1:8500")
    first = (await until(h.pids, what="first start"))[0]
    os.kill(first, signal.SIGKILL)
    await until(lambda: sup.describe()[P]["State"] == "backoff", what="backoff")
    entry = sup.describe()[P]
    assert entry["PID"] == 0 and entry["LastExit"]["Signal"] == "SIGKILL" and entry["LastExit"]["Code"] is None
    assert 0 < entry["RestartIn"] <= 0.3
    assert not exists(ProxyFiles(h.directory).pid_path(P))  # a dead process keeps no pidfile
    await until(lambda: len(h.pids()) == 2, what="restart")
    second = h.pids()[1]
    assert sup.describe()[P]["Restarts"] == 1 and sup.describe()[P]["PID"] == second
    os.kill(second, signal.SIGKILL)
    await until(lambda: sup.describe()[P]["State"] == "backoff", what="second backoff")
    record = sup._procs[P]
    assert record.failures == 2 and backoff_delay(2, POLICY) == 0.6
    assert record.restart_at - record.last_exit.at == pytest.approx(0.6)
    await until(lambda: len(h.pids()) == 3, what="second restart")
    assert sup.describe()[P]["Restarts"] == 2


async def test_deregistration_drains_and_stops_the_proxy(h):
    sup = h.make()
    h.wanted[P] = SidecarInfo("web")
    await sup.start("127.0.0.1:8500")
    pid = (await until(h.pids, what="start"))[0]
    del h.wanted[P]
    sup.wake()
    await until(lambda: sup.describe() == {}, timeout=3, what="stopped")
    assert h.terminated(pid)  # SIGTERM, and it had time to finish its drain
    assert not alive(pid)
    assert ProxyFiles(h.directory).pidfiles() == []
    await asyncio.sleep(0.3)
    assert h.pids() == [pid]  # not started again


async def test_a_proxy_that_ignores_sigterm_is_killed_after_the_drain_timeout(h):
    (h.markers / "ignore-term").touch()
    sup = h.make()
    h.wanted[P] = SidecarInfo("web")
    await sup.start("127.0.0.1:8500")
    pid = (await until(h.pids, what="start"))[0]
    await asyncio.sleep(0.2)  # let it install its SIG_IGN
    del h.wanted[P]
    sup.wake()
    await until(lambda: sup.describe().get(P, {}).get("State") == "stopping", what="stopping")
    stopped_at = time.monotonic()
    await until(lambda: not alive(pid), timeout=4, what="killed")
    assert time.monotonic() - stopped_at >= POLICY.drain_timeout - 0.1
    assert not h.terminated(pid)
    await until(lambda: sup.describe() == {}, what="forgotten")


async def test_a_new_agent_adopts_the_proxies_of_a_crashed_one(h):
    first = h.make()
    h.wanted[P] = SidecarInfo("web")
    await first.start("127.0.0.1:8500")
    pid = (await until(h.pids, what="start"))[0]
    await first.detach()  # the agent died: nothing stopped, pidfile left
    assert alive(pid)
    second = h.make()
    await second.start("127.0.0.1:8500")
    entry = second.describe()[P]
    assert (entry["PID"], entry["Adopted"], entry["State"]) == (pid, True, "running")
    await asyncio.sleep(0.4)
    assert h.pids() == [pid]  # no duplicate
    second.report_ready(P, ReadyReport(pid=pid))
    assert second.describe()[P]["State"] == "ready"
    # not our child: its death is seen through /proc, and it is replaced
    os.kill(pid, signal.SIGKILL)
    await until(lambda: len(h.pids()) == 2, what="replacement")
    entry = second.describe()[P]
    assert entry["Adopted"] is False and entry["Restarts"] == 1 and entry["PID"] == h.pids()[1]
    assert entry["LastExit"]["Code"] is None and "gone" in entry["LastExit"]["Reason"]
    await second.stop()
    assert h.terminated(h.pids()[1])


async def test_an_adopted_proxy_is_stopped_when_its_sidecar_is_gone(h):
    first = h.make()
    h.wanted[P] = SidecarInfo("web")
    await first.start("127.0.0.1:8500")
    pid = (await until(h.pids, what="start"))[0]
    await first.detach()
    h.wanted.clear()  # deregistered while the agent was down
    second = h.make()
    await second.start("127.0.0.1:8500")
    await until(lambda: not alive(pid), timeout=3, what="adopted proxy stopped")
    assert h.terminated(pid)
    await until(lambda: second.describe() == {}, what="forgotten")


def leave_stale_pidfiles(h: Harness) -> subprocess.Popen[bytes]:
    """Pidfiles of a dead pid, of a live process that is no proxy, of a live proxy
    whose start time differs (its pid was reused), and one that is not JSON. Returns
    the live bystander, which must never be signalled."""
    files = ProxyFiles(h.directory)
    files.ensure_dir()
    dead = subprocess.Popen(["true"])
    dead.wait(5)
    bystander = subprocess.Popen(["sleep", "30"])
    h.others.append(bystander)
    me = read_proc(bystander.pid)
    assert me is not None
    files.write_pidfile(PidFile("dead-sidecar-proxy", "dead", dead.pid, 1, boot_id(), 0.0))
    files.write_pidfile(PidFile("other-sidecar-proxy", "other", bystander.pid, me.start_time, boot_id(), 0.0))
    files.write_pidfile(PidFile(P, "web", bystander.pid, me.start_time + 1, boot_id(), 0.0))
    Path(h.directory, "garbage.pid").write_text("{not json")
    return bystander


async def test_stale_pidfiles_are_removed_and_their_pids_left_alone(h):
    files = ProxyFiles(h.directory)
    bystander = leave_stale_pidfiles(h)
    h.wanted[P] = SidecarInfo("web")
    sup = h.make()
    await sup.start("127.0.0.1:8500")
    pid = (await until(h.pids, what="a fresh proxy"))[0]
    assert bystander.poll() is None  # never signalled
    assert sup.describe()[P]["Adopted"] is False and sup.describe()[P]["PID"] == pid
    assert set(sup.describe()) == {P}
    assert [r.proxy_id for _, r in files.pidfiles()] == [P]


async def test_supervision_off_starts_nothing_but_still_shows_reports(h):
    sup = h.make(enabled=False)
    h.wanted[P] = SidecarInfo("web")
    await sup.start("127.0.0.1:8500")
    sup.wake()
    await asyncio.sleep(0.3)
    assert h.pids() == [] and not exists(h.directory)
    entry = sup.describe()[P]
    assert (entry["Supervised"], entry["State"], entry["PID"], entry["LogFile"]) == (False, "unsupervised", 0, "")
    sup.report_ready(P, ReadyReport(pid=31337, public="127.0.0.1:21000"))
    entry = sup.describe()[P]
    assert (entry["State"], entry["PID"]) == ("ready", 31337)
    await sup.stop()


async def test_a_report_from_another_process_is_rejected(h):
    from mesh.agent.proxies.supervisor import ReportRejected

    sup = h.make()
    h.wanted[P] = SidecarInfo("web")
    await sup.start("127.0.0.1:8500")
    pid = (await until(h.pids, what="start"))[0]
    with pytest.raises(ReportRejected, match=f"pid {pid}"):
        sup.report_ready(P, ReadyReport(pid=pid + 1))
    assert sup.describe()[P]["State"] == "starting"


async def test_graceful_stop_drains_every_proxy_and_a_temporary_dir_is_removed(h):
    sup = h.make(directory="")  # -dev: no data-dir
    h.wanted[P] = SidecarInfo("web")
    h.wanted["db-sidecar-proxy"] = SidecarInfo("db")
    await sup.start("127.0.0.1:8500")
    directory = sup.directory
    assert directory and private_dir(directory)
    pids = await until(lambda: len(h.pids()) == 2 and h.pids(), what="two proxies")
    started = time.monotonic()
    await sup.stop()
    assert time.monotonic() - started < POLICY.drain_timeout + 1  # both at once, each drained in 0.2 s
    for pid in pids:
        assert h.terminated(pid) and not alive(pid)
    assert not exists(directory)


async def test_a_command_that_cannot_start_backs_off(h):
    sup = h.make(command=lambda parent: ["/nonexistent/mesh", "connect", "proxy", "-sidecar-for", parent])
    h.wanted[P] = SidecarInfo("web")
    await sup.start("127.0.0.1:8500")
    await until(lambda: sup.describe()[P]["State"] == "backoff", what="backoff")
    last = sup.describe()[P]["LastExit"]
    assert "launch failed" in last["Reason"] and last["Code"] is None
    assert State.BACKOFF == sup._procs[P].state
