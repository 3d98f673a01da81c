"""What the commands share."""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class UsageError(Exception):
    """Options or inputs a command cannot run with: ``blindfed`` prints it and exits with 2."""


@contextmanager
def usage_errors() -> Iterator[None]:
    """Makes a ``ValueError`` raised while a command checks its options a :class:`UsageError`
    (one raised later, by the work itself, stays a traceback)."""
    try:
        yield
    except ValueError as err:
        raise UsageError(str(err)) from err


def write_json(path: str | None, report: dict) -> None:
    """Writes ``report`` as JSON to ``path`` (if given) and says so."""
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {path}")


def add_model_option(p: argparse.ArgumentParser, help: str) -> None:
    """``--model``: one of :data:`blindfed.zoo.foundations.MODELS`, the first by default."""
    from blindfed.zoo.foundations import MODELS

    p.add_argument(
        "--model", choices=MODELS, default=MODELS[0], help=f"{help} (default %(default)s)"
    )
