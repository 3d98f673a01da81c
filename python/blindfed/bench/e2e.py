"""``blindfed bench e2e``: the online phase end to end on the embedded default, per sample.

One owner sends its digits through the zoo student block by block, with privacy boosting on,
three ways in the same run:

- ``execute``: CKKS under the owner's key (keys, encryption, the provider's encrypted blocks,
  masked refreshes, sanitisation, decryption), over bytes in this process;
- ``simulate``: the same protocol on the plaintext mirror (same polynomials, float64);
- ``plaintext``: the student's own torch forward pass, no protocol at all (the baseline).

Reported per sample per block (amortised over the batch; a ciphertext group costs the same
however few samples it holds, so the default batch is one full group): seconds at the
provider and in total, bytes each way, and the ratios execute / simulate and execute /
plaintext. The paper's figure (136 s and 17.33 MB per sample per block, ViT-B/16, 577 tokens,
IBM HElayers on its CPU) is printed for reference only: another model and machine.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from blindfed import num_threads

__all__ = ["format_table", "run"]

PAPER = {"seconds_per_sample_per_block": 136.0, "megabytes_per_sample_per_block": 17.33}


def _protocol(mode: str, student: Any, images: np.ndarray, labels: np.ndarray) -> dict:
    from blindfed.protocol import DataOwner, Provider

    provider_seconds = [0.0]

    def count(event: Any) -> None:
        provider_seconds[0] += event.seconds

    t = time.perf_counter()
    provider = Provider(student, mode=mode, on_block=count)
    owner = DataOwner("bench")
    hello = owner.hello(provider.offer())
    provider.register(hello)
    setup = time.perf_counter() - t
    t = time.perf_counter()
    owner.forward(provider.forward, images, labels, cache=False)
    seconds = time.perf_counter() - t
    n, blocks = len(labels), len(provider.blocks)
    return {
        "mode": mode,
        "setup_seconds": setup,
        "key_bytes": len(hello),
        "seconds_per_sample_per_block": seconds / n / blocks,
        "provider_seconds_per_sample_per_block": provider_seconds[0] / n / blocks,
        "upload_bytes_per_sample_per_block": owner.sent_bytes / n / blocks,
        "download_bytes_per_sample_per_block": owner.received_bytes / n / blocks,
        "samples_per_group": provider.samples_per_group,
        "parameters": repr(provider.parameters),
    }


def _plaintext(student: Any, images: np.ndarray) -> dict:
    import torch

    x = torch.as_tensor(images, dtype=torch.float32)
    with torch.no_grad():
        student(x[:8])  # warm-up
        t = time.perf_counter()
        student(x)
        seconds = time.perf_counter() - t
    return {
        "mode": "plaintext",
        "seconds_per_sample_per_block": seconds / len(images) / student.config.depth,
    }


def run(samples: int | None = None, *, modes: tuple[str, ...] = ("execute", "simulate")) -> dict:
    """Runs the comparison on ``samples`` digits (default: one full ciphertext group)."""
    from blindfed import zoo
    from blindfed.protocol import Provider
    from blindfed.recipes import digits_for_mnist_model

    unknown = set(modes) - {"execute", "simulate"}
    if unknown:
        raise ValueError(f"unknown modes {sorted(unknown)}; expected execute and/or simulate")
    student = zoo.load_student()
    data = digits_for_mnist_model("train")
    group = Provider(student, mode="simulate").samples_per_group
    n = samples or min(group, len(data.labels))
    if not 1 <= n <= len(data.labels):
        raise ValueError(f"samples must be in [1, {len(data.labels)}], got {n}")
    images, labels = data.images[:n], data.labels[:n]
    results = {m: _protocol(m, student, images, labels) for m in modes}
    results["plaintext"] = _plaintext(student, images)
    report: dict[str, Any] = {
        "threads": num_threads(),
        "samples": n,
        "blocks": student.config.depth,
        "results": results,
        "paper": PAPER,
    }
    base = results["plaintext"]["seconds_per_sample_per_block"]
    report["ratios"] = {
        f"{m}/plaintext": results[m]["seconds_per_sample_per_block"] / base for m in modes
    }
    if {"execute", "simulate"} <= set(modes):
        report["ratios"]["execute/simulate"] = (
            results["execute"]["seconds_per_sample_per_block"]
            / results["simulate"]["seconds_per_sample_per_block"]
        )
    return report


def format_table(report: dict) -> str:
    lines = [
        f"online phase, zoo student ({report['blocks']} blocks), {report['samples']} digits, "
        f"threads={report['threads']}; per sample per block:",
        f"{'mode':10} {'total s':>10} {'provider s':>11} {'MB up':>8} {'MB down':>8}",
    ]
    for r in report["results"].values():
        provider = r.get("provider_seconds_per_sample_per_block")
        up = r.get("upload_bytes_per_sample_per_block")
        down = r.get("download_bytes_per_sample_per_block")
        lines.append(
            f"{r['mode']:10} {r['seconds_per_sample_per_block']:10.4g} "
            f"{'-' if provider is None else f'{provider:.4g}':>11} "
            f"{'-' if up is None else f'{up / 1e6:.4f}':>8} "
            f"{'-' if down is None else f'{down / 1e6:.4f}':>8}"
        )
    lines.append(
        "ratios (same run): " + ", ".join(f"{k} {v:.3g}x" for k, v in report["ratios"].items())
    )
    lines.append(
        f"(paper, ViT-B/16 at 577 tokens on its own CPU: {PAPER['seconds_per_sample_per_block']} s"
        f" and {PAPER['megabytes_per_sample_per_block']} MB per sample per block)"
    )
    return "\n".join(lines)
