"""Files that a crash leaves either as they were or whole: the one way blindfed writes state.

Checkpoints, cached block outputs, key seeds, tuning and study results are all written here: to
a temporary file beside the target, flushed to the disk (``fsync``), then renamed over the
target (``os.replace``, atomic on POSIX and Windows within one file system). A power cut or a
kill mid-write therefore leaves the previous version, never a torn file that a resumed run
would read. ``private`` files (key seeds, offers, node keys) are created readable and writable
by their owner only (mode 0600) before any byte is written.

>>> import tempfile, pathlib
>>> path = pathlib.Path(tempfile.mkdtemp()) / "state.json"
>>> write_atomically(path, b'{"round": 3}')
>>> path.read_bytes()
b'{"round": 3}'
>>> write_atomically(path, lambda f: f.write(b'{"round": 4}'))
>>> path.read_bytes(), sorted(p.name for p in path.parent.iterdir())
(b'{"round": 4}', ['state.json'])
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

__all__ = ["write_atomically"]


def write_atomically(
    path: str | Path, data: bytes | Callable[[BinaryIO], object], *, private: bool = False
) -> None:
    """Replaces ``path`` with ``data`` (bytes, or a function that writes to the open binary
    file), atomically and durably; ``private``: mode 0600."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o666)
    try:
        if private and hasattr(os, "fchmod"):
            os.fchmod(fd, 0o600)  # a leftover temporary file may have had another mode
        with os.fdopen(fd, "wb") as f:
            if isinstance(data, bytes | bytearray | memoryview):
                f.write(data)
            else:
                data(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
