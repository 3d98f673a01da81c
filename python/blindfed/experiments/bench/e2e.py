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
plaintext. With both modes, also the precision per block: both runs draw the same revealed
blocks and permutations (one seeded generator each), and the bench, which holds the owner's
key in this process, decrypts every block's output; the worst execute-vs-simulate difference
over the simulated output's range is reported for every block (the encrypted chain carries
its own errors on, as in use) and, for the revealed blocks, on what the owner receives: the
sanitised output, flooding included. The paper's figure (136 s and 17.33 MB per sample per
block, ViT-B/16, 577 tokens, IBM HElayers on its CPU) is printed for reference only: another
model and machine.
"""

from __future__ import annotations

import random
import time
from typing import Any

import numpy as np

from blindfed import num_threads
from blindfed.block import PackedBatch
from blindfed.protocol.evaluation import load_simulated

__all__ = ["format_table", "run"]

PAPER = {"seconds_per_sample_per_block": 136.0, "megabytes_per_sample_per_block": 17.33}


#: Both modes draw revealed blocks and permutations from generators seeded alike.
SEED = 2026


def _recording_provider(student: Any, mode: str, on_block: Any) -> Any:
    """A provider that also keeps every block's output (``outputs[block]``) and what it sends
    for a revealed block (``sent[block]``), still encrypted in execute mode: the bench opens
    them with the owner's key. Bench instrumentation only; the protocol is unchanged."""
    from blindfed.protocol import Provider
    from blindfed.protocol.messages import BlockOutput, decode

    class Recording(Provider):
        def __init__(self) -> None:
            super().__init__(student, mode=mode, on_block=on_block, rng=random.Random(SEED))
            self.outputs: dict[int, list[Any]] = {}
            self.sent: dict[int, list[bytes]] = {}

        def _on_output(self, index: int, out: Any) -> None:
            self.outputs.setdefault(index, []).append(out)

        def forward(self, request: bytes, refresh: Any) -> bytes:
            reply = super().forward(request, refresh)
            msg = decode(reply, BlockOutput)
            self.sent.setdefault(msg.block, []).append(msg.payload)
            return reply

    return Recording()


def _opened(mode: str, provider: Any, owner: Any) -> dict[str, dict[int, np.ndarray]]:
    """Every recorded output in the clear: per block, its samples in the provider's order
    (``blocks``), and what the owner received for the revealed ones (``received``)."""
    secret = owner._secret

    def block(x: Any) -> np.ndarray:
        return x.decrypt(secret) if mode == "execute" else np.asarray(x)

    def payload(p: bytes) -> np.ndarray:
        if mode == "execute":
            return PackedBatch.from_bytes(provider.parameters, p).decrypt(secret)
        return load_simulated(p)

    return {
        "blocks": {i: np.concatenate([block(x) for x in xs]) for i, xs in provider.outputs.items()},
        "received": {
            i: np.concatenate([payload(p) for p in ps]) for i, ps in provider.sent.items()
        },
    }


def _protocol(mode: str, student: Any, images: np.ndarray, labels: np.ndarray) -> dict:
    from blindfed.protocol import DataOwner

    provider_seconds = [0.0]

    def count(event: Any) -> None:
        provider_seconds[0] += event.seconds

    t = time.perf_counter()
    provider = _recording_provider(student, mode, count)
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
        "_outputs": _opened(mode, provider, owner),
    }


def precision(execute: dict, simulate: dict) -> list[dict]:
    """Per block: the worst |execute - simulate| over the simulated output's range, on every
    block's output and on what the owner received (revealed blocks, flooding included)."""
    rows = []
    for kind in ("blocks", "received"):
        for block in sorted(execute[kind]):
            got, want = execute[kind][block], simulate[kind][block]
            if got.shape != want.shape:
                raise RuntimeError(f"block {block}: execute and simulate differ in shape")
            err = float(np.max(np.abs(got - want)))
            span = float(np.ptp(want))
            rows.append(
                {
                    "block": block,
                    "output": "revealed, as received" if kind == "received" else "block output",
                    "max_abs_error": err,
                    "range": span,
                    "error_over_range": err / span,
                }
            )
    return rows


def _first_blocks(student: Any, blocks: int) -> Any:
    """A copy of ``student`` cut after its first ``blocks`` blocks (same scale and families)."""
    import copy
    import dataclasses

    if not 1 <= blocks <= student.config.depth:
        raise ValueError(f"blocks must be in [1, {student.config.depth}], got {blocks}")
    cut = copy.deepcopy(student)
    cut.blocks = cut.blocks[:blocks]
    cut.config = dataclasses.replace(cut.config, depth=blocks)
    return cut


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


def run(
    samples: int | None = None,
    *,
    modes: tuple[str, ...] = ("execute", "simulate"),
    model: str = "mnist-vit",
    student_path: str = "",
    blocks: int | None = None,
) -> dict:
    """Runs the comparison on ``samples`` digits (default: one full ciphertext group) laid out
    for ``model`` (:data:`blindfed.zoo.foundations.MODELS`), through the student saved at
    ``student_path`` (default the zoo's, which ``dinov2-small`` does not have), or through its
    first ``blocks`` only."""
    from blindfed import zoo
    from blindfed.protocol import Provider
    from blindfed.zoo.foundations import check_model, digits_for, saved_student

    unknown = set(modes) - {"execute", "simulate"}
    if unknown:
        raise ValueError(f"unknown modes {sorted(unknown)}; expected execute and/or simulate")
    check_model(model)
    if student_path:
        student = saved_student(model, student_path)
    elif model == "mnist-vit":
        student = zoo.load_student()
    else:
        raise ValueError(f"{model} has no student in the zoo: give a saved one (--student)")
    if blocks is not None:
        student = _first_blocks(student, blocks)
    data = digits_for(model, "train")
    if student.config.image_size != data.images.shape[-1]:
        raise ValueError(
            f"the student takes {student.config.image_size} px images, {model}'s layout gives "
            f"{data.images.shape[-1]} px: a student of another model?"
        )
    group = Provider(student, mode="simulate").samples_per_group
    n = samples or min(group, len(data.labels))
    if not 1 <= n <= len(data.labels):
        raise ValueError(f"samples must be in [1, {len(data.labels)}], got {n}")
    images, labels = data.images[:n], data.labels[:n]
    results = {m: _protocol(m, student, images, labels) for m in modes}
    results["plaintext"] = _plaintext(student, images)
    report: dict[str, Any] = {
        "model": model,
        "threads": num_threads(),
        "samples": n,
        "tokens": student.config.tokens,
        "width": student.config.width,
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
        report["precision"] = precision(
            results["execute"]["_outputs"], results["simulate"]["_outputs"]
        )
    for m in modes:
        del results[m]["_outputs"]
    return report


def format_table(report: dict) -> str:
    lines = [
        f"online phase, {report.get('model', 'mnist-vit')} student ({report['blocks']} blocks), "
        f"{report['samples']} digits, "
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
    for row in report.get("precision", []):
        lines.append(
            f"block {row['block']} ({row['output']}): execute vs simulate worst error "
            f"{row['max_abs_error']:.2e} on a range of {row['range']:.3g} "
            f"({row['error_over_range']:.1e} of it)"
        )
    lines.append(
        f"(paper, ViT-B/16 at 577 tokens on its own CPU: {PAPER['seconds_per_sample_per_block']} s"
        f" and {PAPER['megabytes_per_sample_per_block']} MB per sample per block)"
    )
    return "\n".join(lines)
