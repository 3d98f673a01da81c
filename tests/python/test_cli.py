"""The command line: the demo runs and checks its own result; bad options are errors."""

import json

import pytest

from blindfed.cli import main


def test_demo_runs_and_reports(tmp_path, capsys):
    out = tmp_path / "demo.json"
    assert main(["demo", "--log-n", "13", "--levels", "2", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["max_abs_error"] < 1e-3
    assert report["ciphertext_bytes"] < report["reply_bytes"] * 2
    block = report["block"]
    assert block["error_relative_to_range"] < 1e-3
    # The tracer predicted the encrypted run's key switches (plus the input's separation).
    assert block["key_switches"] == block["predicted_key_switches"]
    model = report["model"]
    assert model["shown"] and model["teacher_test_accuracy"] > 90
    online = report["online"]
    assert online["mode"] == "simulate"
    assert online["adapted_accuracy"] > online["linear_probe_accuracy"]
    assert model["teacher_test_accuracy"] - model["student_test_accuracy"] < 1.0
    out = capsys.readouterr().out
    assert "encrypted transformer block" in out and "zoo ViT" in out


def test_block_bench_rejects_unknown_shapes():
    with pytest.raises(SystemExit):
        main(["bench", "block", "--shapes", "vit_huge"])


def test_demo_refuses_insecure_parameters(capsys):
    assert main(["demo", "--log-n", "13", "--levels", "6"]) == 2
    assert "insecure" in capsys.readouterr().err


def test_bad_bench_sets_are_rejected():
    with pytest.raises(SystemExit):
        main(["bench", "ckks", "--sets", "14"])


def test_adapt_runs_the_online_phase_in_simulate_mode(tmp_path, capsys):
    out = tmp_path / "adapt.json"
    argv = ["adapt", "--train-samples", "300", "--test-samples", "100", "--epochs", "10"]
    argv += ["--provider-seed", "1"]
    assert main([*argv, "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["mode"] == "simulate" and report["train_samples"] == 300
    assert all(r[-1] == 3 for r in report["revealed"])  # the last block is always revealed
    assert report["adapted_accuracy"] > 50  # ten classes: chance is 10 %
    assert "simulate" in capsys.readouterr().out
