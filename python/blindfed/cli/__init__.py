"""The ``blindfed`` command: ``demo``, ``tune`` and ``study`` (:mod:`blindfed.cli.federation`),
``distill``, ``adapt`` and ``extraction`` (:mod:`blindfed.cli.student`), ``bench``
(:mod:`blindfed.cli.bench`)."""

from __future__ import annotations

import argparse
import sys

from blindfed import __version__, ckks
from blindfed.cli.common import UsageError

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    from blindfed.cli import bench, federation, student

    parser = argparse.ArgumentParser(
        prog="blindfed",
        description="A model provider and data owners adapt a foundation model together, "
        "double-blind: the provider computes on CKKS ciphertexts, the owners never see the "
        "model. Each command says what it does with --help.",
    )
    parser.add_argument("--version", action="version", version=f"blindfed {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    federation.register(sub)
    student.register(sub)
    bench.register(sub)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ckks.CkksError, UsageError) as err:
        print(f"blindfed {args.command}: {err}", file=sys.stderr)
        return 2
