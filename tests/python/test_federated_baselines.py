"""The federated baselines: FedAvg of a probe and of LoRA through secure aggregation."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from blindfed.fl.owner_data import OwnerData  # noqa: E402


def test_federated_baselines_train_through_secure_aggregation_and_leave_the_teacher():
    from blindfed import zoo
    from blindfed.experiments.federated_baselines import (
        FEDERATED_METHODS,
        FederatedBaselineConfig,
        run_federated,
    )

    teacher = zoo.load("mnist_vit")
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    shares = [OwnerData.digits_share(k, 2, train_samples=80, test_samples=40) for k in range(2)]
    cfg = FederatedBaselineConfig(rounds=2, milestones=(), server_optimizer="fedavgm")
    results = run_federated(shares, teacher, config=cfg)
    assert list(results) == list(FEDERATED_METHODS)
    assert results["fedavg_linear_probe"]["trainable_parameters"] == 650
    assert 650 < results["fedavg_lora"]["trainable_parameters"] < 20_000
    assert results["fedavg_full_finetune"]["trainable_parameters"] > 100_000
    for r in results.values():
        assert 0 <= r["accuracy"] <= 100 and "not double-blind" in r["setting"]
    # The probes learn: well above chance on 40 test digits after 2 rounds.
    assert results["fedavg_linear_probe"]["accuracy"] > 40
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in before.items())
    with pytest.raises(ValueError, match="unknown methods"):
        run_federated(shares, teacher, methods=("fedavg_svm",))
    with pytest.raises(ValueError, match="unknown methods"):
        FederatedBaselineConfig(lr={"fedprox": 1.0})
