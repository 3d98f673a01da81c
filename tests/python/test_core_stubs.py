"""The hand-written stub of the Rust extension (``blindfed/_core.pyi``) against the module
itself, by mypy's stubtest: every class, method, parameter and default that one has, the
other has too."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("mypy", reason="stubtest comes with mypy (make test installs it)")

ALLOWLIST = Path(__file__).with_name("stubtest_allowlist.txt")


def test_the_stub_matches_the_extension_module():
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy.stubtest",
            "blindfed._core",
            "--allowlist",
            str(ALLOWLIST),
            # PEP 800's @disjoint_base is not in the typing module of every Python we support.
            "--ignore-disjoint-bases",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
