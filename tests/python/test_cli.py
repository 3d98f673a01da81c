"""The command line: the demo and the online phase run and report; bad options are errors."""

import json

import numpy as np
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
    # Only the first blocks, on request; a count the student does not have is refused.
    argv = ["bench", "e2e", "--samples", "8", "--modes", "simulate", "--json", str(out)]
    assert main([*argv, "--blocks", "1"]) == 0
    assert json.loads(out.read_text())["blocks"] == 1
    assert main([*argv, "--blocks", "9"]) == 2


def test_e2e_precision_compares_every_block_and_what_the_owner_received():
    """Two runs drawn alike record the same blocks; the report finds a planted error."""
    pytest.importorskip("torch")
    from blindfed import zoo
    from blindfed.data import digits_for_mnist_model
    from blindfed.experiments.bench import e2e

    student = zoo.load_student()
    data = digits_for_mnist_model("train")
    images, labels = data.images[:12], data.labels[:12]
    a = e2e._protocol("simulate", student, images, labels)["_outputs"]
    b = e2e._protocol("simulate", student, images, labels)["_outputs"]
    blocks = student.config.depth
    assert sorted(a["blocks"]) == list(range(blocks))
    assert blocks - 1 in a["received"]  # the last block is always revealed
    rows = e2e.precision(a, b)
    assert len(rows) == blocks + len(a["received"])
    assert all(r["max_abs_error"] == 0.0 for r in rows)
    planted = b["blocks"][1].copy()
    planted[3, 5, 7] += 1e-3 * np.ptp(planted)
    b["blocks"][1] = planted
    row = next(r for r in e2e.precision(a, b) if r["block"] == 1 and r["output"] == "block output")
    assert row["error_over_range"] == pytest.approx(1e-3, rel=0.05)


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


def test_distill_refuses_bad_families(capsys):
    pytest.importorskip("torch")
    assert main(["distill", "--softmax", "chebyshev:x", "--out", "unused"]) == 2
    err = capsys.readouterr().err
    assert "chebyshev:x" in err and "not key=value" not in err  # refused for what it is
    assert main(["distill", "--spec", "norm=batch", "--out", "unused"]) == 2
    assert "norm" in capsys.readouterr().err


def test_distill_slot_options_apply_over_the_spec_or_preset():
    import argparse

    from blindfed.approx import StudentSpec
    from blindfed.cli import student

    parser = argparse.ArgumentParser()
    student.register(parser.add_subparsers(dest="command"))

    def spec(*argv: str) -> StudentSpec:
        return StudentSpec(student._spec_text(parser.parse_args(["distill", *argv])))

    assert spec("--gelu", "chebyshev:15").text == StudentSpec("gelu=chebyshev:15").text
    paper = spec("--spec", "paper", "--gelu", "chebyshev:15")
    assert paper.numerator.kind == "exp:taylor:6" and paper.gelu.kind == "gelu:chebyshev:15"
    assert spec("--spec", "norm=affine", "--gelu", "quad").text == StudentSpec("norm=affine").text


def test_distill_study_chooses_by_validation_and_trace():
    """The study's rule, on rows made up for it: cheapest within tolerance of the reference."""
    from blindfed.experiments.bench.students import choose_default, format_table

    def row(name, accuracy, seconds):
        depth = {"attention": 6, "mlp": 3, "inv_sqrt": 0, "reciprocal": 0, "narrow_step": 0}
        blocks = [{"depth": depth}]
        shape = {
            "log_n": 14,
            "key_switches_per_sample": 1.0,
            "predicted_seconds_per_sample": seconds,
        }
        return {
            "name": name,
            "validation_accuracy": [accuracy],
            "test_accuracy": [accuracy],
            "mean_validation_accuracy": accuracy,
            "mnist_blocks": blocks,
            "shapes": {"vit_tiny": shape, "vit_base": shape},
            "encrypted_block": {"error_relative_to_range": 1e-5, "seconds": 2.0, "samples": 4},
        }

    rows = [row("reference", 97.0, 20.0), row("cheap", 96.6, 5.0), row("cheaper", 96.0, 3.0)]
    assert choose_default(rows, tolerance=0.5) == "cheap"
    assert choose_default(rows, tolerance=1.0) == "cheaper"
    table = format_table({"rows": rows, "default": "cheap"})
    assert "cheap **(default)**" in table and table.count("\n") == len(rows) + 1
    # Owner normalisation changes no encrypted operation: a tie goes to the smaller upload.
    owner = row("cheap+owner", 96.9, 5.0)
    owner["shapes"] = {
        k: {**v, "owner_normalised": {"extra_upload_bytes_per_sample": 1e6}}
        for k, v in owner["shapes"].items()
    }
    assert choose_default([owner, *rows], tolerance=0.5) == "cheap"


def test_provider_bench_compares_ray_evaluators_with_the_in_process_provider():
    pytest.importorskip("torch")
    pytest.importorskip("ray")
    from blindfed.experiments.bench import provider

    # A small insecure ring keeps the test short; `blindfed bench provider` plans a 128-bit one.
    report = provider.run(groups=2, requests=2, evaluators=(2,), insecure_log_n=11)
    rows = {r["provider"]: r for r in report["rows"]}
    assert next(iter(rows)) == "in process" and rows["in process"]["ratio_to_in_process"] == 1.0
    ray_row = rows[next(name for name in rows if name.startswith("ray, 2 evaluators"))]
    assert ray_row["group_blocks_per_second"] > 0 and ray_row["cores"] == report["cores"]
    assert "groups/s" in provider.format_table(report)
    with pytest.raises(ValueError, match="2 requests"):
        provider.run(requests=1)
