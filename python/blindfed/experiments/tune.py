"""``blindfed tune``: every learning rate of the demo chosen on a validation split.

The split: each owner of the embedded default (``owners`` owners, Dirichlet(``alpha``) shares
of the digits' training split, seed ``seed``) holds out a seeded ``fraction`` of each label's
training images (:meth:`~blindfed.fl.owner_data.OwnerData.holdout`). Candidates train on the
rest and are scored on the held-out images; the test split is never loaded. The parts:

- ``blindfed``: the federation itself (simulate mode, the real server, owners and SecAgg),
  client learning rate x server optimiser, scored by the final round's validation accuracy
  averaged over ``splits`` validation splits;
- ``readout``: then the head's readout of the last block's tokens (class token, mean of the
  patch tokens, both; :data:`~blindfed.nn.adapter.READOUTS`) x client learning rate over the
  first stage's choice, scored the same way (:data:`BLINDFED_STAGES`); the winner is the
  ``digits`` preset of :mod:`blindfed.fl.run`.
- ``central``: the centralised baselines' learning rates
  (:mod:`blindfed.experiments.baselines`), trained on the union of the owners' remaining
  images, then the probes' readout at the chosen rate.
- ``federated``: the federated baselines' client learning rates
  (:mod:`blindfed.experiments.federated_baselines`), and the federated linear probe's readout
  x rate.

Another foundation model (``model``, :data:`blindfed.zoo.foundations.MODELS`) has its own grid
(:data:`STAGES`): DINOv2-S's student is tuned on its client learning rate alone, over the
``digits`` preset. With ``passes`` (a finished demo's ``--out``), BlindFed's candidates skip the
online phase: each owner reuses that demo's cached block outputs and holds out a seeded
``fraction`` of each label's *training outputs* as its validation split
(:class:`~blindfed.fl.owner_node.OwnerNode`'s ``holdout``; the provider's permutation hides
which image an output came from, so these are not the very images the baselines hold out, only
the same share of the same owners' training data).

Results go to ``out/tune.json`` as each candidate finishes; running again with the same
``out`` skips the candidates already there (resumable). Ties go to the earlier candidate.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from blindfed.atomic import write_atomically
from blindfed.fl.settings import DEFAULTS, OWNERS
from blindfed.nn.adapter import READOUTS

__all__ = [
    "BLINDFED_STAGES",
    "CENTRAL_GRID",
    "DINOV2_STAGES",
    "FEDERATED_GRID",
    "PARTS",
    "STAGES",
    "TuneConfig",
    "run_tune",
]

log = logging.getLogger("blindfed.fl")

_SERVERS: tuple[dict[str, Any], ...] = (
    {"server-optimizer": "fedavg", "server-lr": 1.0},
    {"server-optimizer": "fedavgm", "server-lr": 1.0, "server-momentum": 0.9},
    {"server-optimizer": "fedadam", "server-lr": 3e-3},
)

#: BlindFed's candidates in stages, tuned one after the other: a stage's candidates are
#: run-config keys laid over the previous stage's choice (the first stage's over the ``paper``
#: preset). ``blindfed``: client learning rate x server optimiser; ``readout``: the head's
#: readout x client learning rate (over the server optimiser chosen first).
BLINDFED_STAGES: dict[str, tuple[dict[str, Any], ...]] = {
    "blindfed": tuple(
        {"lr": lr, **server} for server in _SERVERS for lr in (1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1)
    ),
    "readout": tuple(
        {"readout": readout, "lr": lr} for readout in READOUTS for lr in (1e-2, 3e-2, 1e-1)
    ),
}

#: DINOv2-S's candidates: the client learning rate over the ``digits`` preset (its server
#: optimiser and readout), with the head's inputs as they come and standardised by each owner
#: (:class:`~blindfed.nn.adapter.AdaptedClassifier`). As they come, the preset's 0.1 fails
#: outright (two of the demo's three owners' first local update is NaN); standardised, it
#: is the best (docs/federation.md). A 12-block federation costs about 16 s a round on 2
#: cores, so the grid stays small.
DINOV2_STAGES: dict[str, tuple[dict[str, Any], ...]] = {
    "blindfed": (
        *({"lr": lr} for lr in (1e-2, 3e-2, 1e-1)),
        *({"lr": lr, "standardise": True} for lr in (3e-2, 1e-1)),
    ),
}

#: Per foundation model: the preset its first stage's candidates are laid over, and its stages.
STAGES: dict[str, tuple[str, dict[str, tuple[dict[str, Any], ...]]]] = {
    "mnist-vit": ("paper", BLINDFED_STAGES),
    "dinov2-small": ("digits", DINOV2_STAGES),
}

PARTS: tuple[str, ...] = (*BLINDFED_STAGES, "central", "federated")

#: The centralised baselines' settings
#: (:class:`~blindfed.experiments.baselines.BaselineConfig` fields), the methods that each one
#: drives and its candidates, chosen in this order (a field is tried with the values already
#: chosen for the fields before it that drive the same methods).
CENTRAL_GRID: dict[str, tuple[tuple[str, ...], tuple[Any, ...]]] = {
    "head_lr": (("linear_probe", "student_head"), (3e-3, 1e-2, 3e-2)),
    "probe_readout": (("linear_probe", "student_head"), tuple(READOUTS)),
    "lora_lr": (("lora",), (1e-3, 3e-3, 1e-2)),
    "lr": (("full_finetune",), (3e-4, 1e-3, 3e-3)),
}

#: The federated baselines' client learning rates.
FEDERATED_GRID: dict[str, tuple[float, ...]] = {
    "fedavg_linear_probe": (3e-2, 1e-1, 3e-1, 1.0, 3.0),
    "fedavg_lora": (3e-3, 1e-2, 3e-2, 1e-1),
    "fedavg_full_finetune": (3e-3, 1e-2, 3e-2),
}


@dataclass(frozen=True)
class TuneConfig:
    out: str = "blindfed-tune"
    owners: int = OWNERS
    alpha: float = DEFAULTS["alpha"]
    seed: int = DEFAULTS["seed"]
    rounds: int = DEFAULTS["rounds"]
    fraction: float = 0.2
    #: BlindFed's candidates are scored by their mean over this many validation splits
    #: (held-out draws ``seed``, ``seed + 1``, ...): one split of 288 digits moves by a digit
    #: (0.35 points) between neighbouring candidates. The baselines use the first split.
    splits: int = 3
    parts: tuple[str, ...] = PARTS
    #: The foundation model (:data:`blindfed.zoo.foundations.MODELS`) and its saved student (""
    #: for the zoo's, or, for DINOv2-S, distilled into ``out``).
    model: str = "mnist-vit"
    student: str = ""
    #: A finished ``blindfed demo --out`` whose owners' cached block outputs BlindFed's
    #: candidates reuse ("": each split runs its own online phase).
    passes: str = ""

    def __post_init__(self) -> None:
        from blindfed.zoo.foundations import check_model

        check_model(self.model)
        unknown = set(self.parts) - set(PARTS)
        if unknown or not self.parts:
            raise ValueError(f"unknown parts {sorted(unknown)}; known: {', '.join(PARTS)}")
        if self.splits < 1:
            raise ValueError(f"splits must be >= 1, got {self.splits}")
        if self.owners < 2 or self.rounds < 1:
            raise ValueError(f"need >= 2 owners and >= 1 round, got {self.owners}, {self.rounds}")


class _Rows:
    """``tune.json``: the settings and every finished candidate, written after each one."""

    def __init__(self, path: Path, config: TuneConfig) -> None:
        self.path = path
        settings = {k: v for k, v in asdict(config).items() if k not in ("out", "parts")}
        state = json.loads(path.read_text()) if path.exists() else {}
        if state and state.get("settings") != settings:
            raise ValueError(f"{path} was made with other settings {state['settings']}")
        self.state = {"settings": settings, "split": "validation", "rows": [], **state}

    def find(self, part: str, method: str, setting: dict[str, Any], split: int = 0) -> float | None:
        for row in self.state["rows"]:
            key = (row["part"], row["method"], row["setting"], row.get("split", 0))
            if key == (part, method, setting, split):
                return float(row["validation_accuracy"])
        return None

    def add(
        self, part: str, method: str, setting: dict[str, Any], accuracy: float, split: int = 0
    ) -> None:
        self.state["rows"].append(
            {
                "part": part,
                "method": method,
                "setting": setting,
                "split": split,
                "validation_accuracy": accuracy,
            }
        )
        self.save()

    def save(self) -> None:
        write_atomically(self.path, json.dumps(self.state, indent=1).encode())


def _best(scored: Sequence[tuple[Any, float]]) -> Any:
    return max(enumerate(scored), key=lambda e: (e[1][1], -e[0]))[1][0]


def run_tune(config: TuneConfig, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Runs the chosen parts; returns (and writes) ``{"settings", "split", "rows", "chosen"}``."""
    import numpy as np

    say = progress or print
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = _Rows(out / "tune.json", config)
    splits = [_split(config, j) for j in range(config.splits)]
    shares = splits[0]
    say(
        f"tune: {config.owners} owners, {sum(len(s.train_labels) for s in shares)} training and "
        f"{sum(len(s.test_labels) for s in shares)} validation digits per split, "
        f"{config.splits} splits (the test split unused)"
    )
    chosen: dict[str, Any] = rows.state.get("chosen", {})
    preset, stages = STAGES[config.model]
    base: dict[str, Any] = {}
    for part, stage in stages.items():
        if part in config.parts:
            grid = tuple({**base, **c} for c in stage)
            chosen[part] = _blindfed(config, splits, rows, out, say, part, grid, preset)
        base = chosen.get(part, base)
    if "central" in config.parts:
        train_x = np.concatenate([s.train_images for s in shares])
        train_y = np.concatenate([s.train_labels for s in shares])
        val_x = np.concatenate([s.test_images for s in shares])
        val_y = np.concatenate([s.test_labels for s in shares])
        chosen["central"] = _central(config, (train_x, train_y, val_x, val_y), rows, out, say)
    if "federated" in config.parts:
        chosen["federated"] = _federated(config, shares, rows, chosen.get("blindfed"), say)
    rows.state["chosen"] = chosen
    rows.save()
    return rows.state


def _shares(config: TuneConfig) -> list:
    """The owners' data: as the demo shares it out, or that of the demo in ``passes``."""
    from blindfed.fl.owner_data import OwnerData

    if not config.passes:
        return [
            OwnerData.digits_share(
                k, config.owners, alpha=config.alpha, seed=config.seed, model=config.model
            )
            for k in range(config.owners)
        ]
    shares = []
    for k in range(config.owners):
        owner = _passes_owner(config, k)
        if not (owner / "offer.bin").exists():
            raise ValueError(f"{owner} holds no finished online phase to reuse")
        shares.append(OwnerData.load(owner / "data.npz"))
    return shares


def _passes_owner(config: TuneConfig, k: int) -> Path:
    return Path(config.passes, "owners", f"owner-{k}")


def _split(config: TuneConfig, j: int) -> list:
    """Validation split ``j``: the owners' shares with draw ``seed + j`` held out."""
    return [share.holdout(config.fraction, seed=config.seed + j) for share in _shares(config)]


def _servers(blindfed: dict | None) -> dict[str, Any]:
    """The server-optimiser keys the ``blindfed`` part chose (the ``digits`` preset's if it
    has not run)."""
    from blindfed.fl.run import PRESETS

    chosen = blindfed or PRESETS["digits"]
    return {k: v for k, v in chosen.items() if k.startswith("server-")}


def _blindfed(
    config: TuneConfig,
    splits: list,
    rows: _Rows,
    out: Path,
    say: Callable,
    part: str,
    grid: Sequence[dict[str, Any]],
    preset: str,
) -> dict:
    student = _student(config, out, say)
    scored = []
    for i, candidate in enumerate(grid):
        accuracies = []
        for j, shares in enumerate(splits):
            accuracy = rows.find(part, "blindfed", candidate, j)
            if accuracy is None:
                name = f"{i}-{j}" if part == "blindfed" else f"{part}-{i}-{j}"
                accuracy = _federate(config, candidate, shares, student, out, name, j, preset)
                rows.add(part, "blindfed", candidate, accuracy, j)
            accuracies.append(accuracy)
        mean = sum(accuracies) / len(accuracies)
        shown = ", ".join(f"{a:.1f}" for a in accuracies)
        say(f"{part} {candidate}: {mean:.1f} % on validation (splits: {shown})")
        scored.append((candidate, mean))
    return _best(scored)


def _federate(
    config: TuneConfig,
    candidate: dict[str, Any],
    shares: list,
    student: Any,
    out: Path,
    name: str,
    split: int,
    preset: str,
) -> float:
    """One BlindFed federation on one validation split; its final round's accuracy."""
    from blindfed.fl.owner_node import OwnerNode
    from blindfed.fl.run import PRESETS, merge_settings, provide
    from blindfed.fl.server import RoundFailedError
    from blindfed.fl.transport import LocalTransport

    owners = out / ("owners" if split == 0 else f"owners-split{split}")
    nodes = {}
    for k, share in enumerate(shares):
        directory = owners / f"owner-{k}"
        # Each candidate's rounds start afresh; the cached block outputs are kept.
        shutil.rmtree(directory / "rounds", ignore_errors=True)
        if config.passes:
            nodes[k + 1] = _reusing(config, k, directory, split)
        else:
            nodes[k + 1] = OwnerNode(directory, share, name=str(k + 1))
    settings = merge_settings(
        {},
        {
            **PRESETS[preset],
            **candidate,
            "rounds": config.rounds,
            "min-owners": config.owners,
            "mode": "simulate",
            "seed": config.seed,
            "state-dir": str(out / "blindfed" / f"candidate-{name}"),
        },
    )
    try:
        result = provide(settings, LocalTransport(nodes), {"student": student})
    except (RoundFailedError, ValueError) as e:
        # Diverged (an owner's update is not finite, so it cannot be encoded): it scores 0.
        log.warning("candidate %s on split %d failed: %s", candidate, split, e)
        return 0.0
    return float(result["history"][-1]["accuracy"])


def _reusing(config: TuneConfig, k: int, directory: Path, split: int) -> Any:
    """Owner ``k`` of the demo in ``passes``, its session and cached outputs linked into
    ``directory`` (its rounds kept apart from the demo's), holding out validation split
    ``split`` of its training outputs."""
    from blindfed.fl.owner_data import OwnerData
    from blindfed.fl.owner_node import OwnerNode

    source = _passes_owner(config, k).resolve()
    directory.mkdir(parents=True, exist_ok=True)
    for name in ("passes", "offer.bin", "key_seed"):
        link = directory / name
        if not link.is_symlink() and (source / name).exists():
            link.symlink_to(source / name)
    return OwnerNode(
        directory,
        OwnerData.load(source / "data.npz"),
        name=str(k + 1),
        holdout=(config.fraction, config.seed + split),
    )


def _student(config: TuneConfig, out: Path, say: Callable) -> Any:
    """The student BlindFed's candidates federate: ``config.student``, the zoo's, or (for a
    model the zoo has none of) distilled into ``out`` like the demo's."""
    from blindfed import zoo
    from blindfed.experiments.foundation import load_foundation

    if config.model == "mnist-vit" and not config.student:
        return zoo.load_student()
    return load_foundation(config.model, out, student=config.student, say=say).student


def _central(config: TuneConfig, data: tuple, rows: _Rows, out: Path, say: Callable) -> dict:
    """The centralised baselines' fields, those of the methods ``config.model`` affords."""
    from blindfed.experiments.baselines import BaselineConfig, run_baselines
    from blindfed.experiments.foundation import baselines_of
    from blindfed.zoo.foundations import load_teacher

    affordable = baselines_of(config.model)[0]
    models = {"teacher": load_teacher(config.model), "student": _student(config, out, say)}
    chosen: dict[str, Any] = {}
    for field_name, (drives, values) in CENTRAL_GRID.items():
        methods = tuple(m for m in drives if m in affordable)
        if not methods:
            continue
        before = {
            f: chosen[f]
            for f, (drives, _) in CENTRAL_GRID.items()
            if f in chosen and set(drives) & set(methods)
        }
        scored = []
        for value in values:
            setting = {**before, field_name: value}
            accuracies = [rows.find("central", m, setting) for m in methods]
            if None in accuracies:
                results = run_baselines(
                    *data,
                    **models,
                    methods=methods,
                    config=BaselineConfig(seed=config.seed, **setting),  # type: ignore[arg-type]
                )
                accuracies = [results[m]["accuracy"] for m in methods]
                for m, a in zip(methods, accuracies, strict=True):
                    rows.add("central", m, setting, a)
            mean = sum(accuracies) / len(accuracies)  # type: ignore[arg-type]
            say(f"central {'/'.join(methods)} {setting}: {mean:.1f} % on validation")
            scored.append((value, mean))
        chosen[field_name] = _best(scored)
    return chosen


def _federated(
    config: TuneConfig, shares: list, rows: _Rows, blindfed: dict | None, say: Callable
) -> dict:
    """With BlindFed's chosen server optimiser (when that part ran), so that the baselines
    and BlindFed differ only in what the owners train; then the linear probe's readout at its
    chosen rate."""
    from blindfed.experiments.federated_baselines import FederatedBaselineConfig, run_federated
    from blindfed.experiments.foundation import baselines_of
    from blindfed.zoo.foundations import load_teacher

    teacher = load_teacher(config.model)
    affordable = baselines_of(config.model)[1]
    server = _servers(blindfed)

    def score(method: str, setting: dict[str, Any], **fields: Any) -> float:
        accuracy = rows.find("federated", method, setting)
        if accuracy is None:
            cfg = FederatedBaselineConfig(
                rounds=config.rounds,
                seed=config.seed,
                **{k.replace("-", "_"): v for k, v in server.items()},
                **fields,
            )
            result = run_federated(shares, teacher, methods=(method,), config=cfg)
            accuracy = float(result[method]["accuracy"])
            rows.add("federated", method, setting, accuracy)
        return accuracy

    chosen: dict[str, Any] = {}
    for method, values in FEDERATED_GRID.items():
        if method not in affordable:
            continue
        scored = []
        for lr in values:
            accuracy = score(method, {"lr": lr, **server}, lr={method: lr})
            say(f"federated {method} lr {lr:g}: {accuracy:.1f} % on validation")
            scored.append((lr, accuracy))
        chosen[method] = _best(scored)
    probe, lr = "fedavg_linear_probe", chosen["fedavg_linear_probe"]
    scored = []
    for readout in READOUTS:
        setting = {"lr": lr, "probe_readout": readout, **server}
        accuracy = score(probe, setting, lr={probe: lr}, probe_readout=readout)
        say(f"federated {probe} lr {lr:g}, readout {readout}: {accuracy:.1f} % on validation")
        scored.append((readout, accuracy))
    chosen["probe_readout"] = _best(scored)
    return chosen
