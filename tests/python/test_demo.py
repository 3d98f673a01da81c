"""The demo end to end (simulate mode, small): the command, its report, and a resumed run."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")

from blindfed.cli import main  # noqa: E402
from blindfed.experiments.demo import DemoConfig, run_demo  # noqa: E402
from blindfed.experiments.report import accuracy_rows, render_markdown  # noqa: E402

PNG = b"\x89PNG\r\n\x1a\n"


def test_the_demo_reports_and_resumes(tmp_path, capsys):
    out = tmp_path / "demo"
    argv = ["demo", "--mode", "simulate", "--runtime", "local", "--rounds", "2", "--out", str(out)]
    argv += ["--train-samples", "150", "--test-samples", "60", "--no-progress"]
    argv += ["--baseline-epochs", "1"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    assert report["mode"] == "simulate" and len(report["federation"]["rounds"]) == 2
    assert sum(o["train_samples"] for o in report["owners"]) == 150
    assert sum(o["test_samples"] for o in report["owners"]) == 60
    # Every owner's batch went through every block once (train and test share a group).
    blocks = report["online"]["per_block"]
    assert [b["samples"] for b in blocks] == [210] * 4 and blocks[-1]["revealed_samples"] == 210
    assert set(report["baselines"]) >= {"linear_probe", "lora", "full_finetune", "student_head"}
    assert set(report["baselines"]) >= {"fedavg_linear_probe", "fedavg_lora"}
    assert all(0 <= b["accuracy"] <= 100 for b in report["baselines"].values())
    assert report["baselines"]["fedavg_lora"]["rounds"] == 2
    # The federation's optimisation settings are in the report (the tuned preset's).
    assert report["federation"]["settings"]["lr"] > 0
    # The summary and the report say which mode ran; simulate is never called execute.
    assert "BlindFed" in printed and "simulate" in printed and "execute" not in printed
    markdown = (out / "report.md").read_text()
    assert markdown.startswith("# blindfed demo report (simulate mode)")
    assert "Simulate mode" in markdown and "LoRA" in markdown and "FedAvg of LoRA" in markdown
    for name in ("accuracy_per_round.png", "blocks.png"):
        assert (out / name).read_bytes()[:8] == PNG
    # Asked for one more round with the same output directory: the provider resumes after
    # round 2 and the owners' passes come from their caches (no block is served again).
    again = run_demo(
        DemoConfig(
            out=str(out),
            mode="simulate",
            runtime="local",
            rounds=3,
            train_samples=150,
            test_samples=60,
            baselines=False,
            progress=False,
        )
    )
    rounds = again["federation"]["rounds"]
    assert [r["round"] for r in rounds] == [1, 2, 3]
    assert [r["accuracy"] for r in rounds[:2]] == [
        r["accuracy"] for r in report["federation"]["rounds"]
    ]
    assert all(b["samples"] == 0 for b in again["online"]["per_block"])


def test_the_demo_runs_its_passes_and_rounds_through_flower(tmp_path):
    pytest.importorskip("ray", reason="Flower's simulation runtime needs ray")
    report = run_demo(
        DemoConfig(
            out=str(tmp_path / "demo"),
            mode="simulate",
            runtime="flower",
            rounds=2,
            train_samples=150,
            test_samples=60,
            baselines=False,
            progress=False,
        )
    )
    assert report["federation"]["runtime"] == "Flower simulation runtime"
    # The online phase ran inside the Flower run, every block metered through the hooks.
    blocks = report["online"]["per_block"]
    assert [b["samples"] for b in blocks] == [210] * 4
    assert report["online"]["wall_seconds"] > 0
    assert [r["round"] for r in report["federation"]["rounds"]] == [1, 2]


def test_the_report_ranks_methods_and_labels_simulate():
    report = {
        "mode": "simulate",
        "settings": {"rank": 8},
        "owners": [{"name": "a", "train_samples": 1, "test_samples": 1, "labels": [1]}] * 2,
        "federation": {
            "runtime": "in process",
            "rounds": [
                {
                    "round": 1,
                    "lr": 1e-3,
                    "owners": [1, 2],
                    "survivors": [1, 2],
                    "accuracy": 80.0,
                    "bytes_per_owner": {"1": 10, "2": 12},
                    "seconds": 1.0,
                }
            ],
        },
        "baselines": {
            "lora": {"label": "LoRA", "setting": "plaintext", "accuracy": 90.0},
            "probe": {"label": "probe", "setting": "plaintext", "accuracy": 70.0},
        },
        "seconds": 3.0,
    }
    assert [r[2] for r in accuracy_rows(report)] == [90.0, 80.0, 70.0]
    text = render_markdown(report)
    assert "Simulate mode" in text and "| 1 | 0.001 | 2/2 | 80.0 % |" in text


def test_demo_config_refuses_bad_settings():
    with pytest.raises(ValueError, match="at least 2 owners"):
        DemoConfig(owners=1)
    with pytest.raises(ValueError, match="mode"):
        DemoConfig(mode="fast")
    with pytest.raises(ValueError, match="every owner a sample"):
        DemoConfig(train_samples=2)


def test_each_model_runs_its_own_preset_unless_given_one(tmp_path):
    from blindfed.experiments.demo import _settings
    from blindfed.fl.run import merge_settings
    from blindfed.fl.settings import DEFAULTS, MODEL_PRESETS, PRESETS
    from blindfed.zoo.foundations import MODELS

    assert set(MODEL_PRESETS) == set(MODELS)

    def merged(**fields):
        return merge_settings({}, _settings(DemoConfig(**fields), tmp_path))

    dinov2 = merged(model="dinov2-small")
    assert dinov2["preset"] == "dinov2" and dinov2["lr"] == PRESETS["dinov2"]["lr"]
    # DINOv2's owners standardise the head's inputs; the embedded default's do not.
    assert dinov2["standardise"] and not DEFAULTS["standardise"]
    assert not merged()["standardise"] and merged()["lr"] == DEFAULTS["lr"]
    assert merged(model="dinov2-small", settings={"preset": "paper"})["lr"] == 1e-3
