"""The one way blindfed writes state: atomically, durably, private where asked."""

from __future__ import annotations

import stat

import pytest

from blindfed.atomic import write_atomically


def test_a_failed_write_leaves_the_previous_file_whole_and_no_temporary(tmp_path):
    path = tmp_path / "checkpoint.json"
    write_atomically(path, b"round 3")

    def crash(f):
        f.write(b"round 4, half writ")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomically(path, crash)
    assert path.read_bytes() == b"round 3"
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.json"]


def test_private_files_are_readable_by_their_owner_only(tmp_path):
    path = tmp_path / "key_seed"
    (tmp_path / "key_seed.tmp").write_bytes(b"left over")  # a crashed write's temporary
    (tmp_path / "key_seed.tmp").chmod(0o644)
    write_atomically(path, b"\x01" * 32, private=True)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_bytes() == b"\x01" * 32
