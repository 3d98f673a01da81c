"""What the commands share."""

from __future__ import annotations

import json
from pathlib import Path


def write_json(path: str | None, report: dict) -> None:
    """Writes ``report`` as JSON to ``path`` (if given) and says so."""
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {path}")
