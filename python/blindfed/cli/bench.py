"""``blindfed bench``: benchmarks, each against a baseline timed in the same run."""

from __future__ import annotations

import argparse

from blindfed import set_num_threads
from blindfed.cli.common import add_model_option, usage_errors, write_json


def _sets(text: str) -> tuple[tuple[int, int], ...]:
    try:
        pairs = tuple(tuple(int(v) for v in item.split(":")) for item in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LOG_N:LEVELS[,...], got {text!r}") from None
    if not pairs or any(len(p) != 2 for p in pairs):
        raise argparse.ArgumentTypeError(f"expected LOG_N:LEVELS[,...], got {text!r}")
    return pairs  # type: ignore[return-value]


def _names(text: str) -> list[str]:
    from blindfed.block import SHAPES

    names = [n for n in text.split(",") if n]
    unknown = [n for n in names if n not in SHAPES]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown shape(s) {unknown}; choose from {sorted(SHAPES)}"
        )
    return names


def bench(args: argparse.Namespace) -> int:
    """Benchmarks against a baseline timed in the same run."""
    if args.what == "ckks":
        from blindfed.experiments.bench import ckks as ckks_bench

        report = ckks_bench.run(args.sets or ckks_bench.DEFAULT_SETS, repeats=args.repeats)
        print(ckks_bench.format_table(report))
        write_json(args.json, report)
        return 0
    if args.what == "block":
        from blindfed.experiments.bench import block as block_bench

        set_num_threads(args.threads)
        report = block_bench.run(tuple(args.shapes), tuple(args.estimate))
        print(block_bench.format_table(report))
        write_json(args.json, report)
        return 0
    if args.what == "e2e":
        from blindfed.experiments.bench import e2e

        set_num_threads(args.threads)
        with usage_errors():
            report = e2e.run(
                args.samples,
                modes=tuple(args.modes),
                model=args.model,
                student_path=args.student or "",
                blocks=args.blocks,
            )
        print(e2e.format_table(report))
        write_json(args.json, report)
        return 0
    if args.what == "provider":
        from blindfed.experiments.bench import provider as provider_bench

        set_num_threads(args.threads)
        report = provider_bench.run(args.groups, args.requests, tuple(args.evaluators))
        print(provider_bench.format_table(report))
        write_json(args.json, report)
        return 0
    raise AssertionError(args.what)


def register(sub: argparse._SubParsersAction) -> None:
    """Adds the command to the ``blindfed`` parser."""
    p = sub.add_parser("bench", help="benchmarks, each against a baseline in the same run")
    p.add_argument(
        "what",
        choices=["ckks", "block", "e2e", "provider"],
        help="ckks: our CKKS engine vs SEAL; block: one encrypted transformer block per sample "
        "vs the same block in plaintext; e2e: the online phase on the embedded default, "
        "execute vs simulate vs plaintext; provider: group-blocks per second on a local Ray "
        "cluster vs the in-process provider",
    )
    p.add_argument("--sets", type=_sets, help="ckks: LOG_N:LEVELS pairs, e.g. 14:7,15:18,16:18")
    p.add_argument("--repeats", type=int, default=5, help="ckks: timed repetitions per operation")
    p.add_argument(
        "--shapes",
        type=_names,
        default=["small", "vit_tiny"],
        help="block: shapes to run encrypted (any of blindfed.block.SHAPES: small, vit_tiny, "
        "vit_base, dinov2_s_112, dinov2_s)",
    )
    p.add_argument(
        "--estimate",
        type=_names,
        default=["vit_base"],
        help="block: shapes to estimate from exact operation counts (empty: none)",
    )
    p.add_argument("--samples", type=int, help="e2e: digits (default: one ciphertext group)")
    add_model_option(p, "e2e: the foundation model whose student runs")
    p.add_argument("--student", help="e2e: a saved student (default: the zoo's)")
    p.add_argument(
        "--blocks",
        type=int,
        help="e2e: run only the student's first blocks (default all; a deep model's first "
        "blocks show its precision in a fraction of the time)",
    )
    p.add_argument(
        "--modes",
        type=lambda t: [m for m in t.split(",") if m],
        default=["execute", "simulate"],
        help="e2e: execute and/or simulate (default both)",
    )
    p.add_argument(
        "--groups", type=int, default=2, help="provider: ciphertext groups a request (default 2)"
    )
    p.add_argument(
        "--requests",
        type=int,
        default=2,
        help="provider: requests a configuration (the first warms up; default 2)",
    )
    p.add_argument(
        "--evaluators",
        type=lambda t: [int(k) for k in t.split(",") if k],
        default=[1, 2],
        help="provider: evaluator counts to run on Ray (default 1,2; they split the cores)",
    )
    p.add_argument("--threads", type=int, default=0, help="worker threads (0: all cores)")
    p.add_argument("--json", help="also write the report as JSON here")
    p.set_defaults(func=bench)
