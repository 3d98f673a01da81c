"""A federation's settings, in one place: the run-config keys, their defaults and the presets.

Everything that has a default for a federation takes it from here: the Flower app's run
config (``flwr_app/pyproject.toml`` mirrors :data:`DEFAULTS`, and a test holds it to them),
:class:`~blindfed.fl.server.FederationConfig`, :class:`~blindfed.fl.fedavg.LocalTraining`,
the federated baselines, the demo, ``blindfed tune`` and ``blindfed study`` and the command
line's options. Nothing here imports torch or Flower.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from blindfed._core import SECAGG_FRAC_BITS

__all__ = [
    "DEFAULTS",
    "FRAC_BITS",
    "MODEL_PRESETS",
    "OWNERS",
    "PRESETS",
    "UPDATE_BOUND",
    "merge_settings",
    "milestones",
]

#: Named sets of the optimisation settings (client learning rate and its decay, the server's
#: optimiser, the head's readout, whether the owners standardise the head's inputs). The
#: defaults are ``digits``, chosen on a validation split carved from the owners' training
#: digits (3 owners, Dirichlet 1; never the test split) by ``blindfed tune``
#: (:mod:`blindfed.experiments.tune`; figures in docs/federation.md). ``paper`` is Tastan &
#: Nandakumar's schedule (SGD 1e-3, x0.1 at rounds 25 and 40, plain FedAvg, the class-token
#: head), made for 50,000 CIFAR images. ``dinov2`` is ``digits`` with the head's inputs
#: standardised, chosen with its client learning rate for DINOv2-S's student (``blindfed tune
#: --model dinov2-small``, on validation outputs of the demo's owners; figures in
#: docs/federation.md).
#: A run config's ``preset`` replaces the keys it names; overrides given in Python replace
#: those in turn.
PRESETS: dict[str, dict[str, Any]] = {
    "paper": {
        "lr": 1e-3,
        "milestones": "25,40",
        "gamma": 0.1,
        "server-optimizer": "fedavg",
        "server-lr": 1.0,
        "server-momentum": 0.9,
        "readout": "cls",
        "standardise": False,
    },
    "digits": {
        "lr": 1e-1,
        "milestones": "25,40",
        "gamma": 0.1,
        "server-optimizer": "fedavg",
        "server-lr": 1.0,
        "server-momentum": 0.9,
        "readout": "cls+mean",
        "standardise": False,
    },
}
PRESETS["dinov2"] = {**PRESETS["digits"], "standardise": True}

#: The preset a foundation model's demo runs with unless given one ("": the defaults).
MODEL_PRESETS: dict[str, str] = {"mnist-vit": "", "dinov2-small": "dinov2"}

#: Run-config keys and their defaults (with the default preset's keys).
DEFAULTS: dict[str, Any] = {
    "preset": "",  # "": the keys as given
    **PRESETS["digits"],
    "rounds": 50,
    "local-epochs": 5,
    "batch-size": 32,
    "momentum": 0.9,
    "rank": 8,
    "min-owners": 2,
    "threshold": 0,  # 0: a majority of each round's owners
    "neighbours": 0,  # 0: every pair (SecAgg); k: SecAgg+ over a k-regular graph
    "timeout": 600.0,
    "retries": 2,
    "mode": "simulate",
    "privacy": True,
    "student": "",
    # "": the provider evaluates in its own process; "local": on a Ray instance it starts on
    # its machine; otherwise the Ray cluster at this address ("auto", "ray://host:10001").
    "ray-address": "",
    "state-dir": "blindfed-federation",
    "work-dir": "blindfed-owners",
    "alpha": 1.0,
    "seed": 0,
    "train-samples": 0,
    "test-samples": 0,
    "audit": False,
}

#: Owners of the embedded default's federation (``blindfed demo``, ``blindfed tune``).
OWNERS = 3

#: Secure aggregation's fixed point: values carry the Rust core's default fractional bits (20),
#: and every entry an owner contributes (``n * delta``, the sample count) is held to this
#: bound; the 2^64 ring holds the sum of thousands of owners at that bound.
UPDATE_BOUND = 2.0**20
FRAC_BITS = SECAGG_FRAC_BITS


def merge_settings(
    run_config: Mapping[str, Any], overrides: Mapping[str, Any] | None
) -> dict[str, Any]:
    """The defaults, then the run config, then the chosen preset's keys, then ``overrides``;
    unknown override keys and presets are an error (a typo would otherwise be ignored
    silently)."""
    unknown = set(overrides or {}) - set(DEFAULTS)
    if unknown:
        raise ValueError(f"unknown settings {sorted(unknown)}; known: {sorted(DEFAULTS)}")
    settings = {**DEFAULTS, **dict(run_config)}
    preset = (overrides or {}).get("preset", settings["preset"])
    if preset and preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; known: {sorted(PRESETS)}")
    return {**settings, **PRESETS.get(preset, {}), **(overrides or {}), "preset": preset}


def milestones(text: str | int) -> tuple[int, ...]:
    """The run config's ``milestones`` (``"25,40"``; ``""``: none) as rounds."""
    try:
        return tuple(int(m) for m in str(text).split(",") if m.strip())
    except ValueError:
        raise ValueError(f"milestones must be rounds separated by commas, got {text!r}") from None
