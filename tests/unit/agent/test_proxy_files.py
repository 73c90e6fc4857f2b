"""What the supervisor reads and writes: /proc identity verdicts, pidfiles, logs, and
the ready report a proxy sends."""

from __future__ import annotations

import datetime
import os
import stat

import pytest

from mesh.agent.proxies.files import PidFile, ProxyFiles
from mesh.agent.proxies.procfs import (
    ProcInfo,
    adoption_problem,
    boot_id,
    cmdline_matches,
    parse_stat,
    read_proc,
    same_process,
)
from mesh.agent.proxies.readiness import ReadyReport, format_time, parse_ready_report
from mesh.catalog.errors import InvalidRequest

STAT_TAIL = "S 1 100 100 0 -1 4194560 1000 0 0 0 5 3 0 0 20 0 1 0 {start} 100000 500 18446744073709551615"
PROXY = ("/usr/bin/python3", "-m", "mesh", "connect", "proxy", "-sidecar-for", "web")


# ---- /proc ---------------------------------------------------------------------------------

@pytest.mark.parametrize("comm", ["python3", "my proxy", "a) b (c", ")"])
def test_stat_is_parsed_from_the_last_parenthesis(comm):
    assert parse_stat(f"4242 ({comm}) " + STAT_TAIL.format(start=987654)) == ("S", 987654)


@pytest.mark.parametrize("text", ["", "4242 python3 S 1", "4242 (x) S 1 2 3"])
def test_a_malformed_stat_is_refused(text):
    with pytest.raises(ValueError):
        parse_stat(text)


def test_read_proc_of_this_process_and_of_none():
    me = read_proc(os.getpid())
    assert me is not None and me.pid == os.getpid() and not me.gone and me.start_time > 0
    assert me.cmdline and "python" in me.cmdline[0]
    assert read_proc(0) is None and read_proc(-5) is None
    assert read_proc(2**22 + 12345) is None  # past pid_max
    assert len(boot_id()) == 36


def test_read_proc_from_a_fake_root(tmp_path):
    (tmp_path / "77").mkdir()
    (tmp_path / "77" / "stat").write_text("77 (python3) " + STAT_TAIL.format(start=555).replace("S", "Z", 1))
    (tmp_path / "77" / "cmdline").write_bytes(b"\0".join(p.encode() for p in PROXY) + b"\0")
    info = read_proc(77, root=str(tmp_path))
    assert info == ProcInfo(77, 555, "Z", PROXY) and info.gone


@pytest.mark.parametrize("cmdline, parent, ok", [
    (PROXY, "web", True),
    (("mesh", "connect", "proxy", "-sidecar-for=web"), "web", True),
    (("/venv/bin/python", "/t/fake_proxy.py", "/m", "connect", "proxy", "-sidecar-for", "a/b:c"), "a/b:c", True),
    (PROXY, "api", False),  # a proxy, for another service
    (("mesh", "proxy", "connect", "-sidecar-for", "web"), "web", False),
    (("vim", "connect", "proxy", "web"), "web", True),  # the words are what is checked
    (("sleep", "30"), "web", False),
    ((), "web", False),
    (("mesh", "connect", "proxy", "-sidecar-for", "webx"), "web", False),
])
def test_command_line_match(cmdline, parent, ok):
    assert cmdline_matches(cmdline, parent) is ok


def _info(start: int = 500, state: str = "S", cmdline: tuple[str, ...] = PROXY) -> ProcInfo:
    return ProcInfo(4242, start, state, cmdline)


@pytest.mark.parametrize("info, boot, problem", [
    (_info(), "b1", None),
    (None, "b1", "not running"),
    (_info(state="Z"), "b1", "not running"),
    (_info(start=501), "b1", "pid reused by another process"),
    (_info(cmdline=("sleep", "30")), "b1", "command line is not a proxy for this service"),
    (_info(), "b2", "the machine has rebooted since"),
    (_info(), "", None),  # no boot ID to compare (not Linux): pid, start time and command line decide
])
def test_adoption_verdicts(info, boot, problem):
    assert adoption_problem(info, 500, "b1", boot, "web") == problem


def test_same_process_needs_the_same_start_time_and_no_zombie():
    assert same_process(_info(), 500)
    assert not same_process(_info(), 499)
    assert not same_process(_info(state="Z"), 500)
    assert not same_process(None, 500)


# ---- pidfiles and logs -----------------------------------------------------------------------

def test_pidfile_round_trip_and_privacy(tmp_path):
    files = ProxyFiles(str(tmp_path / "proxies"))
    files.ensure_dir()
    record = PidFile("web-sidecar-proxy", "web", 4242, 987654, "boot", 1700000000.5)
    files.write_pidfile(record)
    path = files.pid_path("web-sidecar-proxy")
    assert path.endswith("/web-sidecar-proxy.pid")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(files.directory).st_mode) == 0o700
    assert files.pidfiles() == [(path, record)]
    files.remove_pidfile("web-sidecar-proxy")
    files.remove_pidfile("web-sidecar-proxy")  # twice is fine
    assert files.pidfiles() == []


@pytest.mark.parametrize("raw", [b"", b"[]", b"{", b'{"ProxyServiceID": "p"}',
                                 b'{"ProxyServiceID": "p", "DestinationServiceID": "w", "Pid": 0, "StartTime": 1}',
                                 b'{"ProxyServiceID": "p", "DestinationServiceID": "w", "Pid": "1", "StartTime": 1}',
                                 b'{"ProxyServiceID": "", "DestinationServiceID": "w", "Pid": 1, "StartTime": 1}'])
def test_a_broken_pidfile_is_reported_as_unreadable(tmp_path, raw):
    with pytest.raises(ValueError):
        PidFile.decode(raw)
    (tmp_path / "x.pid").write_bytes(raw)
    (tmp_path / "x.log").write_bytes(b"not a pidfile")
    assert ProxyFiles(str(tmp_path)).pidfiles() == [(str(tmp_path / "x.pid"), None)]


@pytest.mark.parametrize("proxy_id", ["a/b:c", "..", ".hidden", "x" * 600, "ünï code", "a b"])
def test_any_service_id_makes_one_safe_file_name(tmp_path, proxy_id):
    files = ProxyFiles(str(tmp_path))
    path = files.pid_path(proxy_id)
    name = os.path.basename(path)
    assert os.path.dirname(path) == str(tmp_path) and "/" not in name and not name.startswith(".")
    assert len(name) < 200
    files.write_pidfile(PidFile(proxy_id, "w", 1, 1, "", 0.0))
    assert files.pidfiles()[0][1].proxy_id == proxy_id
    assert files.log_path(proxy_id) != files.log_path(proxy_id + "x")


def test_the_log_is_appended_to_and_rotated_once_past_the_limit(tmp_path):
    files = ProxyFiles(str(tmp_path), log_max_bytes=100)
    for text in (b"a" * 60, b"b" * 60):
        fd = files.open_log("p")
        os.write(fd, text)
        os.close(fd)
    path = files.log_path("p")
    assert open(path, "rb").read() == b"a" * 60 + b"b" * 60  # rotated only at a launch past the limit
    fd = files.open_log("p")
    os.write(fd, b"c")
    os.close(fd)
    assert open(path + ".1", "rb").read() == b"a" * 60 + b"b" * 60
    assert open(path, "rb").read() == b"c"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    with open(path, "ab") as f:
        f.write(b"d" * 200)
    os.close(files.open_log("p"))
    assert open(path + ".1", "rb").read() == b"c" + b"d" * 200  # one generation kept


# ---- the ready report ------------------------------------------------------------------------

def test_an_empty_report_is_just_ready():
    assert parse_ready_report(None) == ReadyReport()
    assert parse_ready_report({}) == ReadyReport()


def test_a_full_report_in_either_case():
    expected = ReadyReport(4242, "0.0.0.0:21000", {"api": "127.0.0.1:9191"}, 1735787045.0, 0.5)
    assert parse_ready_report({"PID": 4242, "Listeners": {"Public": "0.0.0.0:21000",
                                                          "Upstreams": {"api": "127.0.0.1:9191"}},
                               "LeafExpires": "2025-01-02T03:04:05Z", "ConfigAge": 0.5}) == expected
    assert parse_ready_report({"pid": 4242, "listeners": {"public": "0.0.0.0:21000",
                                                          "upstreams": {"api": "127.0.0.1:9191"}},
                               "leaf_expires": 1735787045, "config_age": 0.5}) == expected
    assert parse_ready_report({"LeafExpires": "2025-01-02T05:04:05.25+02:00"}).leaf_expires == 1735787045.25


@pytest.mark.parametrize("body", [
    [], "ready", {"PID": -1}, {"PID": "12"}, {"PID": 1.5}, {"Listeners": []}, {"Listeners": {"Public": 21000}},
    {"Listeners": {"Upstreams": {"api": 9191}}}, {"Listeners": {"Upstreams": []}}, {"LeafExpires": "tomorrow"},
    {"LeafExpires": 5}, {"LeafExpires": True}, {"ConfigAge": -1}, {"ConfigAge": "1s"},
    {"Listeners": {"Public": "x" * 1000}},
    {"Listeners": {"Upstreams": {f"u{i}": "127.0.0.1:1" for i in range(2000)}}},
])
def test_a_bad_report_is_a_400_naming_the_field(body):
    with pytest.raises(InvalidRequest):
        parse_ready_report(body)


def test_times_are_written_as_rfc3339_utc():
    assert format_time(None) is None
    assert format_time(1735787045.9) == "2025-01-02T03:04:05Z"
    assert format_time(0) == datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
