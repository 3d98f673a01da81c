"""``blindfed bench provider``: the provider's throughput in process and on a Ray cluster.

One owner sends requests of ``groups`` full ciphertext groups each through one encrypted block
of the small shape (:data:`blindfed.block.SHAPES`: 65 tokens, width 64, 4 heads, MLP 128) at
its planned 128-bit parameters, with permutations and sanitisation on. The same requests go
to the in-process provider (every core on one request) and to a local Ray instance with 1, 2,
... evaluators sharing the same cores, all in one run. Reported: group-blocks per second after
the first request (which also pays for starting evaluators and loading keys, reported apart),
and each configuration's ratio to the in-process provider. On one machine a cluster can only
match the in-process provider (the same cores, plus Ray's overhead); the figures are what the
throughput model of docs/cluster.md scales to many machines: per core, and the overhead.
"""

from __future__ import annotations

import math
import os
import time
from typing import Any

import numpy as np

from blindfed import num_threads
from blindfed.block import SHAPES

__all__ = ["format_table", "run"]

SHAPE = "small"


def _student() -> Any:
    """A one-block student of the small shape (random weights, calibrated on noise)."""
    import torch

    from blindfed.nn.student import Student
    from blindfed.nn.vit import ViT, ViTConfig

    shape = SHAPES[SHAPE]
    side = 4 * math.isqrt(shape["tokens"] - 1)  # 8 x 8 patches of 4 px, and the class token
    torch.manual_seed(0)
    config = ViTConfig(
        image_size=side,
        patch_size=4,
        width=shape["width"],
        depth=1,
        heads=shape["heads"],
        mlp=shape["mlp"],
    )
    student = Student.from_teacher(ViT(config))
    student.calibrate([torch.randn(64, 1, side, side)], constants=True)
    assert student.config.tokens == shape["tokens"]
    return student.eval()


def _serve(provider: Any, images: np.ndarray, labels: np.ndarray, requests: int) -> list[float]:
    """Seconds of each of ``requests`` passes of the owner's batch (after its key exchange)."""
    from blindfed.protocol import DataOwner

    owner = DataOwner("bench", allow_insecure=not provider.parameters.is_secure)
    provider.register(owner.hello(provider.offer()))
    seconds = []
    for r in range(requests):
        t = time.perf_counter()
        owner.forward(provider.forward, images, labels, batch_id=f"batch-{r}", cache=False)
        seconds.append(time.perf_counter() - t)
    return seconds


def run(
    groups: int = 2,
    requests: int = 2,
    evaluators: tuple[int, ...] = (1, 2),
    *,
    insecure_log_n: int | None = None,
) -> dict:
    """The in-process provider, then a Ray cluster with each count of ``evaluators`` (their
    CPUs split the machine's cores), on the same requests. ``insecure_log_n`` (tests only)
    swaps the planned ring for a smaller, insecure one with the same levels."""
    if groups < 1 or requests < 2 or not evaluators or min(evaluators) < 1:
        raise ValueError(
            "the bench needs at least 1 group, 2 requests (the first warms up) and 1 evaluator"
        )
    import ray

    from blindfed import ckks
    from blindfed.protocol import Provider
    from blindfed.protocol.cluster import RayCluster

    cores = num_threads()
    student = _student()
    parameters = Provider(student, mode="execute").parameters
    if insecure_log_n is not None:
        parameters = ckks.Parameters(
            log_n=insecure_log_n, levels=parameters.max_level, scale_bits=30, insecure=True
        )
    per_group = parameters.samples_per_group(student.config.tokens)
    rng = np.random.default_rng(0)
    side = student.config.image_size
    images = rng.normal(size=(groups * per_group, 1, side, side))
    labels = np.sort(rng.integers(0, 10, groups * per_group))
    rows = []

    def measure(name: str, cluster: Any, cpus: int) -> None:
        started = time.perf_counter()
        provider = Provider(student, mode="execute", parameters=parameters, cluster=cluster)
        setup = time.perf_counter() - started
        try:
            seconds = _serve(provider, images, labels, requests)
        finally:
            if cluster is not None:
                cluster.shutdown()
        steady = seconds[1:]
        rows.append(
            {
                "provider": name,
                "cores": cpus,
                "setup_seconds": setup,
                "first_request_seconds": seconds[0],
                "seconds_per_request": float(np.mean(steady)),
                "group_blocks_per_second": groups / float(np.mean(steady)),
            }
        )

    measure("in process", None, cores)
    ray.init(num_cpus=max(cores, *evaluators), include_dashboard=False, log_to_driver=False)
    try:
        for k in evaluators:
            threads = max(1, cores // k)
            cluster = RayCluster(evaluators=k, cpus_per_evaluator=threads)
            name = f"ray, {k} evaluator{'s' if k > 1 else ''} x {threads} cores"
            measure(name, cluster, k * threads)
    finally:
        ray.shutdown()
    base = rows[0]["group_blocks_per_second"]
    for row in rows:
        row["ratio_to_in_process"] = row["group_blocks_per_second"] / base
        row["group_blocks_per_second_per_core"] = row["group_blocks_per_second"] / row["cores"]
    return {
        "shape": SHAPE,
        "tokens": student.config.tokens,
        "parameters": str(parameters),
        "samples_per_group": per_group,
        "groups_per_request": groups,
        "requests": requests,
        "cores": cores,
        "cpu_count": os.cpu_count(),
        "rows": rows,
    }


def format_table(report: dict) -> str:
    lines = [
        f"provider throughput, {report['shape']} block ({report['tokens']} tokens), "
        f"{report['parameters']}, {report['samples_per_group']} samples a group, "
        f"{report['groups_per_request']} groups a request, {report['cores']} cores",
        f"{'provider':34} {'setup s':>8} {'first s':>8} {'s/request':>10} {'groups/s':>9} "
        f"{'per core':>9} {'ratio':>6}",
    ]
    for r in report["rows"]:
        lines.append(
            f"{r['provider']:34} {r['setup_seconds']:8.1f} {r['first_request_seconds']:8.1f} "
            f"{r['seconds_per_request']:10.1f} {r['group_blocks_per_second']:9.4f} "
            f"{r['group_blocks_per_second_per_core']:9.4f} {r['ratio_to_in_process']:6.2f}"
        )
    return "\n".join(lines)
