"""``blindfed tune``: candidates scored on validation, resumed, and a demo's passes reused."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from blindfed.fl.owner_data import OwnerData  # noqa: E402
from blindfed.protocol import Provider  # noqa: E402


def test_tune_scores_candidates_on_validation_and_resumes(tmp_path, monkeypatch):
    from blindfed.experiments import tune

    stages = {"blindfed": ({"lr": 1e-3}, {"lr": 3e-2}), "readout": ({"readout": "mean"},)}
    monkeypatch.setattr(tune, "STAGES", {"mnist-vit": ("paper", stages)})
    monkeypatch.setattr(
        tune,
        "CENTRAL_GRID",
        {
            "head_lr": (("linear_probe",), (1e-3, 1e-2)),
            "probe_readout": (("linear_probe",), ("cls", "mean")),
        },
    )
    monkeypatch.setattr(tune, "FEDERATED_GRID", {"fedavg_linear_probe": (1e-3, 1e-1)})
    cfg = tune.TuneConfig(out=str(tmp_path / "t"), owners=2, rounds=2, fraction=0.2, splits=2)
    report = tune.run_tune(cfg, progress=lambda _: None)
    rows = report["rows"]
    # BlindFed: 2 candidates x 2 validation splits, then 1 readout x 2 splits; the baselines
    # on split 0: 2 rates then 2 readouts (central), 2 rates then 3 readouts (federated).
    assert report["split"] == "validation" and len(rows) == 4 + 2 + 4 + 5
    assert sorted(r["split"] for r in rows if r["part"] == "blindfed") == [0, 0, 1, 1]
    # A stage's candidates lie over the previous stage's choice.
    assert report["chosen"]["readout"] == {**report["chosen"]["blindfed"], "readout": "mean"}
    # The probes' readout is tried at the rate chosen before it.
    head_lr = report["chosen"]["central"]["head_lr"]
    assert {"head_lr": head_lr, "probe_readout": "mean"} in [r["setting"] for r in rows]
    assert report["chosen"]["federated"]["probe_readout"] in ("cls", "mean", "cls+mean")

    def mean(part, setting):
        scored = [
            r["validation_accuracy"] for r in rows if (r["part"], r["setting"]) == (part, setting)
        ]
        return sum(scored) / len(scored)

    best = max(stages["blindfed"], key=lambda c: mean("blindfed", c))
    assert report["chosen"]["blindfed"] == best
    lrs = tune.FEDERATED_GRID["fedavg_linear_probe"]
    best_lr = max(lrs, key=lambda lr: mean("federated", {"lr": lr}))
    assert report["chosen"]["federated"]["fedavg_linear_probe"] == best_lr
    # Run again: every candidate is found in tune.json, nothing trains.
    monkeypatch.setattr("blindfed.fl.run.provide", _never)
    monkeypatch.setattr("blindfed.experiments.baselines.run_baselines", _never)
    monkeypatch.setattr("blindfed.experiments.federated_baselines.run_federated", _never)
    again = tune.run_tune(cfg, progress=lambda _: None)
    assert again["rows"] == rows and again["chosen"] == report["chosen"]
    with pytest.raises(ValueError, match="other settings"):
        tune.run_tune(tune.TuneConfig(out=cfg.out, owners=2, rounds=3, splits=2), progress=print)


def test_tune_reuses_a_demos_passes_and_validates_on_held_out_outputs(tmp_path, monkeypatch):
    from blindfed.experiments import tune
    from blindfed.experiments.demo import DemoConfig, run_demo
    from blindfed.fl.owner_node import OwnerNode

    demo = tmp_path / "demo"
    run_demo(
        DemoConfig(
            out=str(demo),
            owners=2,
            mode="simulate",
            runtime="local",
            rounds=1,
            train_samples=120,
            test_samples=40,
            baselines=False,
            progress=False,
        )
    )
    rounds = sorted(p.name for p in (demo / "owners" / "owner-0" / "rounds").iterdir())
    stages = {"blindfed": ({"lr": 1e-3}, {"lr": 3e-2})}
    monkeypatch.setattr(tune, "STAGES", {"mnist-vit": ("digits", stages)})
    # No block is served again: the candidates train on the demo's cached outputs.
    monkeypatch.setattr(Provider, "forward", _never)
    cfg = tune.TuneConfig(
        out=str(tmp_path / "t"),
        owners=2,
        rounds=1,
        splits=2,
        parts=("blindfed",),
        passes=str(demo),
    )
    report = tune.run_tune(cfg, progress=lambda _: None)
    scored = [r for r in report["rows"] if r["part"] == "blindfed"]
    assert len(scored) == 4 and all(0 < r["validation_accuracy"] <= 100 for r in scored)
    assert report["chosen"]["blindfed"] in stages["blindfed"]
    # The demo's own rounds are left as they were.
    assert sorted(p.name for p in (demo / "owners" / "owner-0" / "rounds").iterdir()) == rounds
    # A split holds out a fifth of each label's training outputs; the test split is unread.
    source = demo / "owners" / "owner-0"
    node = OwnerNode(tmp_path / "t" / "owners" / "owner-0", OwnerData.load(source / "data.npz"))
    held = node.reopened()
    held.holdout = (0.2, cfg.seed)
    x, y = node.outputs("train")
    fit, fit_y = held.outputs("train")
    val, val_y = held.outputs("test")
    assert len(fit) + len(val) == len(x) and sorted([*fit_y, *val_y]) == sorted(y)
    for label in np.unique(y):
        assert (val_y == label).sum() == round(0.2 * (y == label).sum())
    with pytest.raises(ValueError, match="no finished online phase"):
        tune.run_tune(
            tune.TuneConfig(out=str(tmp_path / "u"), owners=3, passes=str(demo)),
            progress=lambda _: None,
        )


def _never(*args, **kwargs):
    raise AssertionError("a finished candidate ran again")
