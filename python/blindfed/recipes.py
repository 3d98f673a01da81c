"""End-to-end recipes behind the ``blindfed`` command (each one a function you can also call).

:func:`distill_mnist`: the provider's offline stage on the embedded default. The zoo's MNIST
ViT is the teacher, the train split's fit part (3,500 images) the auxiliary data; the
FHE-friendly student is distilled in two stages, checkpointed every epoch (re-running with the
same output folder resumes), then both are measured on the validation part (500, what choices
are made on) and on the test split (1,000, reported only), and the student's blocks are planned
for encryption."""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from blindfed.approx import StudentSpec, student_spec
from blindfed.data import mnist
from blindfed.distill import DistillConfig, accuracy, distill
from blindfed.nn.student import Student

__all__ = ["distill_mnist"]


def distill_mnist(
    out: str | Path,
    *,
    spec: str | StudentSpec | None = None,
    config: DistillConfig | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Distils the zoo teacher into a student with the families of ``spec`` (the default
    student's if None) on MNIST; returns (and writes) a report.

    ``out`` receives the per-epoch checkpoint, ``student.pt`` and ``report.json``.
    """
    from blindfed import zoo

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    config = config or DistillConfig()
    spec = student_spec(spec)
    torch.manual_seed(config.seed)
    teacher = zoo.load("mnist_vit")
    fit, validation, test = mnist("fit"), mnist("validation"), mnist("test")
    x = torch.from_numpy(fit.images)
    xv, yv = torch.from_numpy(validation.images), torch.from_numpy(validation.labels)
    xt, yt = torch.from_numpy(test.images), torch.from_numpy(test.labels)
    student = Student.from_teacher(teacher, spec)
    t0 = time.perf_counter()
    history = distill(teacher, student, x, config=config, checkpoint_dir=out, progress=progress)
    seconds = time.perf_counter() - t0
    student.save(out / "student.pt")
    plans = [b.plan() for b in student.export_blocks()]
    teacher_accuracy = accuracy(teacher, xt, yt)
    # Owner-normalised blocks follow the provider's draws: seeded, so runs compare.
    student.pattern_rng.seed(config.seed)
    validation_accuracy = accuracy(student, xv, yv)
    student.pattern_rng.seed(config.seed)
    student_accuracy = accuracy(student, xt, yt)
    report = {
        "teacher": "zoo:mnist_vit",
        "spec": spec.text,
        "mode": "plaintext student (torch); the encrypted evaluator runs the same polynomials",
        "aux_data": "mnist fit split (3,500 of the train split)",
        "teacher_validation_accuracy": accuracy(teacher, xv, yv),
        "student_validation_accuracy": validation_accuracy,
        "teacher_test_accuracy": teacher_accuracy,
        "student_test_accuracy": student_accuracy,
        "accuracy_drop_points": teacher_accuracy - student_accuracy,
        "distill_seconds_this_call": seconds,
        "epoch_seconds": sum(h["seconds"] for h in history),
        "threads": torch.get_num_threads(),
        "config": asdict(config),
        "approximations": {
            name: {"approximation": m.approximation.text, "max_error": m.approximation.max_error()}
            for name, m in student.approximations()
        },
        "test_out_of_range": sum(student.out_of_range([xt]).values()),
        "blocks": [
            {
                "depth": p["depth"],
                "log_n": p["log_n"],
                "levels": p["levels"],
                "refresh_rounds": p["cost"]["refresh_rounds"],
                "key_switches_per_sample": p["cost"]["key_switches"] / p["samples_per_group"],
            }
            for p in plans
        ],
        "history": history,
    }
    (out / "report.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    return report


def digits_for_mnist_model(split: str = "train", *, seed: int = 0) -> Any:
    """scikit-learn's 8x8 digits laid out like MNIST: upsampled to 20x20 and centred in 28x28
    on the background value (the embedded default owner data)."""
    from blindfed.data import Dataset, digits

    d = digits(split, seed=seed)
    x = torch.as_tensor(d.images, dtype=torch.float64)
    big = torch.nn.functional.interpolate(x, size=(20, 20), mode="bilinear", align_corners=False)
    out = torch.nn.functional.pad(big, (4, 4, 4, 4), value=float(x.min()))
    return Dataset(out.numpy(), d.labels, d.classes)


def adapt_digits(
    *,
    mode: str = "simulate",
    train_samples: int | None = None,
    test_samples: int | None = None,
    rank: int = 8,
    epochs: int = 40,
    privacy: bool = True,
    cache_dir: str | None = None,
    seed: int = 0,
    provider_seed: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """One owner adapts the zoo student to scikit-learn's digits through the online protocol.

    The training images go through in batches of one ciphertext group each (each batch draws
    its own revealed blocks), the test images as inference (no labels sent, order kept).
    Returns accuracies (adapters vs linear probing on the same cached outputs), seconds and
    bytes per sample per block, which blocks were revealed and, in ``execute`` mode, how far
    the decrypted outputs are from the plaintext mirror's. ``mode="simulate"`` runs the
    plaintext mirror (same polynomials) and says so in the report. ``provider_seed`` makes the
    provider's draws (revealed blocks, permutations) reproducible; the default is its CSPRNG.
    """
    from blindfed import zoo
    from blindfed.nn.adapter import AdaptedClassifier, TrainConfig, accuracy, train
    from blindfed.protocol import DataOwner, Provider
    from blindfed.protocol.extraction import match_windows

    say = progress or (lambda _: None)
    train_set = digits_for_mnist_model("train", seed=seed)
    test_set = digits_for_mnist_model("test", seed=seed)
    rng = np.random.default_rng(seed)

    def subset(d: Any, n: int | None) -> tuple[np.ndarray, np.ndarray]:
        idx = np.sort(rng.permutation(len(d.labels))[:n]) if n else np.arange(len(d.labels))
        return d.images[idx], d.labels[idx]

    (xtr, ytr), (xte, yte) = subset(train_set, train_samples), subset(test_set, test_samples)
    student = zoo.load_student()
    draws = None if provider_seed is None else random.Random(provider_seed)
    provider = Provider(student, mode=mode, privacy=privacy, rng=draws)
    group = provider.samples_per_group
    owner = DataOwner("digits-owner", cache_dir=cache_dir)
    provider.register(owner.hello(provider.offer()))
    batches = [
        (f"train-{i // group}", xtr[i : i + group], ytr[i : i + group])
        for i in range(0, len(ytr), group)
    ]
    batches += [(f"test-{i // group}", xte[i : i + group], None) for i in range(0, len(yte), group)]

    def run(owner: DataOwner, forward: Any) -> tuple[list[Any], list[Any]]:
        parts = []
        for name, x, y in batches:
            t0 = time.perf_counter()
            parts.append(owner.forward(forward, x, y, batch_id=name))
            say(f"{name}: {len(x)} samples in {time.perf_counter() - t0:.1f} s")
        train_batches = sum(y is not None for _, _, y in batches)
        return parts[:train_batches], parts[train_batches:]

    t = time.perf_counter()
    train_parts, test_parts = run(owner, provider.forward)
    seconds = time.perf_counter() - t
    blocks = student.config.depth
    samples = len(ytr) + len(yte)
    groups = len(train_parts) + len(test_parts)
    train_x = np.concatenate([p.outputs for p in train_parts])
    train_y = np.concatenate([p.labels for p in train_parts])
    test_x = np.concatenate([p.outputs for p in test_parts])
    results: dict[str, Any] = {
        "mode": mode,
        "train_samples": len(ytr),
        "test_samples": len(yte),
        "samples_per_group": group,
        "groups": groups,
        "revealed": [np.flatnonzero(p.revealed).tolist() for p in train_parts + test_parts],
        "forward_seconds": round(seconds, 2),
        "seconds_per_sample_per_block": seconds / samples / blocks,
        "upload_bytes_per_sample_per_block": owner.sent_bytes / samples / blocks,
        "download_bytes_per_sample_per_block": owner.received_bytes / samples / blocks,
    }
    if mode == "execute":
        # The same batches through the plaintext mirror, every block revealed: the decrypted
        # outputs must match it wherever they were revealed.
        mirror = Provider(student, mode="simulate", privacy=False, parameters=provider.parameters)
        reference = DataOwner("reference")
        mirror.register(reference.hello(mirror.offer()))
        ref_train, ref_test = run(reference, mirror.forward)
        errors, spans = [], []
        for got, want in zip(train_parts + test_parts, ref_train + ref_test, strict=True):
            shown, expected = got.revealed, want.outputs
            # Within a window the owner's order is the provider's secret first permutation:
            # pair samples by their last block (scoring only).
            expected = expected[match_windows(got.outputs[:, -1], expected[:, -1], got.windows)]
            errors.append(np.abs(got.outputs[:, shown] - expected[:, shown]).max())
            spans.append(np.ptp(expected[:, shown]))
        results["max_abs_error_vs_simulate"] = float(max(errors))
        results["output_range"] = float(max(spans))
    for name, r in (("adapted", rank), ("linear_probe", 0)):
        torch.manual_seed(seed)
        model = AdaptedClassifier(blocks, student.config.width, 10, rank=r)
        train(model, train_x, train_y, TrainConfig(epochs=epochs, seed=seed))
        results[f"{name}_accuracy"] = accuracy(model, test_x, yte)
    return results
