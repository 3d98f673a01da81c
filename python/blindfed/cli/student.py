"""``blindfed distill``, ``blindfed adapt`` and ``blindfed extraction``: the student's commands."""

from __future__ import annotations

import argparse
import dataclasses

from blindfed import set_num_threads
from blindfed.cli.common import add_model_option, usage_errors, write_json


def _spec_text(args: argparse.Namespace) -> str:
    """``--spec`` with the per-slot options appended (later keys win; parsed in the core). A
    preset's name becomes ``preset=NAME``: the core reads a name alone, not before pairs."""
    parts = [args.spec if "=" in args.spec else f"preset={args.spec}"]
    for key in ("softmax", "denominator", "norm", "gelu", "owner_norm"):
        value = getattr(args, key)
        if value is not None:
            parts.append(f"{key.replace('_', '-')}={value}")
    return " ".join(parts)


def distill_cmd(args: argparse.Namespace) -> int:
    """Distils the zoo teacher into its FHE-friendly student on MNIST and reports accuracy;
    with ``--study``, every candidate family (see :mod:`blindfed.experiments.bench.students`)."""
    import torch

    from blindfed.approx import StudentSpec
    from blindfed.distill import DistillConfig

    if args.threads:
        torch.set_num_threads(args.threads)
    set_num_threads(args.threads)
    with usage_errors():
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
        given = {k: v for k, v in given.items() if v is not None}
        if args.model == "dinov2-small":
            if args.study:
                raise ValueError("--study distils the MNIST ViT's candidates only")
            from blindfed.experiments.recipes import DINOV2_DISTILL

            # Its schedule is layer-wise throughout: epochs given are all stage I.
            epochs = {"stage1_epochs": given["epochs"]} if "epochs" in given else {}
            config = dataclasses.replace(DINOV2_DISTILL, **given, **epochs)
        else:
            config = DistillConfig(**given)
    if args.study:
        from blindfed.experiments.bench.students import format_table, run_study

        names = [n for n in (args.candidates or "").split(",") if n] or None
        report = run_study(args.out, candidates=names, seeds=args.seeds, config=config)
        print(format_table(report))
        print(f"default by the rule ({report['selection']}): {report['default']}")
        write_json(args.json, report)
        return 0
    if args.model == "dinov2-small":
        from blindfed.experiments.recipes import distill_dinov2

        report = distill_dinov2(args.out, spec=spec, config=config)
        a = report["agreement"]
        print(f"student: {report['spec']}")
        print(
            f"agreement with DINOv2-S on {a['samples']} validation MNIST images: final "
            f"class-token cosine {a['final_class_token_cosine']:.3f}; relative error per block "
            + ", ".join(f"{e:.3f}" for e in a["relative_error_per_block"])
            + f"  (distillation {report['epoch_seconds']:.0f} s on {report['threads']} threads)"
        )
    else:
        from blindfed.experiments.recipes import distill_mnist

        report = distill_mnist(args.out, spec=spec, config=config)
        print(f"student: {report['spec']}")
        print(
            f"validation: teacher {report['teacher_validation_accuracy']:.2f}%  student "
            f"{report['student_validation_accuracy']:.2f}%;  test: teacher "
            f"{report['teacher_test_accuracy']:.2f}%  student "
            f"{report['student_test_accuracy']:.2f}%  (distillation "
            f"{report['epoch_seconds']:.0f} s on {report['threads']} threads)"
        )
    _print_blocks(report)
    print(f"student, checkpoint and report in {args.out}")
    write_json(args.json, report)
    return 0


def _print_blocks(report: dict) -> None:
    """One line per block of a distillation report: its depth and encrypted plan."""
    for i, b in enumerate(report["blocks"]):
        print(
            f"  block {i}: depth {b['depth']}, ring 2^{b['log_n']} with {b['levels']} levels, "
            f"{b['refresh_rounds']} refresh rounds, {b['key_switches_per_sample']:.1f} key "
            "switches per sample"
        )


def adapt_cmd(args: argparse.Namespace) -> int:
    """One owner adapts the zoo student to scikit-learn's digits through the online phase."""
    import torch

    from blindfed.experiments.recipes import adapt_digits

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
    write_json(args.json, report)
    return 0


def extraction_cmd(args: argparse.Namespace) -> int:
    """The model-extraction attack against each setting of the defences."""
    import torch

    from blindfed import zoo
    from blindfed.data import mnist
    from blindfed.experiments.extraction import SurrogateConfig, extraction_study

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
    write_json(args.json, {"samples": n, "epochs": args.epochs, "scenarios": reports})
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Adds the commands to the ``blindfed`` parser."""
    p = sub.add_parser(
        "distill", help="distil the zoo teacher into its FHE-friendly student (MNIST)"
    )
    add_model_option(p, "the teacher: the zoo's MNIST ViT or the opt-in DINOv2-S/14")
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
        "extraction", help="the model-extraction attack against each setting of the defences"
    )
    p.add_argument("--samples", type=int, default=4000, help="attacker's MNIST images")
    p.add_argument("--epochs", type=int, default=60, help="surrogate training epochs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    p.add_argument("--json", help="also write the report here")
    p.set_defaults(func=extraction_cmd)
