"""The ``blindfed`` command: ``demo``, ``distill``, ``adapt``, ``extraction`` and ``bench``."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from blindfed import __version__, ckks, num_threads, set_num_threads


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
    """Owner and evaluator exchange keys and ciphertexts as bytes; the evaluator computes."""
    set_num_threads(args.threads)
    print(f"blindfed {__version__} demo: a data owner and the provider, over bytes")
    print("(federated adaptation across several owners comes next)\n")
    started = time.perf_counter()
    params = ckks.Parameters(args.log_n, args.levels)
    model = _demo_model() if args.model else None
    print(f"parameters: {params}  threads={num_threads()}")

    t = time.perf_counter()
    owner = ckks.SecretKey.generate(params)
    bundle = owner.evaluation_keys(rotations=[1, 2, 4])
    bundle_bytes = bundle.to_bytes()
    print(
        f"owner: keys generated in {time.perf_counter() - t:.2f} s; ships "
        f"{len(bundle_bytes) / 2**20:.1f} MiB of evaluation keys (secret key stays local)"
    )

    rng = np.random.default_rng(args.seed)
    x = rng.uniform(-2.0, 2.0, params.slots)
    t = time.perf_counter()
    wire = owner.encrypt(x).to_bytes()
    print(
        f"owner: encrypted {x.size} values in {time.perf_counter() - t:.3f} s; ciphertext "
        f"{len(wire) / 2**20:.2f} MiB (seeded, half size)"
    )

    t = time.perf_counter()
    keys = ckks.EvaluationKeys.from_bytes(params, bundle_bytes)
    ct = ckks.Ciphertext.from_bytes(params, wire, keys=keys)
    # The paper's GELU stand-in, Quad(x) = 0.125 x^2 + 0.25 x + 0.5, then a sum over
    # windows of 8 slots by rotations: the shape of the provider's work on an activation.
    quad = ct * ct * 0.125 + ct * 0.25 + 0.5
    window = quad
    for step in (1, 2, 4):
        window = window + window.rotate(step)
    reply = window.to_bytes()
    print(
        f"provider: evaluated Quad(x) and an 8-slot window sum in {time.perf_counter() - t:.2f}"
        f" s on ciphertexts (level {ct.level} -> {window.level}); reply "
        f"{len(reply) / 2**20:.2f} MiB"
    )

    result = owner.decrypt(ckks.Ciphertext.from_bytes(params, reply))
    q = 0.125 * x**2 + 0.25 * x + 0.5
    expected = sum(np.roll(q, -k) for k in range(8))
    error = float(np.max(np.abs(result - expected)))
    print(f"owner: decrypted; max |error| vs numpy = {error:.2e} ({-np.log2(error):.1f} bits)")
    report = {
        "parameters": repr(params),
        "threads": num_threads(),
        "max_abs_error": error,
        "evaluation_key_bytes": len(bundle_bytes),
        "ciphertext_bytes": len(wire),
        "reply_bytes": len(reply),
    }
    ok = error < 1e-3
    if model is not None:
        report["model"] = model
    if args.block:
        report["block"] = _demo_block(args.seed)
        ok = ok and report["block"]["error_relative_to_range"] < 1e-3
    if model is not None and model["shown"]:
        report["online"] = _demo_online(args.seed)
    report["seconds"] = time.perf_counter() - started
    print(f"\ntotal {report['seconds']:.1f} s")
    _write_json(args.json, report)
    return 0 if ok else 1


def _demo_model() -> dict:
    """The embedded default: the zoo teacher, its shipped student, and the student's plan."""
    try:
        import torch

        from blindfed import zoo
        from blindfed.data import mnist
        from blindfed.distill import accuracy
    except ImportError as err:
        print(f"model: not shown, it needs the torch extra ({err}): pip install 'blindfed[torch]'")
        return {"shown": False, "reason": str(err)}
    t = time.perf_counter()
    teacher, student = zoo.load("mnist_vit"), zoo.load_student("mnist_vit")
    test = mnist("test")
    images, labels = torch.from_numpy(test.images), torch.from_numpy(test.labels)
    teacher_accuracy = accuracy(teacher, images, labels)
    student_accuracy = accuracy(student, images, labels)
    plan = student.export_blocks()[0].plan()
    c = teacher.config
    print(
        f"model: the zoo ViT ({c.tokens} tokens, width {c.width}, {c.depth} blocks) scores "
        f"{teacher_accuracy:.1f}% on {len(labels)} held-out MNIST images; its FHE-friendly "
        f"student {student_accuracy:.1f}% (in the clear, {time.perf_counter() - t:.1f} s)"
    )
    per_sample = plan["cost"]["key_switches"] / plan["samples_per_group"]
    print(
        f"model: one student block under encryption: ring 2^{plan['log_n']}, "
        f"{plan['levels']} levels, {plan['samples_per_group']} samples per ciphertext group, "
        f"{per_sample:.1f} key switches per sample (predicted before any key exists)\n"
    )
    return {
        "shown": True,
        "teacher_test_accuracy": teacher_accuracy,
        "student_test_accuracy": student_accuracy,
        "block_log_n": plan["log_n"],
        "block_levels": plan["levels"],
        "block_key_switches_per_sample": per_sample,
    }


def _demo_online(seed: int) -> dict:
    """The online phase on the embedded default, in simulate mode (seconds, not an hour)."""
    from blindfed.recipes import adapt_digits

    print("\nonline phase: one owner adapts the student to scikit-learn's digits (simulate mode)")
    t = time.perf_counter()
    report = adapt_digits(mode="simulate", seed=seed, provider_seed=seed)
    print(
        f"online: {report['train_samples']} training digits through the provider block by "
        f"block, revealed blocks per batch {report['revealed']}; adapters "
        f"{report['adapted_accuracy']:.1f}% vs linear probing "
        f"{report['linear_probe_accuracy']:.1f}% on {report['test_samples']} held-out digits "
        f"({time.perf_counter() - t:.1f} s; `blindfed adapt --mode execute` runs it on CKKS)"
    )
    return report


def _demo_block(seed: int) -> dict:
    """One FHE-friendly transformer block on ciphertexts, with the masked refreshes answered
    by the owner, checked against the f64 reference."""
    from blindfed.block import Block, PackedBatch, random_weights

    print("\nencrypted transformer block (9 tokens, width 16, 2 heads, MLP 32), 4 samples")
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(1, 9, 16)) + 0.5 * rng.normal(size=(4, 9, 16))
    t = time.perf_counter()
    block = Block(random_weights(16, 32, seed=seed), tokens=9, heads=2).calibrated(x)
    plan = block.plan()
    params = plan["parameters"]
    print(
        f"provider: calibrated the approximations and planned in {time.perf_counter() - t:.2f} s:"
        f" {params}, {plan['samples_per_group']} samples per ciphertext group, predicted"
        f" {plan['cost']['key_switches']} key switches and {plan['cost']['refresh_rounds']}"
        " masked refreshes"
    )
    t = time.perf_counter()
    owner = ckks.SecretKey.generate(params)
    keys = owner.evaluation_keys(rotations=plan["rotation_steps"], conjugate=True)
    upload = PackedBatch.encrypt(owner, x).to_bytes()
    print(
        f"owner: keys and encryption in {time.perf_counter() - t:.1f} s; ships"
        f" {len(keys.to_bytes()) / 2**20:.0f} MiB of keys once, {len(upload) / 2**20:.2f} MiB of"
        " activations"
    )
    t = time.perf_counter()
    batch = PackedBatch.from_bytes(params, upload)
    out, cost = block.evaluate(batch, keys, owner)
    reply = out.at_level(0).to_bytes()
    seconds = time.perf_counter() - t
    print(
        f"provider: evaluated the block in {seconds:.1f} s ({cost['key_switches']} key switches,"
        f" {cost['refresh_rounds']} masked refreshes of {cost['refreshed_ciphertexts']}"
        f" ciphertexts); reply {len(reply) / 2**20:.2f} MiB"
    )
    y = PackedBatch.from_bytes(params, reply).decrypt(owner)
    want = block.forward(x)
    error = float(np.max(np.abs(y - want)))
    relative = error / float(np.ptp(want))
    print(
        f"owner: decrypted; max |error| vs the f64 block = {error:.2e}"
        f" ({relative:.1e} of the range)"
    )
    return {
        "parameters": repr(params),
        "seconds": seconds,
        "key_switches": cost["key_switches"],
        "predicted_key_switches": plan["cost"]["key_switches"],
        "upload_bytes": len(upload),
        "reply_bytes": len(reply),
        "max_abs_error": error,
        "error_relative_to_range": relative,
    }


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
    raise AssertionError(args.what)


def distill_cmd(args: argparse.Namespace) -> int:
    """Distils the zoo teacher into its FHE-friendly student on MNIST and reports accuracy."""
    import torch

    from blindfed.distill import DistillConfig
    from blindfed.recipes import approximation_choice, distill_mnist

    if args.threads:
        torch.set_num_threads(args.threads)
    set_num_threads(args.threads)
    try:
        approximations = {
            "exp": approximation_choice("exp", args.exp),
            "gelu": approximation_choice("gelu", args.gelu),
            "inv_sqrt": approximation_choice("inv_sqrt", args.inv_sqrt),
        }
        config = DistillConfig(
            epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, tau=args.tau
        )
    except ValueError as err:
        print(f"blindfed: {err}", file=sys.stderr)
        return 2
    report = distill_mnist(args.out, approximations=approximations, config=config)
    print(
        f"teacher {report['teacher_test_accuracy']:.2f}%  student "
        f"{report['student_test_accuracy']:.2f}%  (drop {report['accuracy_drop_points']:.2f} "
        f"points)  distillation {report['epoch_seconds']:.0f} s on "
        f"{report['threads']} threads"
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="blindfed", description=__doc__)
    parser.add_argument("--version", action="version", version=f"blindfed {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="run the end-to-end demo on the embedded default")
    p.add_argument("--log-n", type=int, default=14, help="log2 ring degree (default 14)")
    p.add_argument("--levels", type=int, default=7, help="multiplicative levels (default 7)")
    p.add_argument("--threads", type=int, default=0, help="worker threads (0: all cores)")
    p.add_argument("--seed", type=int, default=0, help="seed of the demo's input values")
    p.add_argument(
        "--no-block",
        dest="block",
        action="store_false",
        help="skip the encrypted transformer block (the CKKS round trip only)",
    )
    p.add_argument(
        "--no-model",
        dest="model",
        action="store_false",
        help="skip the embedded default model (zoo teacher and student accuracy, block plan)",
    )
    p.add_argument("--json", help="also write a JSON report here")
    p.set_defaults(func=demo)

    p = sub.add_parser(
        "distill", help="distil the zoo teacher into its FHE-friendly student (MNIST)"
    )
    p.add_argument("--out", default="distill-out", help="checkpoints, student and report here")
    p.add_argument("--epochs", type=int, default=30, help="epochs, half layer-wise (default 30)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--tau", type=float, default=5.0, help="stage II temperature (default 5)")
    p.add_argument("--exp", default="chebyshev:15", help="chebyshev:D, taylor:D or squaring:R")
    p.add_argument("--gelu", default="quad", help="quad (the paper's) or chebyshev:D")
    p.add_argument("--inv-sqrt", default="31:2", help="GUESS_DEGREE:NEWTON_STEPS for 1/sqrt")
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

    p = sub.add_parser("bench", help="benchmarks, each against a baseline in the same run")
    p.add_argument(
        "what",
        choices=["ckks", "block"],
        help="ckks: our CKKS engine vs SEAL; block: one encrypted transformer block per sample",
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
