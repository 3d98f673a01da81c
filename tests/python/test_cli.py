"""The command line: the demo and the online phase run and report; bad options are errors."""

import json

import pytest

from blindfed.cli import main


def test_demo_refuses_bad_options(capsys):
    assert main(["demo", "--owners", "1"]) == 2
    assert "at least 2 owners" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["demo", "--mode", "fast"])


def test_block_bench_rejects_unknown_shapes():
    with pytest.raises(SystemExit):
        main(["bench", "block", "--shapes", "vit_huge"])


def test_e2e_bench_reports_ratios_against_plaintext(tmp_path, capsys):
    pytest.importorskip("torch")
    out = tmp_path / "e2e.json"
    assert main(["bench", "e2e", "--samples", "24", "--modes", "simulate", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["samples"] == 24 and report["ratios"]["simulate/plaintext"] > 0
    assert "simulate/plaintext" in capsys.readouterr().out


def test_bad_bench_sets_are_rejected():
    with pytest.raises(SystemExit):
        main(["bench", "ckks", "--sets", "14"])


def test_adapt_runs_the_online_phase_in_simulate_mode(tmp_path, capsys):
    pytest.importorskip("torch")
    out = tmp_path / "adapt.json"
    argv = ["adapt", "--train-samples", "300", "--test-samples", "100", "--epochs", "10"]
    argv += ["--provider-seed", "1"]
    assert main([*argv, "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["mode"] == "simulate" and report["train_samples"] == 300
    assert all(r[-1] == 3 for r in report["revealed"])  # the last block is always revealed
    assert report["adapted_accuracy"] > 50  # ten classes: chance is 10 %
    assert "simulate" in capsys.readouterr().out
