"""`mesh kv` and `mesh lock` against a real dev agent: Consul's output, exit codes and
one-line errors; locks and semaphores between real processes. Every wait is bounded and
every process this file starts is stopped by its PID.

`mesh kv` runs in this process (the CLI's `main`, its stdout, stderr and stdin bytes
captured): half a second of interpreter start per call would be most of this file's
time. One test runs the installed command as a process, stdin included; `mesh lock`
always runs as a process (signals, process groups)."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.parse

import pytest

from tests.harness.cli import run_cli
from tests.harness.cluster import HTTPError, retry

LOCK_FLAG = 3304740253564472344


def mesh_process(dev, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mesh.agent.cli.main", *args], capture_output=True, text=True,
                          timeout=60, cwd="/", input=stdin, env={**os.environ, "CONSUL_HTTP_ADDR": dev.http})


def mesh(dev, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """`mesh ARGS` against `dev`, in this process (tests/harness/cli.py)."""
    return run_cli(list(args), {"CONSUL_HTTP_ADDR": dev.http}, stdin)


def ok(out: subprocess.CompletedProcess[str]) -> str:
    assert out.returncode == 0, (out.stdout, out.stderr)
    return out.stdout


def fails(out: subprocess.CompletedProcess[str], message: str) -> None:
    assert out.returncode == 1, (out.stdout, out.stderr)
    assert out.stderr.strip() == message, out.stderr
    assert "Traceback" not in out.stderr


def kv(dev, key: str, **params: str):
    query = urllib.parse.urlencode(params)
    try:
        return dev.get(f"/v1/kv/{key}" + (f"?{query}" if query else ""))
    except HTTPError as exc:
        if exc.status == 404:
            return None
        raise


# ---------------------------------------------------------------------------- kv


def test_put_and_get(dev, tmp_path):
    assert ok(mesh(dev, "kv", "put", "t1/plain", "hello")) == "Success! Data written to: t1/plain\n"
    assert ok(mesh(dev, "kv", "get", "t1/plain")) == "hello\n"
    assert ok(mesh(dev, "kv", "get", "/t1/plain")) == "hello\n"  # a leading slash is dropped, as consul does
    ok(mesh(dev, "kv", "put", "t1/empty"))
    assert ok(mesh(dev, "kv", "get", "t1/empty")) == "\n"
    data = tmp_path / "blob"
    data.write_bytes(b"line1\nline2")
    ok(mesh(dev, "kv", "put", "t1/file", f"@{data}"))
    assert ok(mesh(dev, "kv", "get", "t1/file")) == "line1\nline2\n"
    ok(mesh_process(dev, "kv", "put", "t1/stdin", "-", stdin="from stdin"))  # the installed command, a process
    assert ok(mesh_process(dev, "kv", "get", "t1/stdin")) == "from stdin\n"
    ok(mesh(dev, "kv", "put", "t1/stdin2", "-", stdin="in process"))
    assert ok(mesh(dev, "kv", "get", "t1/stdin2")) == "in process\n"
    ok(mesh(dev, "kv", "put", "t1/dash", "-x"))  # `-` followed by more is the value itself
    assert ok(mesh(dev, "kv", "get", "t1/dash")) == "-x\n"
    ok(mesh(dev, "kv", "put", "-base64", "t1/b64", base64.b64encode(b"decoded").decode()))
    assert ok(mesh(dev, "kv", "get", "t1/b64")) == "decoded\n"
    assert ok(mesh(dev, "kv", "get", "-base64", "t1/b64")) == base64.b64encode(b"decoded").decode() + "\n"
    ok(mesh(dev, "kv", "put", "t1/odd key?#%", "v"))  # every byte of a key reaches the agent
    assert kv(dev, urllib.parse.quote("t1/odd key?#%"))[0]["Key"] == "t1/odd key?#%"
    fails(mesh(dev, "kv", "get", "t1/missing"), "Error! No key exists at: t1/missing")
    fails(mesh(dev, "kv", "get"), "Error! Missing KEY argument")
    fails(mesh(dev, "kv", "put"), "Error! Missing KEY argument")
    fails(mesh(dev, "kv", "put", "a", "b", "c"), "Error! Too many arguments (expected 1 or 2, got 3)")
    fails(mesh(dev, "kv", "put", "t1/x", f"@{tmp_path}/none"),
          f"Error! Failed to read file: No such file or directory: {tmp_path}/none")


def test_put_flags_and_detailed(dev):
    ok(mesh(dev, "kv", "put", "-flags", "42", "t2/key", "value"))
    entry = kv(dev, "t2/key")[0]
    assert entry["Flags"] == 42
    lines = ok(mesh(dev, "kv", "get", "-detailed", "t2/key")).splitlines()
    assert lines == [f"CreateIndex      {entry['CreateIndex']}", "Flags            42", "Key              t2/key",
                     "LockIndex        0", f"ModifyIndex      {entry['ModifyIndex']}", "Session          -",
                     "Value            value"]
    out = mesh(dev, "kv", "put", "-flags", "nope", "t2/key", "v")
    assert out.returncode == 1 and len(out.stderr.strip().splitlines()) == 1


def test_put_cas(dev):
    ok(mesh(dev, "kv", "put", "-cas", "-modify-index", "0", "t3/key", "first"))  # 0: only if absent
    fails(mesh(dev, "kv", "put", "-cas", "-modify-index", "0", "t3/key", "again"),
          "Error! Did not write to t3/key: CAS performed with index=0 and key already exists.")
    index = kv(dev, "t3/key")[0]["ModifyIndex"]
    fails(mesh(dev, "kv", "put", "-cas", f"-modify-index={index + 1000}", "t3/key", "x"),
          "Error! Did not write to t3/key: CAS failed")
    assert ok(mesh(dev, "kv", "put", "-cas", f"-modify-index={index}", "t3/key", "second")) == \
        "Success! Data written to: t3/key\n"
    assert ok(mesh(dev, "kv", "get", "t3/key")) == "second\n"


def test_put_acquire_and_release(dev):
    sid = dev.put("/v1/session/create", {"Name": "kv-cli-test", "LockDelay": "0s"})["ID"]
    other = dev.put("/v1/session/create", {"Name": "kv-cli-other", "LockDelay": "0s"})["ID"]
    try:
        fails(mesh(dev, "kv", "put", "-acquire", "t4/lock", "v"),
              "Error! Missing -session (required with -acquire and -release)")
        assert ok(mesh(dev, "kv", "put", "-acquire", "-session", sid, "t4/lock", "v")) == \
            "Success! Lock acquired on: t4/lock\n"
        entry = kv(dev, "t4/lock")[0]
        assert entry["Session"] == sid and entry["LockIndex"] == 1
        assert f"Session          {sid}" in ok(mesh(dev, "kv", "get", "-detailed", "t4/lock"))
        fails(mesh(dev, "kv", "put", "-acquire", "-session", other, "t4/lock", "v"), "Error! Did not acquire lock")
        fails(mesh(dev, "kv", "put", "-release", "-session", other, "t4/lock"), "Error! Did not release lock")
        assert ok(mesh(dev, "kv", "put", "-release", "-session", sid, "t4/lock")) == \
            "Success! Lock released on: t4/lock\n"
        assert "Session" not in kv(dev, "t4/lock")[0] or not kv(dev, "t4/lock")[0]["Session"]
    finally:
        dev.put(f"/v1/session/destroy/{sid}")
        dev.put(f"/v1/session/destroy/{other}")


def test_get_recurse_keys_separator(dev):
    for key, value in (("t5/a", "1"), ("t5/b/c", "2"), ("t5/b/d/e", "3"), ("t5x", "4")):
        ok(mesh(dev, "kv", "put", key, value))
    assert ok(mesh(dev, "kv", "get", "-recurse", "t5/")) == "t5/a:1\nt5/b/c:2\nt5/b/d/e:3\n"
    assert ok(mesh(dev, "kv", "get", "-recurse", "t5")).splitlines()[-1] == "t5x:4"
    assert ok(mesh(dev, "kv", "get", "-keys", "t5/")) == "t5/a\nt5/b/\n"
    assert ok(mesh(dev, "kv", "get", "-keys", "-separator", "", "t5/")) == "t5/a\nt5/b/c\nt5/b/d/e\n"
    assert ok(mesh(dev, "kv", "get", "-keys", "-separator=d", "t5/b/")) == "t5/b/c\nt5/b/d\n"
    detailed = ok(mesh(dev, "kv", "get", "-recurse", "-detailed", "t5/b/")).split("\n\n")
    assert len(detailed) == 2 and detailed[0].startswith("CreateIndex") and "Key              t5/b/c" in detailed[0]
    assert ok(mesh(dev, "kv", "get", "-recurse", "t5/none/")) == ""  # nothing there: no output, exit 0
    assert ok(mesh(dev, "kv", "get", "-keys", "t5/none/")) == ""


def test_delete(dev):
    for key in ("t6/a", "t6/b/c", "t6/b/d"):
        ok(mesh(dev, "kv", "put", key, "v"))
    assert ok(mesh(dev, "kv", "delete", "t6/a")) == "Success! Deleted key: t6/a\n"
    assert kv(dev, "t6/a") is None
    assert ok(mesh(dev, "kv", "delete", "t6/a")) == "Success! Deleted key: t6/a\n"  # absent: no error, as consul
    index = kv(dev, "t6/b/c")[0]["ModifyIndex"]
    fails(mesh(dev, "kv", "delete", "-cas", "-modify-index", str(index + 1000), "t6/b/c"),
          "Error! Did not delete key t6/b/c: CAS failed")
    ok(mesh(dev, "kv", "delete", "-cas", "-modify-index", str(index), "t6/b/c"))
    assert kv(dev, "t6/b/c") is None
    fails(mesh(dev, "kv", "delete", "-cas", "t6/b/d"),
          "Cannot delete a key that does not exist. Provide a -modify-index greater than 0.")
    fails(mesh(dev, "kv", "delete", "-modify-index", "3", "t6/b/d"), "Cannot specify -modify-index without -cas!")
    fails(mesh(dev, "kv", "delete", "-recurse", "-cas", "-modify-index", "3", "t6/"),
          "Cannot specify both -cas and -recurse!")
    fails(mesh(dev, "kv", "delete"), "Error! Missing KEY argument")
    assert ok(mesh(dev, "kv", "delete", "-recurse", "t6/")) == "Success! Deleted keys with prefix: t6/\n"
    assert kv(dev, "t6/", recurse="") is None


def test_export_import_round_trip(dev, tmp_path):
    values = {"t7/text": (b"plain", 0), "t7/bin": (bytes(range(256)), 7), "t7/empty": (b"", 18446744073709551615),
              "t7/sub/<&>": (b"html", 1)}
    for key, (value, flags) in values.items():
        dev.request("PUT", f"/v1/kv/{urllib.parse.quote(key)}?flags={flags}", raw=value)
    exported = ok(mesh(dev, "kv", "export", "t7/"))
    assert "\t{" in exported and "\\u003c\\u0026\\u003e" in exported  # Go's MarshalIndent, HTML-escaped
    doc = json.loads(exported)
    assert [e["key"] for e in doc] == sorted(values)
    assert {e["key"]: (base64.b64decode(e["value"]), e["flags"]) for e in doc} == values
    assert list(doc[0]) == ["key", "flags", "value"]
    ok(mesh(dev, "kv", "delete", "-recurse", "t7/"))
    assert json.loads(ok(mesh(dev, "kv", "export", "t7/"))) == []
    path = tmp_path / "export.json"
    path.write_text(exported)
    out = ok(mesh(dev, "kv", "import", f"@{path}"))
    assert out.splitlines() == [f"Imported: {k}" for k in sorted(values)]
    assert ok(mesh(dev, "kv", "export", "t7/")) == exported
    # from stdin and inline too, renamed
    ok(mesh(dev, "kv", "import", "-", stdin=exported.replace("t7/", "t7b/")))
    assert ok(mesh(dev, "kv", "export", "t7b/")) == exported.replace("t7/", "t7b/")
    ok(mesh(dev, "kv", "import", json.dumps([{"key": "t7c/x", "flags": 3, "value": "eA=="}])))
    assert kv(dev, "t7c/x")[0]["Flags"] == 3
    fails(mesh(dev, "kv", "import"), "Error! Missing DATA argument")
    out = mesh(dev, "kv", "import", "{not json")
    assert out.returncode == 1 and out.stderr.startswith("Cannot unmarshal data: ")
    fails(mesh(dev, "kv", "import", '[{"key": "k", "value": "!!"}]'),
          "Error base 64 decoding value for key k: Only base64 data is allowed")


def test_unreachable_agent_is_one_line():
    out = subprocess.run([sys.executable, "-m", "mesh.agent.cli.main", "kv", "get", "-http-addr", "127.0.0.1:1",
                          "x"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and len(out.stderr.strip().splitlines()) == 1
    assert out.stderr.startswith("Error querying Consul agent: Error connecting to agent")


# ---------------------------------------------------------------------------- lock


class Procs:
    """`mesh lock` processes of one test, each killed by its PID at the end."""

    def __init__(self, dev) -> None:
        self.dev = dev
        self.procs: list[subprocess.Popen[str]] = []

    def lock(self, *args: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen([sys.executable, "-m", "mesh.agent.cli.main", "lock", *args], cwd="/",
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env={**os.environ, "CONSUL_HTTP_ADDR": self.dev.http}, start_new_session=True)
        self.procs.append(proc)
        return proc

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                with contextlib.suppress(OSError):
                    os.killpg(proc.pid, signal.SIGKILL)  # its own group: the command it runs too
                proc.wait(10)


@pytest.fixture
def procs(dev):
    p = Procs(dev)
    try:
        yield p
    finally:
        p.stop()


def wait_file(path, timeout: float = 15.0) -> None:
    retry(lambda: os.path.exists(path), timeout, what=str(path))


def test_lock_runs_command_with_lock_held(dev, procs, tmp_path):
    out = tmp_path / "env"
    proc = procs.lock("-verbose", "t8", f"echo $CONSUL_LOCK_HELD > {out}")
    stdout, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0, stderr
    assert out.read_text() == "true\n"
    assert "Setting up lock at path: t8/.lock" in stdout and "Cleanup succeeded" in stdout
    assert kv(dev, "t8/.lock") is None  # released and removed
    assert not [s for s in dev.get("/v1/session/list") if "t8" in s["Name"]]  # its session destroyed


def test_child_exit_code(dev, procs):
    plain = procs.lock("t9", "exit 3")
    plain.communicate(timeout=30)
    assert plain.returncode == 3  # mesh: COMMAND's own status (consul lock would say 0)
    propagated = procs.lock("-child-exit-code", "t9", "exit 3")
    _, stderr = propagated.communicate(timeout=30)
    assert propagated.returncode == 2 and "exit status 3" in stderr
    good = procs.lock("-child-exit-code", "t9", "exit 0")
    good.communicate(timeout=30)
    assert good.returncode == 0


def test_second_lock_waits_for_the_first(dev, procs, tmp_path):
    log = tmp_path / "log"
    gate = tmp_path / "gate"
    first = procs.lock("t10", f"echo first-start >> {log}; while [ ! -e {gate} ]; do sleep 0.05; done; "
                              f"echo first-end >> {log}")
    retry(lambda: log.exists() and "first-start" in log.read_text(), 20, what="first holds the lock")
    entry = kv(dev, "t10/.lock")[0]
    assert entry["Flags"] == LOCK_FLAG and entry["Session"]
    second = procs.lock("t10", f"echo second >> {log}")
    time.sleep(1.5)
    assert second.poll() is None and log.read_text() == "first-start\n"  # still waiting
    gate.touch()
    first.communicate(timeout=20)
    second.communicate(timeout=20)
    assert first.returncode == 0 and second.returncode == 0
    assert log.read_text() == "first-start\nfirst-end\nsecond\n"


def test_semaphore_lets_exactly_two_run(dev, procs, tmp_path):
    log = tmp_path / "log"
    gate = tmp_path / "gate"
    cmd = f"echo + >> {log}; while [ ! -e {gate} ]; do sleep 0.05; done; sleep 0.3; echo - >> {log}"
    runners = [procs.lock("-n", "2", "t11", cmd) for _ in range(3)]
    retry(lambda: log.exists() and log.read_text().count("+") == 2, 20, what="two holders")
    time.sleep(1.5)
    assert log.read_text() == "+\n+\n"  # the third waits
    keys = [e["Key"] for e in kv(dev, "t11/", recurse="")]
    assert "t11/.lock" in keys and len(keys) == 4  # the .lock key and three contenders
    holders = json.loads(base64.b64decode(kv(dev, "t11/.lock")[0]["Value"]))
    assert holders["Limit"] == 2 and len(holders["Holders"]) == 2
    gate.touch()
    for r in runners:
        r.communicate(timeout=30)
        assert r.returncode == 0
    events = log.read_text().split()
    running, peak = 0, 0
    for e in events:
        running += 1 if e == "+" else -1
        peak = max(peak, running)
    assert events.count("+") == 3 and peak == 2
    assert kv(dev, "t11/", recurse="") is None  # contenders and the .lock key all gone


def test_lock_stops_command_when_session_destroyed(dev, procs, tmp_path):
    started, stopped = tmp_path / "started", tmp_path / "stopped"
    proc = procs.lock("-verbose", "t12", f"trap 'echo term > {stopped}; exit 0' TERM; touch {started}; "
                                         f"while true; do sleep 0.05; done")
    wait_file(started, 20)
    session = retry(lambda: [s["ID"] for s in dev.get("/v1/session/list") if "'t12'" in s["Name"]], 10)[0]
    assert kv(dev, "t12/.lock")[0]["Session"] == session
    dev.put(f"/v1/session/destroy/{session}")
    stdout, stderr = proc.communicate(timeout=20)
    assert stopped.read_text() == "term\n"
    assert "Lock lost, killing child" in stdout, (stdout, stderr)
    assert proc.returncode == 0


def test_lock_timeout_gives_up(dev, procs, tmp_path):
    started, gate = tmp_path / "started", tmp_path / "gate"
    holder = procs.lock("t13", f"touch {started}; while [ ! -e {gate} ]; do sleep 0.05; done")
    wait_file(started, 20)
    began = time.monotonic()
    waiter = procs.lock("-timeout", "1s", "t13", f"touch {tmp_path}/never")
    _, stderr = waiter.communicate(timeout=20)
    assert waiter.returncode == 1
    assert stderr.strip() == "Shutdown triggered or timeout during lock acquisition"
    assert time.monotonic() - began < 10 and not (tmp_path / "never").exists()
    gate.touch()
    holder.communicate(timeout=20)
    assert holder.returncode == 0


def test_sigterm_is_forwarded_and_the_lock_released(dev, procs, tmp_path):
    started, stopped = tmp_path / "started", tmp_path / "stopped"
    proc = procs.lock("t14", f"trap 'echo term > {stopped}; exit 0' TERM; touch {started}; "
                             f"while true; do sleep 0.05; done")
    wait_file(started, 20)
    os.kill(proc.pid, signal.SIGTERM)
    proc.communicate(timeout=20)
    assert proc.returncode == 0 and stopped.read_text() == "term\n"
    assert kv(dev, "t14/.lock") is None


@pytest.mark.parametrize("args, message", [
    (("-n", "0", "p", "true"), "Lock holder limit must be positive"),
    (("p",), "Key prefix and child command must be specified"),
    (("-timeout", "-1s", "p", "true"), "Timeout must be positive"),
])
def test_lock_usage_errors(dev, args, message):
    fails(mesh(dev, "lock", *args), message)


def test_lock_on_a_key_that_is_not_a_lock(dev):
    ok(mesh(dev, "kv", "put", "t15/.lock", "data"))
    fails(mesh(dev, "lock", "t15", "true"), "Lock acquisition failed: Existing key does not match lock use")
    assert ok(mesh(dev, "kv", "get", "t15/.lock")) == "data\n"
