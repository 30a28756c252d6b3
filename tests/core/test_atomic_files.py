"""Atomic writes: whole files only, temporary files of dead writers cleaned, the user's umask."""

from __future__ import annotations

import os
import time

from diagonalwise.atomic_files import STALE_SECONDS, write_json_atomic, write_text_atomic


def test_a_stale_temporary_file_is_removed_by_the_next_write(tmp_path):
    target = tmp_path / "cache.json"
    stale, fresh = tmp_path / ".cache.json.abc123", tmp_path / ".cache.json.def456"
    stale.write_text("half a file from a writer killed mid-write")
    fresh.write_text("another writer, still writing")
    old = time.time() - 2 * STALE_SECONDS
    os.utime(stale, (old, old))
    write_json_atomic(target, {"a": 1})
    assert not stale.exists() and fresh.exists()
    assert target.read_text() == '{\n "a": 1\n}\n'


def test_files_get_the_users_umask(tmp_path):
    previous = os.umask(0o027)
    try:
        write_text_atomic(tmp_path / "a.txt", "x")
    finally:
        os.umask(previous)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o640
