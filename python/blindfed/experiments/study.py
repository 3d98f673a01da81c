"""``blindfed study federation``: the shapes of the paper's Table 1 and Table 3, on digits.

Table 1: rows full fine-tuning, LoRA, linear probing (of the teacher), BlindFed and BlindFed
without block sampling (every block revealed, nothing permuted); columns centralised (one
party holds all training digits: the plaintext baselines of
:mod:`blindfed.experiments.baselines`; BlindFed needs at least two owners, so its cells there
are empty) and ``owners`` owners at each Dirichlet ``alpha`` (the federated baselines of
:mod:`blindfed.experiments.federated_baselines` and BlindFed's federation, simulate mode).
Table 3: ``owner_counts`` owners at alpha 1.

Data: scikit-learn's digits (1,438 training, 359 test images laid out like MNIST), shared out
by :meth:`~blindfed.fl.owner_data.OwnerData.digits_share`; with 50 owners that is about 29
training digits each. Every run uses the default preset and learning rates (chosen on a
validation split by ``blindfed tune``); accuracy is the final round's on the owners' test
digits. One seed per cell (``seed``).

Each finished cell is written to ``out/study.json`` at once; running again with the same
``out`` skips the finished cells, and an interrupted BlindFed cell resumes from its last round
(its provider and owners keep their state under ``out/cells/``). ``study.md`` and
``study.png`` are written at the end.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from blindfed.atomic import write_atomically
from blindfed.fl.settings import DEFAULTS

__all__ = ["TABLE1_ROWS", "TABLE3_ROWS", "StudyConfig", "run_study"]

#: Table 1's rows: (name, centralised baseline, federated method).
TABLE1_ROWS: tuple[tuple[str, str | None, str], ...] = (
    ("full fine-tuning", "full_finetune", "fedavg_full_finetune"),
    ("LoRA", "lora", "fedavg_lora"),
    ("linear probing", "linear_probe", "fedavg_linear_probe"),
    ("BlindFed", None, "blindfed"),
    ("BlindFed without block sampling", None, "blindfed_no_sampling"),
)

#: Table 3's rows (federated methods) at alpha 1.
TABLE3_ROWS: tuple[tuple[str, str], ...] = (
    ("LoRA", "fedavg_lora"),
    ("linear probing", "fedavg_linear_probe"),
    ("BlindFed", "blindfed"),
)


@dataclass(frozen=True)
class StudyConfig:
    out: str = "blindfed-study"
    owners: int = 5
    alphas: tuple[float, ...] = (100.0, 1.0, 0.01)
    owner_counts: tuple[int, ...] = (10, 20, 50)
    rounds: int = DEFAULTS["rounds"]
    seed: int = DEFAULTS["seed"]
    tables: tuple[int, ...] = (1, 3)
    #: caps on all owners' training and test digits (None: all), for quick runs.
    train_samples: int | None = None
    test_samples: int | None = None
    #: epochs of the centralised LoRA and full fine-tuning (None: their defaults).
    baseline_epochs: int | None = None

    def __post_init__(self) -> None:
        if set(self.tables) - {1, 3} or not self.tables:
            raise ValueError(f"tables must be 1 and/or 3, got {self.tables}")
        if self.owners < 2 or min(self.owner_counts, default=2) < 2:
            raise ValueError("a federation needs at least 2 owners")
        if self.rounds < 1 or not all(a > 0 for a in self.alphas):
            raise ValueError("rounds must be >= 1 and every alpha > 0")


class _Cells:
    """``study.json``: the settings and every finished cell, written after each one."""

    def __init__(self, path: Path, config: StudyConfig) -> None:
        self.path = path
        settings = {k: v for k, v in asdict(config).items() if k not in ("out", "tables")}
        state = json.loads(path.read_text()) if path.exists() else {}
        if state and state.get("settings") != json.loads(json.dumps(settings)):
            raise ValueError(f"{path} was made with other settings {state['settings']}")
        self.state = {"settings": settings, "data": "scikit-learn digits", "cells": [], **state}

    def get(self, key: dict[str, Any]) -> dict[str, Any] | None:
        return next((c for c in self.state["cells"] if c["key"] == key), None)

    def put(self, key: dict[str, Any], result: dict[str, Any]) -> None:
        self.state["cells"].append({"key": key, **result})
        write_atomically(self.path, json.dumps(self.state, indent=1).encode())


def run_study(config: StudyConfig, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Runs (or resumes) the study; returns ``study.json``'s content with the rendered
    tables under ``tables``."""
    say = progress or print
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    cells = _Cells(out / "study.json", config)
    plan: list[dict[str, Any]] = []
    if 1 in config.tables:
        for _, central, _ in TABLE1_ROWS:
            if central:
                plan.append({"table": 1, "method": central, "owners": 1, "alpha": None})
        for alpha in config.alphas:
            for _, _, method in TABLE1_ROWS:
                plan.append({"table": 1, "method": method, "owners": config.owners, "alpha": alpha})
    if 3 in config.tables:
        for count in config.owner_counts:
            for _, method in TABLE3_ROWS:
                plan.append({"table": 3, "method": method, "owners": count, "alpha": 1.0})
    for i, key in enumerate(plan):
        done = cells.get(key)
        if done is None:
            t0 = time.perf_counter()
            accuracy = _cell(config, key, out)
            done = {"accuracy": accuracy, "seconds": time.perf_counter() - t0}
            cells.put(key, done)
        where = (
            "centralised"
            if key["owners"] == 1
            else f"{key['owners']} owners, alpha {key['alpha']:g}"
        )
        say(
            f"[{i + 1}/{len(plan)}] table {key['table']}: {key['method']}, {where}: "
            f"{done['accuracy']:.1f} % ({done['seconds']:.0f} s)"
        )
    tables = render(cells.state)
    (out / "study.md").write_text(tables)
    _plot(cells.state, out / "study.png")
    return {**cells.state, "tables": tables}


def _shares(config: StudyConfig, owners: int, alpha: float) -> list[Any]:
    from blindfed.fl.owner_data import OwnerData

    return [
        OwnerData.digits_share(
            k,
            owners,
            alpha=alpha,
            seed=config.seed,
            train_samples=config.train_samples,
            test_samples=config.test_samples,
        )
        for k in range(owners)
    ]


def _cell(config: StudyConfig, key: dict[str, Any], out: Path) -> float:
    method, owners, alpha = key["method"], key["owners"], key["alpha"]
    if owners == 1:
        return _centralised(config, method)
    if method.startswith("blindfed"):
        from blindfed.fl.run import run_local

        name = f"t{key['table']}-{method}-k{owners}-a{alpha:g}"
        result = run_local(
            {
                "rounds": config.rounds,
                "mode": "simulate",
                "privacy": method == "blindfed",
                "alpha": alpha,
                "seed": config.seed,
                "train-samples": config.train_samples or 0,
                "test-samples": config.test_samples or 0,
                "min-owners": owners,
                "state-dir": str(out / "cells" / name / "provider"),
                "work-dir": str(out / "cells" / name / "owners"),
            },
            owners,
        )
        return float(result["history"][-1]["accuracy"])
    from blindfed import zoo
    from blindfed.experiments.federated_baselines import FederatedBaselineConfig, run_federated
    from blindfed.fl.run import federation_config, merge_settings

    settings = merge_settings({}, {"rounds": config.rounds, "seed": config.seed})
    results = run_federated(
        _shares(config, owners, alpha),
        zoo.load("mnist_vit"),
        methods=(method,),
        config=FederatedBaselineConfig.from_federation(federation_config(settings)),
    )
    return float(results[method]["accuracy"])


def _centralised(config: StudyConfig, method: str) -> float:
    """One party holds what all the owners hold (the same caps and draw as their shares)."""
    import numpy as np

    from blindfed.experiments.baselines import BaselineConfig, run_baselines

    shares = _shares(config, 2, 1.0)
    results = run_baselines(
        *(np.concatenate([getattr(d, f) for d in shares]) for f in _FIELDS),
        methods=(method,),
        config=BaselineConfig(
            seed=config.seed,
            **({"epochs": config.baseline_epochs} if config.baseline_epochs else {}),
        ),
    )
    return float(results[method]["accuracy"])


_FIELDS = ("train_images", "train_labels", "test_images", "test_labels")


def _value(state: dict[str, Any], **key: Any) -> str:
    cell = next((c for c in state["cells"] if c["key"] == key), None)
    return "-" if cell is None else f"{cell['accuracy']:.1f}"


def render(state: dict[str, Any]) -> str:
    """Table 1 and Table 3 as Markdown, from ``study.json``'s content."""
    s = state["settings"]
    k = s["owners"]
    head = ["method", "centralised"] + [f"alpha = {a:g}" for a in s["alphas"]]
    lines = [
        f"## Table 1 (digits, {k} owners, {s['rounds']} rounds, seed {s['seed']}; accuracy %)",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for name, central, method in TABLE1_ROWS:
        row = [_value(state, table=1, method=central, owners=1, alpha=None) if central else "-"]
        row += [_value(state, table=1, method=method, owners=k, alpha=a) for a in s["alphas"]]
        lines.append(f"| {name} | " + " | ".join(row) + " |")
    head = ["method"] + [f"K = {n}" for n in s["owner_counts"]]
    lines += [
        "",
        f"## Table 3 (digits, alpha = 1, {s['rounds']} rounds, seed {s['seed']}; accuracy %)",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for name, method in TABLE3_ROWS:
        row = [
            _value(state, table=3, method=method, owners=n, alpha=1.0) for n in s["owner_counts"]
        ]
        lines.append(f"| {name} | " + " | ".join(row) + " |")
    lines += [
        "",
        "Baselines are plaintext and not double-blind (centralised: one party holds all the "
        "training digits; federated: FedAvg with secure aggregation, every owner holding the "
        "teacher). BlindFed runs in simulate mode (the plaintext mirror of the encrypted "
        "block).",
        "",
    ]
    return "\n".join(lines)


def _plot(state: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = state["settings"]
    fig, ax = plt.subplots(figsize=(8, 4))
    columns = [("centralised", 1, None)] + [(f"alpha {a:g}", s["owners"], a) for a in s["alphas"]]
    width = 0.8 / len(TABLE1_ROWS)
    for i, (name, central, method) in enumerate(TABLE1_ROWS):
        values = []
        for _, owners, alpha in columns:
            m = central if owners == 1 else method
            text = _value(state, table=1, method=m, owners=owners, alpha=alpha) if m else "-"
            values.append(float("nan") if text == "-" else float(text))
        ax.bar([c + i * width for c in range(len(columns))], values, width, label=name)
    ax.set_xticks([c + 0.4 - width / 2 for c in range(len(columns))])
    ax.set_xticklabels([c[0] for c in columns])
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(50, 100)
    ax.legend(fontsize=7, loc="lower left")
    ax.set_title(f"Table 1 shape: digits, {s['owners']} owners")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
