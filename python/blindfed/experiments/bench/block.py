"""``blindfed bench block``: one encrypted transformer block, end to end, per sample.

For each shape the provider evaluates one full group (as many samples as one ciphertext
packs) on CKKS ciphertexts; the owner encrypts, answers the masked refreshes (over bytes, as
over a network, so their traffic is measured) and decrypts in the same process. Reported per
sample: seconds (amortised over the group), bytes each way (measured where executed),
key switches; per session: evaluation-key bytes; per process: peak memory. Shapes too large
to run here are estimated from the tracer's exact operation counts times unit costs measured
at the planned parameters on this machine (the same estimator is also applied to the shapes
that run, so its error is visible); for those, the evaluator also measures the wall time of
each kind of operation, which is where the time really went.
"""

from __future__ import annotations

import math
import resource
import time

import numpy as np

from blindfed import ckks, num_threads
from blindfed._core import answer_refresh
from blindfed.approx import StudentSpec
from blindfed.block import SHAPES, Block, PackedBatch, random_weights
from blindfed.experiments.bench.timing import median_seconds

PAPER = {"shape": "vit_base", "seconds_per_sample": 136.0, "megabytes_per_sample": 17.33}


def _ciphertext_bytes(params: ckks.Parameters, level: int, seeded: bool) -> float:
    """Wire size of one ciphertext at ``level``: bit-packed residues (about half if seeded)."""
    bits = sum(math.ceil(math.log2(q)) for q in params.moduli[: level + 1])
    polys = 1 if seeded else 2
    return polys * params.ring_degree * bits / 8 + 64


def _activations(shape: dict[str, int], batch: int, seed: int) -> np.ndarray:
    """ViT-like activations: a shared per-token pattern plus per-sample noise."""
    rng = np.random.default_rng(seed)
    t, d = shape["tokens"], shape["width"]
    pattern = rng.normal(0.0, 1.0, size=(1, t, d))
    return pattern + 0.5 * rng.normal(0.0, 1.0, size=(batch, t, d))


def student_block(
    name: str, spec: StudentSpec | None = None, *, seed: int = 0, shift: float | None = None
) -> Block:
    """A block of shape ``name`` with ``spec``'s families (the default student's if None):
    random weights at a trained ViT's scale, ranges calibrated on ViT-like activations (8
    samples), a power numerator's shift taken from a student (the default's, from its zoo
    card, if None); constant denominators and affine statistics calibrated on the same data."""
    shape = SHAPES[name]
    if spec is None:
        spec, shift = default_student_constants()
    numerator = spec.numerator
    learned = shift is not None and numerator.shift is not None
    block = Block(
        random_weights(shape["width"], shape["mlp"], seed=seed),
        tokens=shape["tokens"],
        heads=shape["heads"],
        spec=spec,
        approx={"numerator": numerator.with_shift(shift)} if learned else None,
    )
    return block.calibrated(_activations(shape, 8, seed))


def default_student_constants() -> tuple[StudentSpec, float | None]:
    """The zoo's default student's spec and mean learned shift, from its card (no torch)."""
    from blindfed import zoo

    card = zoo.card("mnist_vit_student")
    return StudentSpec(card["spec"]), card.get("mean_shift")


def unit_costs(params: ckks.Parameters, repeats: int = 3) -> dict[str, float]:
    """Seconds per operation at the middle level of ``params`` (where a block spends most)."""
    sk = ckks.SecretKey.generate(params)
    keys = sk.evaluation_keys(rotations=[1, 2, 3, 4])
    level = max(1, params.max_level // 2)
    rng = np.random.default_rng(0)
    x = rng.normal(size=params.slots)
    ct = sk.encrypt(x, level=level).with_keys(keys)
    other = sk.encrypt(x, level=level).with_keys(keys)
    one = PackedBatch.encrypt(sk, rng.normal(size=(1, 1, 1)), complex=False)
    return {
        "refresh": median_seconds(lambda: one.refreshed(sk), repeats),
        "key_switch": median_seconds(lambda: ct * other, repeats),
        "hoisted_rotation": median_seconds(lambda: ct.rotate_many([1, 2, 3, 4]), repeats) / 4,
        "rotation": median_seconds(lambda: ct.rotate(1), repeats),
        "tensor_product": median_seconds(
            lambda: ct.multiply(other, relinearize=False, rescale=False), repeats
        ),
        "plain_product": median_seconds(lambda: ct * x, repeats),
        # A term of a linear layer is one lazy multiply-add pass over a ciphertext, about the
        # memory traffic of an addition (an approximation; its error shows on executed shapes).
        "linear_term": median_seconds(lambda: ct + other, repeats),
        "level": level,
    }


def estimate_seconds(cost: dict, units: dict[str, float]) -> float:
    """Group time from the tracer's exact operation counts times unit costs."""
    return sum(time_breakdown(cost, units).values())


def time_breakdown(cost: dict, units: dict[str, float]) -> dict[str, float]:
    """Estimated seconds per group by kind of operation: where the time goes. Masked
    refreshes count both sides' work on one machine (mask, the owner's decryption and
    re-encryption, unmask), not the network."""
    hoisted = cost["hoisted_rotations"]
    return {
        "relinearizations": cost["relinearizations"] * units["key_switch"],
        "rotations": (cost["rotations"] - hoisted) * units["rotation"]
        + hoisted * units["hoisted_rotation"],
        # A conjugation (separating a refreshed pair or a complex pair of attention features)
        # is one key switch, as a rotation.
        "conjugations": cost["conjugations"] * units["rotation"],
        "tensor_products": cost["tensor_products"] * units["tensor_product"],
        "plain_products": cost["plain_products"] * units["plain_product"],
        "linear_terms": cost["linear_terms"] * units["linear_term"],
        "refreshes": cost["refreshed_ciphertexts"] * units["refresh"],
    }


def traffic(plan: dict, shape: dict[str, int]) -> dict[str, float]:
    """Bytes per sample of one full group each way: the input (seeded, complex-packed), the
    output, and the masked refreshes (requests at the refresh level, seeded replies at the
    level each refresh asked for)."""
    params = plan["parameters"]
    per = plan["samples_per_group"]
    cost = plan["cost"]
    # Complex packing: two features per ciphertext each way.
    cts = math.ceil(shape["width"] / 2)
    up = cts * _ciphertext_bytes(params, params.max_level, seeded=True)
    down = cts * _ciphertext_bytes(params, 0, seeded=False)
    refresh_down = cost["refreshed_ciphertexts"] * _ciphertext_bytes(
        params, plan["refresh_level"], seeded=False
    )
    refresh_up = sum(
        count * _ciphertext_bytes(params, level, seeded=True)
        for level, count in cost["refreshed_by_level"].items()
    )
    return {
        "input_bytes_per_sample": up / per,
        "upload_bytes_per_sample": (up + refresh_up) / per,
        "download_bytes_per_sample": (down + refresh_down) / per,
        "refresh_bytes_per_sample": (refresh_up + refresh_down) / per,
    }


def run_shape(name: str, *, execute: bool, seed: int = 0) -> dict:
    shape = SHAPES[name]
    spec, shift = default_student_constants()
    block = student_block(name, spec, seed=seed, shift=shift)
    t = time.perf_counter()
    plan = block.plan()
    params = plan["parameters"]
    per = plan["samples_per_group"]
    report: dict = {
        "shape": name,
        **shape,
        "mode": "execute" if execute else "estimate",
        "parameters": repr(params),
        "log_n": plan["log_n"],
        "levels": plan["levels"],
        "samples_per_group": per,
        "depth": plan["depth"],
        "rotation_keys": len(plan["rotation_steps"]),
        "plan_seconds": time.perf_counter() - t,
        "key_switches_per_group": plan["cost"]["key_switches"],
        "key_switches_per_sample": plan["cost"]["key_switches"] / per,
        "refresh_rounds": plan["cost"]["refresh_rounds"],
        "refreshed_ciphertexts_per_group": plan["cost"]["refreshed_ciphertexts"],
        **traffic(plan, shape),
        "approximations": {k: repr(v) for k, v in block.approximations.items()},
        "spec": spec.text,
    }
    units = unit_costs(params)
    report["unit_seconds"] = units
    report["estimated_seconds_per_sample"] = estimate_seconds(plan["cost"], units) / per
    report["estimated_breakdown_seconds_per_sample"] = {
        k: v / per for k, v in time_breakdown(plan["cost"], units).items()
    }
    # Evaluation keys: relinearisation + Galois (seeded), as the owner ships them.
    report["evaluation_key_bytes_estimate"] = (2 + len(plan["rotation_steps"])) * _key_bytes(params)
    if not execute:
        return report

    x = _activations(shape, per, seed + 1)
    t = time.perf_counter()
    sk = ckks.SecretKey.generate(params)
    keys = sk.evaluation_keys(rotations=plan["rotation_steps"], conjugate=plan["conjugate"])
    report["keygen_seconds"] = time.perf_counter() - t
    report["evaluation_key_bytes"] = len(keys.to_bytes())
    t = time.perf_counter()
    packed = PackedBatch.encrypt(sk, x)
    report["encrypt_seconds_per_sample"] = (time.perf_counter() - t) / per
    report["upload_bytes_per_sample_measured"] = len(packed.to_bytes()) / per
    # The owner answers over bytes, as over a network: the refresh traffic is measured.
    refresh_bytes = {"up": 0, "down": 0}

    def owner(request: bytes) -> bytes:
        reply = answer_refresh(sk, request)
        refresh_bytes["down"] += len(request)
        refresh_bytes["up"] += len(reply)
        return reply

    t = time.perf_counter()
    out, cost = block.evaluate(packed, keys, owner)
    seconds = time.perf_counter() - t
    report["upload_bytes_per_sample_measured"] += refresh_bytes["up"] / per
    report["seconds_per_sample"] = seconds / per
    report["group_seconds"] = seconds
    report["measured_cost"] = cost
    # Where the time went, measured: wall seconds per sample by kind of operation.
    report["measured_breakdown_seconds_per_sample"] = {
        kind: seconds / per for kind, seconds in cost.get("seconds", {}).items()
    }
    reply = out.at_level(0)
    report["download_bytes_per_sample_measured"] = (
        len(reply.to_bytes()) + refresh_bytes["down"]
    ) / per
    t = time.perf_counter()
    y = reply.decrypt(sk)
    report["decrypt_seconds_per_sample"] = (time.perf_counter() - t) / per
    # The baseline, in the same run: the same block in plaintext (the f64 reference).
    t = time.perf_counter()
    want = block.forward(x)
    report["plaintext_seconds_per_sample"] = (time.perf_counter() - t) / per
    report["slowdown_vs_plaintext"] = report["seconds_per_sample"] / max(
        report["plaintext_seconds_per_sample"], 1e-12
    )
    err = float(np.max(np.abs(y - want)))
    report["max_abs_error"] = err
    report["error_relative_to_range"] = err / float(np.ptp(want))
    report["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return report


def _key_bytes(params: ckks.Parameters) -> float:
    """One seeded key-switching key: dnum digits of one polynomial over Q P."""
    bits = sum(math.ceil(math.log2(q)) for q in params.moduli + params.special_moduli)
    return params.dnum * params.ring_degree * bits / 8


def run(
    execute: tuple[str, ...] = ("small", "vit_tiny"), estimate: tuple[str, ...] = ("vit_base",)
) -> dict:
    results = [run_shape(n, execute=True) for n in execute]
    estimated = [run_shape(n, execute=False) for n in estimate]
    # Unit costs time one operation at a time; the block's fused kernels run faster than that.
    # The largest executed shape's measured/estimated ratio corrects the estimates (labelled).
    if results and estimated:
        largest = results[-1]
        ratio = largest["seconds_per_sample"] / largest["estimated_seconds_per_sample"]
        for r in estimated:
            r["calibrated_estimate_seconds_per_sample"] = r["estimated_seconds_per_sample"] * ratio
            r["calibrated_on"] = largest["shape"]
    return {"threads": num_threads(), "paper": PAPER, "results": results + estimated}


def format_table(report: dict) -> str:
    """The table: per sample, encrypted against the same block in plaintext (same run)."""
    lines = [
        f"threads={report['threads']}  (paper, ViT-B/16 577 tokens: "
        f"{PAPER['seconds_per_sample']} s and {PAPER['megabytes_per_sample']} MB"
        " per sample per block)",
        "shape     mode      ring   lv  s/sample  x plaintext  est s/sample  KS/sample  up MB"
        "  down MB  keys MB  err/range",
    ]
    for r in report["results"]:
        secs = r.get("seconds_per_sample")
        slowdown = r.get("slowdown_vs_plaintext")
        keys = r.get("evaluation_key_bytes", r["evaluation_key_bytes_estimate"]) / 2**20
        up = r.get("upload_bytes_per_sample_measured", r["upload_bytes_per_sample"])
        down = r.get("download_bytes_per_sample_measured", r["download_bytes_per_sample"])
        err = r.get("error_relative_to_range")
        lines.append(
            f"{r['shape']:<9} {r['mode']:<9} 2^{r['log_n']:<3} {r['levels']:>3}  "
            f"{'-' if secs is None else f'{secs:8.2f}':>8}  "
            f"{'-' if slowdown is None else f'{slowdown:11.0f}':>11}  "
            f"{r['estimated_seconds_per_sample']:12.2f}  "
            f"{r['key_switches_per_sample']:9.1f}  {up / 1e6:5.2f}  "
            f"{down / 1e6:7.2f}  {keys:7.0f}  "
            f"{'-' if err is None else f'{err:.1e}'}"
        )
    for r in report["results"]:
        if "calibrated_estimate_seconds_per_sample" in r:
            lines.append(
                f"{r['shape']}: estimated {r['calibrated_estimate_seconds_per_sample']:.1f} s per "
                f"sample, calibrated on {r['calibrated_on']}'s measured/estimated ratio"
            )
    for r in report["results"]:
        spent = r.get("measured_breakdown_seconds_per_sample")
        if spent:
            total = sum(spent.values())
            parts = ", ".join(
                f"{kind} {seconds / total:.0%}"
                for kind, seconds in sorted(spent.items(), key=lambda kv: -kv[1])
            )
            lines.append(f"{r['shape']}: where the time went (measured): {parts}")
    return "\n".join(lines)
