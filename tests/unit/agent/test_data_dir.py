"""The data-dir is private: writers create 0600/0700, old data-dirs are tightened once."""

from __future__ import annotations

import os
import stat

from mesh.agent.data_dir import make_private_dir, tighten, write_private


def mode(path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_writers_are_private_even_with_an_open_umask(tmp_path):
    old = os.umask(0o022)
    try:
        make_private_dir(str(tmp_path / "d" / "local"))
        write_private(str(tmp_path / "d" / "local" / "state.json"), b"{}")
        (tmp_path / "d" / "local" / "old.json.tmp").write_text("stale")
        os.chmod(tmp_path / "d" / "local" / "old.json.tmp", 0o644)
        write_private(str(tmp_path / "d" / "local" / "old.json"), b"new")  # reuses a stale 0644 .tmp
    finally:
        os.umask(old)
    assert mode(tmp_path / "d") == 0o700 and mode(tmp_path / "d" / "local") == 0o700
    assert mode(tmp_path / "d" / "local" / "state.json") == 0o600
    assert mode(tmp_path / "d" / "local" / "old.json") == 0o600
    assert (tmp_path / "d" / "local" / "old.json").read_bytes() == b"new"


def test_an_old_data_dir_is_tightened_once(tmp_path):
    data = tmp_path / "data"
    (data / "raft").mkdir(parents=True)
    (data / "raft" / "journal").write_bytes(b"x")
    (data / "node-id").write_text("id")
    (data / "connect").mkdir()
    os.symlink("/etc/passwd", data / "connect" / "link")
    for path, m in ((data, 0o755), (data / "raft", 0o755), (data / "raft" / "journal", 0o644),
                    (data / "node-id", 0o644), (data / "connect", 0o750)):
        os.chmod(path, m)
    before = mode("/etc/passwd")
    assert tighten(str(data)) == 5
    assert [mode(p) for p in (data, data / "raft", data / "raft" / "journal", data / "node-id", data / "connect")] == \
        [0o700, 0o700, 0o600, 0o600, 0o700]
    assert mode("/etc/passwd") == before  # symlinks are not followed
    assert tighten(str(data)) == 0  # nothing left to do: no second log line


def test_a_shared_directory_keeps_its_mode_and_foreign_files(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o1777)
    (shared / "someone-elses.txt").write_text("x")
    os.chmod(shared / "someone-elses.txt", 0o644)
    (shared / "node-id").write_text("id")
    os.chmod(shared / "node-id", 0o644)
    assert tighten(str(shared)) == 1
    assert mode(shared) == 0o1777 and mode(shared / "someone-elses.txt") == 0o644 and mode(shared / "node-id") == 0o600
