"""The API reference (docs/api.md) is generated from the docstrings and kept up to date."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]


def test_the_api_reference_is_up_to_date():
    pytest.importorskip("torch")  # it documents the torch side too
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "api_docs.py"), "--check"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr


def test_the_readme_quick_start_has_the_two_commands():
    readme = (ROOT / "README.md").read_text()
    start = readme.index("## Quick start")
    block = readme[start : readme.index("```", readme.index("```bash", start) + 7)]
    assert "make demo" in block and "make test" in block
