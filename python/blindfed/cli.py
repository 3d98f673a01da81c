"""The ``blindfed`` command: ``demo``, ``distill``, ``adapt``, ``tune``, ``study``,
``extraction`` and ``bench``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from blindfed import __version__, ckks, set_num_threads


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


def _write_json(path: str | None, report: dict) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {path}")


def demo(args: argparse.Namespace) -> int:
    """The whole mission on the embedded default (see :mod:`blindfed.demo`)."""
    from blindfed.demo import DemoConfig, run_demo, summary

    try:
        config = DemoConfig(
            out=args.out,
            owners=args.owners,
            rounds=args.rounds,
            mode=args.mode,
            runtime=args.runtime,
            alpha=args.alpha,
            train_samples=args.train_samples,
            test_samples=args.test_samples,
            rank=args.rank,
            local_epochs=args.local_epochs,
            distill_epochs=args.distill_epochs,
            baselines=args.baselines,
            baseline_epochs=args.baseline_epochs,
            threads=args.threads,
            seed=args.seed,
            progress=args.progress,
            settings={
                **({"preset": args.preset} if args.preset else {}),
                **({"readout": args.readout} if args.readout else {}),
            },
        )
    except ValueError as err:
        print(f"blindfed: {err}", file=sys.stderr)
        return 2
    report = run_demo(config)
    print()
    print(summary(report))
    _write_json(args.json, report)
    return 0


def bench(args: argparse.Namespace) -> int:
    """Benchmarks against a baseline timed in the same run."""
    if args.what == "ckks":
        from blindfed.bench import ckks as ckks_bench

        report = ckks_bench.run(args.sets or ckks_bench.DEFAULT_SETS, repeats=args.repeats)
        print(ckks_bench.format_table(report))
        _write_json(args.json, report)
        return 0
    if args.what == "block":
        from blindfed.bench import block as block_bench

        set_num_threads(args.threads)
        report = block_bench.run(tuple(args.shapes), tuple(args.estimate))
        print(block_bench.format_table(report))
        _write_json(args.json, report)
        return 0
    if args.what == "e2e":
        from blindfed.bench import e2e

        set_num_threads(args.threads)
        report = e2e.run(args.samples, modes=tuple(args.modes))
        print(e2e.format_table(report))
        _write_json(args.json, report)
        return 0
    raise AssertionError(args.what)


def _spec_text(args: argparse.Namespace) -> str:
    """``--spec`` with the per-slot options appended (later keys win; parsed in the core)."""
    parts = [args.spec]
    for key in ("softmax", "denominator", "norm", "gelu", "owner_norm"):
        value = getattr(args, key)
        if value is not None:
            parts.append(f"{key.replace('_', '-')}={value}")
    return " ".join(parts)


def distill_cmd(args: argparse.Namespace) -> int:
    """Distils the zoo teacher into its FHE-friendly student on MNIST and reports accuracy;
    with ``--study``, every candidate family (see :mod:`blindfed.bench.students`)."""
    import torch

    from blindfed.approx import StudentSpec
    from blindfed.distill import DistillConfig

    if args.threads:
        torch.set_num_threads(args.threads)
    set_num_threads(args.threads)
    try:
        spec = StudentSpec(_spec_text(args))
        # Options left out keep DistillConfig's defaults (their one source).
        given = {
            "epochs": args.epochs,
            "batch_size": args.batch_size,
            "lr": args.lr,
            "tau": args.tau,
            "seed": args.seed,
            "warm_start_epochs": args.warm_start,
        }
        if args.range_ratio is not None:
            given["range_ratio"] = args.range_ratio or None
        config = DistillConfig(**{k: v for k, v in given.items() if v is not None})
    except ValueError as err:
        print(f"blindfed: {err}", file=sys.stderr)
        return 2
    if args.study:
        from blindfed.bench.students import format_table, run_study

        names = [n for n in (args.candidates or "").split(",") if n] or None
        report = run_study(args.out, candidates=names, seeds=args.seeds, config=config)
        print(format_table(report))
        print(f"default by the rule ({report['selection']}): {report['default']}")
        _write_json(args.json, report)
        return 0
    from blindfed.recipes import distill_mnist

    report = distill_mnist(args.out, spec=spec, config=config)
    print(f"student: {report['spec']}")
    print(
        f"validation: teacher {report['teacher_validation_accuracy']:.2f}%  student "
        f"{report['student_validation_accuracy']:.2f}%;  test: teacher "
        f"{report['teacher_test_accuracy']:.2f}%  student {report['student_test_accuracy']:.2f}%"
        f"  (distillation {report['epoch_seconds']:.0f} s on {report['threads']} threads)"
    )
    for i, b in enumerate(report["blocks"]):
        print(
            f"  block {i}: depth {b['depth']}, ring 2^{b['log_n']} with {b['levels']} levels, "
            f"{b['refresh_rounds']} refresh rounds, {b['key_switches_per_sample']:.1f} key "
            "switches per sample"
        )
    print(f"student, checkpoint and report in {args.out}")
    _write_json(args.json, report)
    return 0


def adapt_cmd(args: argparse.Namespace) -> int:
    """One owner adapts the zoo student to scikit-learn's digits through the online phase."""
    import torch

    from blindfed.recipes import adapt_digits

    if args.threads:
        torch.set_num_threads(args.threads)
    set_num_threads(args.threads)
    report = adapt_digits(
        mode=args.mode,
        train_samples=args.train_samples,
        test_samples=args.test_samples,
        rank=args.rank,
        epochs=args.epochs,
        privacy=args.privacy,
        cache_dir=args.cache,
        seed=args.seed,
        provider_seed=args.provider_seed,
        progress=print,
    )
    print(
        f"{report['mode']}: {report['train_samples']} train / {report['test_samples']} test "
        f"digits in {report['groups']} groups of up to {report['samples_per_group']}; "
        f"revealed blocks per batch {report['revealed']}"
    )
    print(
        f"adapters {report['adapted_accuracy']:.1f}%  linear probing "
        f"{report['linear_probe_accuracy']:.1f}%  (same frozen student, same outputs)"
    )
    print(
        f"per sample per block: {report['seconds_per_sample_per_block']:.3g} s, "
        f"{report['upload_bytes_per_sample_per_block'] / 1e6:.3f} MB up, "
        f"{report['download_bytes_per_sample_per_block'] / 1e6:.3f} MB down"
    )
    if "max_abs_error_vs_simulate" in report:
        print(
            f"decrypted outputs vs the plaintext mirror: max |error| "
            f"{report['max_abs_error_vs_simulate']:.2e} over a range of "
            f"{report['output_range']:.1f}"
        )
    _write_json(args.json, report)
    return 0


def extraction_cmd(args: argparse.Namespace) -> int:
    """The model-extraction attack against each setting of the defences."""
    import torch

    from blindfed import zoo
    from blindfed.data import mnist
    from blindfed.protocol.extraction import SurrogateConfig, extraction_study

    if args.threads:
        torch.set_num_threads(args.threads)
    train, test = mnist("train"), mnist("test")
    n = args.samples
    reports = extraction_study(
        zoo.load_student(),
        (train.images[:n], train.labels[:n]),
        (test.images, test.labels),
        config=SurrogateConfig(epochs=args.epochs),
        seed=args.seed,
    )
    print(f"{'scenario':38} {'tied':>6} {'chain':28} {'last-block err':>14} {'agreement':>9}")
    for r in reports:
        chain = " ".join(r["chain"]) if r["chain"] else "-"
        err = "-" if r["last_block_error"] is None else f"{r['last_block_error']:.3f}"
        agreement = r["agreement_with_student"]
        agree = "-" if agreement is None else f"{agreement:.1f}%"
        print(f"{r['scenario']:38} {r['tied_to_inputs']:6.1%} {chain:28} {err:>14} {agree:>9}")
    _write_json(args.json, {"samples": n, "epochs": args.epochs, "scenarios": reports})
    return 0


def study_cmd(args: argparse.Namespace) -> int:
    """The paper's tables' shapes on digits (see :mod:`blindfed.fl.study`)."""
    from blindfed.fl.study import StudyConfig, run_study

    set_num_threads(args.threads)
    try:
        config = StudyConfig(
            out=args.out,
            owners=args.owners,
            rounds=args.rounds,
            seed=args.seed,
            tables=tuple(int(t) for t in args.tables.split(",") if t),
        )
    except ValueError as e:
        print(f"blindfed study: {e}", file=sys.stderr)
        return 2
    report = run_study(config)
    print(report["tables"])
    _write_json(args.json, report)
    return 0


def tune_cmd(args: argparse.Namespace) -> int:
    """Learning rates chosen on a validation split (see :mod:`blindfed.fl.tune`)."""
    from blindfed.fl.tune import TuneConfig, run_tune

    set_num_threads(args.threads)
    try:
        config = TuneConfig(
            out=args.out,
            owners=args.owners,
            alpha=args.alpha,
            seed=args.seed,
            rounds=args.rounds,
            fraction=args.fraction,
            **({"splits": args.splits} if args.splits is not None else {}),
            **({"parts": tuple(p for p in args.parts.split(",") if p)} if args.parts else {}),
        )
    except ValueError as e:
        print(f"blindfed tune: {e}", file=sys.stderr)
        return 2
    report = run_tune(config)
    print(json.dumps(report["chosen"], indent=1))
    _write_json(args.json, report)
    return 0


def main(argv: list[str] | None = None) -> int:
    from blindfed.fl.run import PRESETS

    parser = argparse.ArgumentParser(prog="blindfed", description=__doc__)
    parser.add_argument("--version", action="version", version=f"blindfed {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        "demo",
        help="the whole mission on the embedded default: owners, online phase, federation",
        description="Three data owners adapt the zoo student to their digits: the double-blind "
        "online phase (execute: CKKS), federated rounds with secure aggregation over Flower, "
        "plaintext baselines, and a report (Markdown, JSON, PNG) in --out. Running it again "
        "with the same --out resumes.",
    )
    p.add_argument("--out", default="blindfed-demo", help="output directory (default %(default)s)")
    p.add_argument("--owners", type=int, default=3, help="data owners (default 3)")
    p.add_argument("--rounds", type=int, default=50, help="federated rounds (default 50)")
    p.add_argument(
        "--mode",
        choices=["execute", "simulate"],
        default="execute",
        help="execute: CKKS on every sample (default); simulate: the plaintext mirror",
    )
    p.add_argument(
        "--runtime",
        choices=["auto", "flower", "local"],
        default="auto",
        help="flower: Flower's simulation runtime; local: in process; auto: flower if installed",
    )
    p.add_argument("--alpha", type=float, default=1.0, help="Dirichlet label skew (default 1)")
    p.add_argument("--train-samples", type=int, help="cap on all owners' training digits")
    p.add_argument("--test-samples", type=int, help="cap on all owners' test digits")
    p.add_argument("--rank", type=int, default=8, help="adapter rank (default 8)")
    p.add_argument("--local-epochs", type=int, default=5, help="local epochs per round")
    p.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        help="learning rates, server optimiser and readout: digits (the default, chosen on a "
        "validation split by blindfed tune) or paper (the paper's schedule for CIFAR)",
    )
    p.add_argument(
        "--readout",
        help="what the head reads of the last block: cls (the class token), mean (of the patch "
        "tokens) or cls+mean (default: the preset's)",
    )
    p.add_argument(
        "--distill-epochs",
        type=int,
        default=0,
        help="distil the student again for this many epochs (default 0: the shipped student)",
    )
    p.add_argument(
        "--no-baselines", dest="baselines", action="store_false", help="skip the baselines"
    )
    p.add_argument("--baseline-epochs", type=int, help="epochs of the trained baselines")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no bars")
    p.add_argument("--threads", type=int, default=0, help="worker threads (0: all cores)")
    p.add_argument("--seed", type=int, default=0, help="data split and training seed")
    p.add_argument("--json", help="also write the report here (it is always in --out)")
    p.set_defaults(func=demo)

    p = sub.add_parser(
        "distill", help="distil the zoo teacher into its FHE-friendly student (MNIST)"
    )
    p.add_argument("--out", default="distill-out", help="checkpoints, student and report here")
    # Defaults: blindfed.distill.DistillConfig's (not restated here; it needs torch).
    p.add_argument("--epochs", type=int, help="epochs, half of them layer-wise")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--tau", type=float, help="stage II temperature")
    p.add_argument("--seed", type=int, help="initialisation and batch order seed")
    p.add_argument(
        "--spec",
        default="default",
        help="the student's families: a preset (default, reference, paper) or key=value pairs "
        "over the default, e.g. 'softmax=quad denominator=constant norm=affine'",
    )
    p.add_argument("--softmax", help="numerator: quad, power:P, exp:chebyshev:D, exp:taylor:D")
    p.add_argument("--denominator", help="sum, sum:goldschmidt:N or constant")
    p.add_argument("--norm", help="layernorm, layernorm:newton:G:S or affine")
    p.add_argument("--gelu", help="quad (the paper's) or chebyshev:D")
    p.add_argument("--owner-norm", choices=["on", "off"], help="the owner normalises requests")
    p.add_argument("--warm-start", type=int, help="epochs that train only the families' constants")
    p.add_argument(
        "--range-ratio",
        type=float,
        help="keep narrow chains' inputs within this ratio (0: no range penalty)",
    )
    p.add_argument("--study", action="store_true", help="distil and measure every candidate")
    p.add_argument(
        "--candidates",
        help="study: comma-separated candidate names or spec texts (default: all candidates)",
    )
    p.add_argument("--seeds", type=int, default=3, help="study: seeds per candidate (default 3)")
    p.add_argument("--threads", type=int, default=0, help="worker threads (0: all cores)")
    p.add_argument("--json", help="also write the report here")
    p.set_defaults(func=distill_cmd)

    p = sub.add_parser(
        "adapt", help="one owner adapts the zoo student to digits through the online phase"
    )
    p.add_argument("--mode", choices=["simulate", "execute"], default="simulate")
    p.add_argument("--train-samples", type=int, help="a random subset (default: all 1,438)")
    p.add_argument("--test-samples", type=int, help="a random subset (default: all 359)")
    p.add_argument("--rank", type=int, default=8, help="adapter rank (default 8)")
    p.add_argument("--epochs", type=int, default=40, help="adapter epochs (default 40)")
    p.add_argument("--cache", help="cache block outputs here (an interrupted run resumes)")
    p.add_argument(
        "--no-privacy",
        dest="privacy",
        action="store_false",
        help="no block sampling or permutations (for comparisons only)",
    )
    p.add_argument("--seed", type=int, default=0, help="data subset and training seed")
    p.add_argument(
        "--provider-seed",
        type=int,
        help="reproducible revealed blocks and permutations (default: the provider's CSPRNG)",
    )
    p.add_argument("--threads", type=int, default=0, help="worker threads (0: all cores)")
    p.add_argument("--json", help="also write the report here")
    p.set_defaults(func=adapt_cmd)

    p = sub.add_parser(
        "tune",
        help="choose the federation's and the baselines' learning rates on a validation split",
        description="Every owner holds out part of its training digits as a validation split; "
        "BlindFed's federation (simulate mode), the centralised and the federated baselines "
        "run their candidate learning rates on the rest and are scored on it. The test split "
        "is never used. Resumable: running again with the same --out skips finished candidates.",
    )
    p.add_argument("--out", default="blindfed-tune", help="output directory (default %(default)s)")
    p.add_argument("--owners", type=int, default=3, help="data owners (default 3)")
    p.add_argument("--alpha", type=float, default=1.0, help="Dirichlet label skew (default 1)")
    p.add_argument("--rounds", type=int, default=50, help="federated rounds (default 50)")
    p.add_argument(
        "--fraction", type=float, default=0.2, help="validation share of each owner's training"
    )
    p.add_argument("--splits", type=int, help="validation splits BlindFed is scored on (default 3)")
    p.add_argument(
        "--parts", help="what to tune, comma-separated (default: every part of blindfed.fl.tune)"
    )
    p.add_argument("--seed", type=int, default=0, help="data split and training seed")
    p.add_argument("--threads", type=int, default=0, help="worker threads (0: all cores)")
    p.add_argument("--json", help="also write the results here (they are always in --out)")
    p.set_defaults(func=tune_cmd)

    p = sub.add_parser(
        "study",
        help="federation: the paper's Table 1 and Table 3 shapes on digits (simulate mode)",
        description="Table 1: full fine-tuning, LoRA, linear probing, BlindFed and BlindFed "
        "without block sampling, centralised and federated at Dirichlet alpha 100, 1, 0.01; "
        "Table 3: 10, 20 and 50 owners at alpha 1. Markdown, PNG and JSON in --out; "
        "resumable (running again with the same --out skips finished cells).",
    )
    p.add_argument("what", choices=["federation"])
    p.add_argument("--out", default="blindfed-study", help="output directory (default %(default)s)")
    p.add_argument("--owners", type=int, default=5, help="Table 1's owners (default 5)")
    p.add_argument("--rounds", type=int, default=50, help="federated rounds (default 50)")
    p.add_argument("--tables", default="1,3", help="which tables (default 1,3)")
    p.add_argument("--seed", type=int, default=0, help="data split and training seed")
    p.add_argument("--threads", type=int, default=0, help="worker threads (0: all cores)")
    p.add_argument("--json", help="also write the results here (they are always in --out)")
    p.set_defaults(func=study_cmd)

    p = sub.add_parser(
        "extraction", help="the model-extraction attack against each setting of the defences"
    )
    p.add_argument("--samples", type=int, default=4000, help="attacker's MNIST images")
    p.add_argument("--epochs", type=int, default=60, help="surrogate training epochs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    p.add_argument("--json", help="also write the report here")
    p.set_defaults(func=extraction_cmd)

    p = sub.add_parser("bench", help="benchmarks, each against a baseline in the same run")
    p.add_argument(
        "what",
        choices=["ckks", "block", "e2e"],
        help="ckks: our CKKS engine vs SEAL; block: one encrypted transformer block per sample "
        "vs the same block in plaintext; e2e: the online phase on the embedded default, "
        "execute vs simulate vs plaintext",
    )
    p.add_argument("--sets", type=_sets, help="ckks: LOG_N:LEVELS pairs, e.g. 14:7,15:18,16:18")
    p.add_argument("--repeats", type=int, default=5, help="ckks: timed repetitions per operation")
    p.add_argument(
        "--shapes",
        type=_names,
        default=["small", "vit_tiny"],
        help="block: shapes to run encrypted (small, vit_tiny, vit_base)",
    )
    p.add_argument(
        "--estimate",
        type=_names,
        default=["vit_base"],
        help="block: shapes to estimate from exact operation counts (empty: none)",
    )
    p.add_argument("--samples", type=int, help="e2e: digits (default: one ciphertext group)")
    p.add_argument(
        "--modes",
        type=lambda t: [m for m in t.split(",") if m],
        default=["execute", "simulate"],
        help="e2e: execute and/or simulate (default both)",
    )
    p.add_argument("--threads", type=int, default=0, help="worker threads (0: all cores)")
    p.add_argument("--json", help="also write the report as JSON here")
    p.set_defaults(func=bench)

    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except ckks.CkksError as err:
        print(f"blindfed: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
