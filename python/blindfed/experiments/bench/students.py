"""``blindfed distill --study``: which student families are worth their levels.

For every candidate :class:`~blindfed.approx.StudentSpec`, one row: the student distilled from
the zoo teacher with it (3 seeds) and measured on the validation part of MNIST's train split
(what the default is chosen on) and on the 1,000 test images (reported only); the levels of
its blocks and the ring the planner picks; key switches and predicted seconds per sample per
block for the ViT-Tiny and ViT-B/16@384 shapes (the tracer's exact operation counts times unit
costs measured on this machine at the planned parameters); and the measured error of one
encrypted block against its plaintext mirror (execute vs simulate).

The rule for the default student: the fewest predicted seconds per sample per ViT-Tiny block
among the candidates whose mean validation accuracy is within ``tolerance`` points of the
reference student's. Every distillation checkpoints into ``out``: a second run resumes.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from blindfed.approx import StudentSpec

__all__ = [
    "CANDIDATES",
    "choose_default",
    "format_owner_table",
    "format_table",
    "run_study",
    "shape_costs",
]

#: Candidate families, by name; each text is read over the reference preset.
CANDIDATES: dict[str, str] = {
    "reference": "reference",
    "paper": "paper",
    "2quad": "softmax=quad",
    "power4": "softmax=power:4",
    "2quad/const": "softmax=quad denominator=constant",
    "2quad+affine": "softmax=quad norm=affine",
    "2quad/const+affine": "softmax=quad denominator=constant norm=affine",
    "2quad+owner": "softmax=quad owner-norm=on",
    "2quad/const+affine+owner": "softmax=quad denominator=constant norm=affine owner-norm=on",
    "2quad+cheb4": "softmax=quad gelu=chebyshev:4",
}

#: Shapes whose cost the tracer predicts for every candidate.
SHAPES = ("vit_tiny", "vit_base")


def spec_of(name: str) -> StudentSpec:
    """The spec of candidate ``name`` (or a spec text), read over the reference preset."""
    return StudentSpec(CANDIDATES.get(name, name), base="reference")


def shape_costs(
    spec: StudentSpec,
    shape: str,
    *,
    shift: float | None = None,
    units: dict[tuple[int, int], dict[str, float]] | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """The tracer's prediction for one block of ``shape`` with ``spec``'s families: random
    weights at a trained ViT's scale, ranges calibrated on ViT-like activations, a power's
    shift from a student if given. ``units`` caches unit costs per (log_n, levels)."""
    from blindfed.experiments.bench.block import (
        estimate_seconds,
        student_block,
        traffic,
        unit_costs,
    )

    block = student_block(shape, spec, seed=seed, shift=shift)
    plan = block.plan()
    key = (plan["log_n"], plan["levels"])
    cache = units if units is not None else {}
    if key not in cache:
        cache[key] = unit_costs(plan["parameters"])
    per = plan["samples_per_group"]
    cost = plan["cost"]
    bytes_per_sample = traffic(plan, block.shape)
    out = {
        "log_n": plan["log_n"],
        "levels": plan["levels"],
        "secure": plan["parameters"].is_secure,
        "samples_per_group": per,
        "depth": plan["depth"],
        "key_switches_per_sample": cost["key_switches"] / per,
        "refresh_rounds": cost["refresh_rounds"],
        "refreshed_ciphertexts_per_sample": cost["refreshed_ciphertexts"] / per,
        "predicted_seconds_per_sample": estimate_seconds(cost, cache[key]) / per,
        "upload_bytes_per_sample": bytes_per_sample["upload_bytes_per_sample"],
    }
    if spec.owner_norm:
        # A request's first block with its input normalised by the owner: what it saves at
        # the provider, against the second upload it costs.
        normalised = plan["normalised_cost"]
        out["owner_normalised"] = {
            "key_switches_per_sample": normalised["key_switches"] / per,
            "refresh_rounds": normalised["refresh_rounds"],
            "predicted_seconds_per_sample": estimate_seconds(normalised, cache[key]) / per,
            "extra_upload_bytes_per_sample": bytes_per_sample["input_bytes_per_sample"],
        }
    return out


def _encrypted_error(student: Any, images: np.ndarray) -> dict[str, Any]:
    """Block 0 of ``student`` on one ciphertext group of ``images``: execute vs the mirror."""
    import torch

    from blindfed import ckks
    from blindfed.block import PackedBatch

    block = student.export_blocks()[0]
    plan = block.plan()
    params = plan["parameters"]
    with torch.no_grad():
        x = student.embed(torch.as_tensor(images)).double().numpy()
    x = x[: plan["samples_per_group"]]
    sk = ckks.SecretKey.generate(params)
    keys = sk.evaluation_keys(rotations=plan["rotation_steps"], conjugate=plan["conjugate"])
    t = time.perf_counter()
    out, _ = block.evaluate(PackedBatch.encrypt(sk, x), keys, sk)
    seconds = time.perf_counter() - t
    got = out.decrypt(sk)
    want = block.mirror(x, params=params)
    err = float(np.max(np.abs(got - want)))
    return {
        "samples": len(x),
        "log_n": plan["log_n"],
        "levels": plan["levels"],
        "seconds": seconds,
        "max_abs_error": err,
        "error_relative_to_range": err / float(np.ptp(want)),
    }


def _directory(out: Path, name: str) -> Path:
    directory = out / name.replace("/", "_").replace("+", "_").replace(" ", "_")
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def _row(
    name: str,
    out: Path,
    seeds: int,
    config: Any,
    units: dict,
    log: Callable[[str], None],
) -> dict[str, Any]:
    from dataclasses import replace

    from blindfed.data import mnist
    from blindfed.experiments.recipes import distill_mnist
    from blindfed.nn.student import Student

    spec = spec_of(name)
    directory = _directory(out, name)
    path = directory / "row.json"
    if path.exists():
        row = json.loads(path.read_text())
        if row.get("spec") == spec.text and row.get("seeds") == seeds:
            log(f"{name}: {'failed' if 'error' in row else 'done'} before ({path})")
            return row
    runs = []
    for seed in range(seeds):
        log(f"{name}: distilling, seed {seed} ({spec.text})")
        report = distill_mnist(
            directory / f"seed-{seed}", spec=spec, config=replace(config, seed=seed)
        )
        runs.append(report)
    first = Student.load(directory / "seed-0" / "student.pt").eval()
    shifts = [
        m.shift.item() for _, m in first.approximations() if getattr(m, "shift", None) is not None
    ]
    shift = statistics.mean(shifts) if shifts else None
    log(f"{name}: tracing {', '.join(SHAPES)}; one encrypted block")
    row: dict[str, Any] = {
        "name": name,
        "spec": spec.text,
        "seeds": seeds,
        "validation_accuracy": [r["student_validation_accuracy"] for r in runs],
        "test_accuracy": [r["student_test_accuracy"] for r in runs],
        "distill_seconds": [r["epoch_seconds"] for r in runs],
        "mnist_blocks": runs[0]["blocks"],
        "shift": shift,
        "shapes": {s: shape_costs(spec, s, shift=shift, units=units) for s in SHAPES},
        "encrypted_block": _encrypted_error(first, mnist("validation").images),
    }
    row["mean_validation_accuracy"] = statistics.mean(row["validation_accuracy"])
    row["mean_test_accuracy"] = statistics.mean(row["test_accuracy"])
    path.write_text(json.dumps(row, indent=2) + "\n")
    return row


def choose_default(rows: list[dict[str, Any]], tolerance: float = 0.5) -> str:
    """The candidate with the fewest predicted seconds per ViT-Tiny sample among those whose
    mean validation accuracy is within ``tolerance`` points of the reference's."""
    rows = [r for r in rows if "error" not in r]
    reference = next(r for r in rows if r["name"] == "reference")
    floor = reference["mean_validation_accuracy"] - tolerance
    eligible = [r for r in rows if r["mean_validation_accuracy"] >= floor]

    def cost(row: dict[str, Any]) -> tuple[float, float]:
        # Ties (owner normalisation changes no encrypted operation) go to the smaller upload.
        tiny = row["shapes"]["vit_tiny"]
        extra = tiny.get("owner_normalised", {}).get("extra_upload_bytes_per_sample", 0.0)
        return round(tiny["predicted_seconds_per_sample"], 6), extra

    return min(eligible, key=cost)["name"]


def run_study(
    out: str | Path,
    *,
    candidates: list[str] | None = None,
    seeds: int = 3,
    config: Any = None,
    tolerance: float = 0.5,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """The study; rows are written to ``out`` as they finish (a second run resumes)."""
    from blindfed import num_threads
    from blindfed.distill import DistillConfig

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    names = candidates or list(CANDIDATES)
    if "reference" not in names:
        names = ["reference", *names]
    config = config or DistillConfig()
    units: dict = {}
    t = time.perf_counter()
    rows = []
    for name in names:
        try:
            rows.append(_row(name, out, seeds, config, units, log))
        except Exception as e:  # one candidate's failure is a finding, not the study's end
            log(f"{name}: failed: {e}")
            row = {"name": name, "spec": spec_of(name).text, "seeds": seeds, "error": str(e)}
            # Kept like a finished row: a re-run reports it (remove the file to try again).
            (_directory(out, name) / "row.json").write_text(json.dumps(row, indent=2) + "\n")
            rows.append(row)
    report = {
        "threads": num_threads(),
        "seeds": seeds,
        "selection": (
            f"fewest predicted s per ViT-Tiny sample among candidates within {tolerance} "
            "points of the reference's mean validation accuracy"
        ),
        "default": choose_default(rows, tolerance),
        "seconds_this_call": time.perf_counter() - t,
        "rows": rows,
    }
    (out / "study.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "study.md").write_text(format_table(report) + "\n\n" + format_owner_table(report) + "\n")
    return report


def _pm(values: list[float]) -> str:
    mean = statistics.mean(values)
    spread = (max(values) - min(values)) / 2 if len(values) > 1 else math.nan
    return f"{mean:.2f}" + ("" if math.isnan(spread) else f" ± {spread:.2f}")


def format_table(report: dict[str, Any]) -> str:
    """The study as a Markdown table (accuracy: mean ± half the spread over seeds)."""
    lines = [
        "| candidate | validation % | test % | levels per block: attention + MLP; 1/sqrt, 1/x "
        "chains (deepest step) "
        "| ViT-Tiny: ring, KS / sample, s / sample | ViT-B/16: ring, KS / sample, s / sample "
        "| MNIST block encrypted: s / sample, error / range |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in report["rows"]:
        if "error" in r:
            lines.append(f"| {r['name']} | failed: {r['error']} | | | | | |")
            continue
        d = r["mnist_blocks"][0]["depth"]
        tiny, base = r["shapes"]["vit_tiny"], r["shapes"]["vit_base"]
        enc = r["encrypted_block"]
        mark = " **(default)**" if r["name"] == report.get("default") else ""
        lines.append(
            f"| {r['name']}{mark} | {_pm(r['validation_accuracy'])} | {_pm(r['test_accuracy'])} "
            f"| {d['attention']} + {d['mlp']}; {d['inv_sqrt']}, {d['reciprocal']} "
            f"({d['narrow_step']}) "
            f"| 2^{tiny['log_n']}, {tiny['key_switches_per_sample']:.0f}, "
            f"{tiny['predicted_seconds_per_sample']:.2f} "
            f"| 2^{base['log_n']}, {base['key_switches_per_sample']:.0f}, "
            f"{base['predicted_seconds_per_sample']:.0f} "
            f"| {enc['seconds'] / enc['samples']:.3f}, {enc['error_relative_to_range']:.1e} |"
        )
    return "\n".join(lines)


def format_owner_table(report: dict[str, Any]) -> str:
    """What owner normalisation saves on the blocks after a revealed one, and what it costs in
    upload (the owner sends the normalised input beside the residual's)."""
    lines = [
        "| candidate | shape | encrypted path: KS, refresh rounds, s / sample "
        "| owner-normalised path: KS, refresh rounds, s / sample | extra upload / sample |",
        "|---|---|---|---|---|",
    ]
    for r in report["rows"]:
        for shape, c in r.get("shapes", {}).items():
            o = c.get("owner_normalised")
            if o is None:
                continue
            lines.append(
                f"| {r['name']} | {shape} | {c['key_switches_per_sample']:.0f}, "
                f"{c['refresh_rounds']}, {c['predicted_seconds_per_sample']:.2f} "
                f"| {o['key_switches_per_sample']:.0f}, {o['refresh_rounds']}, "
                f"{o['predicted_seconds_per_sample']:.2f} "
                f"| {o['extra_upload_bytes_per_sample'] / 1e6:.2f} MB |"
            )
    return "\n".join(lines)
