"""The owner's model: adapters and head, its readouts and its input standardisation."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from blindfed.fl.fedavg import make_model  # noqa: E402
from blindfed.fl.settings import merge_settings  # noqa: E402


def test_readouts_read_what_they_name_and_travel_to_the_owners():
    from blindfed.experiments.baselines import BaselineConfig, run_baselines
    from blindfed.nn.adapter import READOUTS, AdaptedClassifier, read_out

    tokens = torch.randn(5, 4, 3)
    assert torch.equal(read_out(tokens, "cls"), tokens[:, 0])
    assert torch.allclose(read_out(tokens, "mean"), tokens[:, 1:].mean(1))
    assert read_out(tokens, "cls+mean").shape == (5, 6)
    with pytest.raises(ValueError, match="unknown readout 'max'"):
        read_out(tokens, "max")
    with pytest.raises(ValueError, match="patch tokens"):
        read_out(tokens[:, :1], "mean")
    # The head reads what the readout gives; only the class token's path matters under "cls".
    outputs = torch.randn(2, 3, 4, 8)
    for readout in READOUTS:
        torch.manual_seed(0)
        model = AdaptedClassifier(3, 8, 5, rank=2, readout=readout)
        assert model.head.in_features == (16 if readout == "cls+mean" else 8)
        moved = outputs.clone()
        moved[:, :, 1:] += torch.randn_like(moved[:, :, 1:])
        changed = not torch.allclose(model(outputs), model(moved))
        assert changed == (readout != "cls")
    # The run config names it; the federation's owners build the same model from their config.
    settings = merge_settings({}, {"readout": "mean"})
    fed = __import__("blindfed.fl.run", fromlist=["x"]).federation_config(settings)
    assert fed.readout == "mean" and '"readout": "mean"' in fed.owner_config(1)
    assert merge_settings({}, {"preset": "paper"})["readout"] == "cls"
    with pytest.raises(ValueError, match="unknown readout"):
        make_model(2, 8, 3, 1, "max")
    from blindfed.experiments.demo import DemoConfig

    with pytest.raises(ValueError, match="unknown readout 'max'"):
        DemoConfig(settings={"readout": "max"})  # refused before any pass runs
    # The probes offer the same readouts (a head twice as wide on cls+mean).
    rng = np.random.default_rng(0)
    images = rng.random((30, 1, 28, 28)).astype(np.float32)
    labels = rng.integers(0, 10, 30)
    widths = {
        readout: run_baselines(
            images,
            labels,
            images[:10],
            labels[:10],
            methods=("linear_probe",),
            config=BaselineConfig(probe_epochs=1, probe_readout=readout),
        )["linear_probe"]["trainable_parameters"]
        for readout in READOUTS
    }
    assert widths == {"cls": 650, "mean": 650, "cls+mean": 1290}
    with pytest.raises(ValueError, match="probe_readout"):
        BaselineConfig(probe_readout="max")


def test_standardised_inputs_put_every_feature_on_one_scale_and_stay_with_the_owner():
    from blindfed.fl.fedavg import LocalTraining, get_vector, local_update
    from blindfed.fl.run import federation_config
    from blindfed.nn.adapter import accuracy, standardisation

    # Block outputs as a real model's are: one feature a hundred times wider than the rest
    # (pure noise), the label in a narrow one; block 0 hidden for half the samples.
    gen = torch.Generator().manual_seed(0)
    n, width = 400, 16
    labels = torch.randint(0, 2, (n,), generator=gen)
    x = torch.randn(n, 2, 3, width, generator=gen)
    x[..., 0] *= 100.0
    x[..., 1] = 0.05 * (2.0 * labels.view(n, 1, 1) - 1.0) + 0.01 * x[..., 1]
    x[::2, 0] = 0.0
    mean, scale = standardisation(x)
    shown = x[1::2, 0]
    assert torch.allclose(mean[0, 1], shown[:, 1:].mean((0, 1)), atol=1e-5)
    assert torch.allclose(scale[1, 0], 1 / x[:, 1, :1].std((0, 1), correction=0), rtol=1e-3)
    model = make_model(2, width, 2, rank=0, readout="cls", standardise=True)
    model.standardise_by(mean, scale)
    # A hidden block stays zero for the adapters; the statistics are buffers, not what
    # federated averaging adds up.
    hidden = x[:2].clone()
    hidden[:, 0] = 0.0
    assert torch.equal(model._standardised(hidden)[:, 0], torch.zeros_like(hidden[:, 0]))
    assert len(get_vector(model)) == len(get_vector(make_model(2, width, 2, rank=0)))
    # The same SGD separates the classes with the inputs standardised, not without.
    results = {}
    for standardise in (False, True):
        torch.manual_seed(0)
        model = make_model(2, width, 2, rank=0, readout="cls", standardise=standardise)
        model.standardise_by(*standardisation(x[:300]))
        local_update(model, x[:300].numpy(), labels[:300].numpy(), 0.03, LocalTraining(epochs=3))
        results[standardise] = accuracy(model, x[300:].numpy(), labels[300:].numpy())
    assert results[True] >= 95.0 > results[False] + 20.0
    with pytest.raises(ValueError, match="block outputs"):
        standardisation(x[:, :, :1])
    # DINOv2's preset turns it on; the owners get it with their round's config.
    settings = merge_settings({}, {"preset": "dinov2"})
    assert settings["standardise"] and not merge_settings({}, None)["standardise"]
    assert '"standardise": true' in federation_config(settings).owner_config(1)
