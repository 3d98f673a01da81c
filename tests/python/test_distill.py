"""Distillation losses (Rust core vs torch reference) and the two-stage loop with resume."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from blindfed.approx import Approximation  # noqa: E402
from blindfed.distill import (  # noqa: E402
    DistillConfig,
    distill,
    layerwise_loss,
    mse_loss,
    mse_loss_reference,
    soft_target_kl,
    soft_target_kl_reference,
)
from blindfed.nn import PolyApprox, Student, ViT, ViTConfig  # noqa: E402


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_core_losses_equal_the_torch_references(dtype):
    g = torch.Generator().manual_seed(0)
    s = torch.randn(6, 10, generator=g, dtype=dtype) * 3
    t = torch.randn(6, 10, generator=g, dtype=dtype) * 3
    for core, ref, extra in [
        (mse_loss, mse_loss_reference, ()),
        (soft_target_kl, soft_target_kl_reference, (5.0,)),
        (soft_target_kl, soft_target_kl_reference, (1.0,)),
    ]:
        a = s.clone().requires_grad_()
        b = s.clone().requires_grad_()
        la, lb = core(a, t, *extra), ref(b, t, *extra)
        la.backward()
        lb.backward()
        tol = 1e-5 if dtype == torch.float32 else 1e-12
        assert la.dtype == dtype
        assert abs(la.item() - lb.item()) <= tol * (1 + abs(lb.item()))
        assert torch.allclose(a.grad, b.grad, rtol=tol * 10, atol=tol)


def test_core_losses_pass_gradcheck():
    g = torch.Generator().manual_seed(1)
    s = torch.randn(3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    t = torch.randn(3, 4, generator=g, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x: mse_loss(x, t), (s,))
    assert torch.autograd.gradcheck(lambda x: soft_target_kl(x, t, 5.0), (s,))


def test_loss_errors_are_clear():
    with pytest.raises(ValueError, match="shape"):
        mse_loss(torch.zeros(2, 3), torch.zeros(3, 2))
    with pytest.raises(ValueError, match="tau"):
        soft_target_kl(torch.zeros(2, 3), torch.zeros(2, 3), tau=0.0)
    with pytest.raises(ValueError, match="finite"):
        mse_loss(torch.tensor([float("nan")]), torch.tensor([0.0]))


TINY = ViTConfig(image_size=8, patch_size=4, width=16, depth=2, heads=2, mlp=32)


def setup(seed: int = 0):
    torch.manual_seed(seed)
    teacher = ViT(TINY).eval()
    student = Student.from_teacher(teacher)
    images = torch.randn(96, 1, 8, 8, generator=torch.Generator().manual_seed(seed))
    # Perturb the student so that there is something to distil.
    with torch.no_grad():
        for p in student.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return teacher, student, images


def test_stage_one_lowers_the_layerwise_loss():
    teacher, student, images = setup()
    student.calibrate([images])
    before = layerwise_loss(student, teacher, images).item()
    config = DistillConfig(epochs=4, stage1_epochs=4, batch_size=32, lr=2e-3)
    history = distill(teacher, student, images, config=config, progress=False)
    # Stage 0: the warm start, which trains the families' constants only.
    assert [h["stage"] for h in history] == [0, 1, 1, 1]
    assert layerwise_loss(student, teacher, images).item() < 0.7 * before
    assert all(h["out_of_range"] == 0 for h in history)


def test_interrupted_distillation_resumes_to_the_same_student(tmp_path):
    config = DistillConfig(epochs=4, stage1_epochs=2, batch_size=32, lr=1e-3)
    teacher, straight, images = setup()
    full = distill(teacher, straight, images, config=config, progress=False)
    assert [h["stage"] for h in full] == [0, 1, 2, 2]

    teacher, resumed, images = setup()

    class SimulatedCrashError(Exception):
        pass

    def crash_after_two(epoch, record):
        if epoch == 2:
            raise SimulatedCrashError

    with pytest.raises(SimulatedCrashError):
        distill(
            teacher,
            resumed,
            images,
            config=config,
            checkpoint_dir=tmp_path,
            progress=False,
            on_epoch=crash_after_two,
        )
    # A fresh process: new student object, same checkpoint directory.
    teacher, fresh, images = setup()
    history = distill(
        teacher, fresh, images, config=config, checkpoint_dir=tmp_path, progress=False
    )
    assert [h["epoch"] for h in history] == [1, 2, 3, 4]
    for a, b in zip(straight.state_dict().values(), fresh.state_dict().values(), strict=True):
        assert torch.allclose(a, b, atol=1e-6)
    with pytest.raises(ValueError, match="another config"):
        distill(
            teacher,
            fresh,
            images,
            config=DistillConfig(epochs=5),
            checkpoint_dir=tmp_path,
            progress=False,
        )


def test_teacher_forced_layerwise_loss_feeds_each_block_the_teachers_input():
    teacher, student, images = setup()
    student.calibrate([images])
    with torch.no_grad():
        t = teacher.features(images)
        want = mse_loss(student.embed(images), t.embeddings)
        inputs = [t.embeddings, *t.hidden[:-1]]
        for block, x, maps, h in zip(student.blocks, inputs, t.attentions, t.hidden, strict=True):
            out, smaps = block(x)
            want = want + mse_loss(smaps, maps) + mse_loss(out, h)
        got = layerwise_loss(student, teacher, images, teacher_forced=True)
    assert torch.isclose(got, want)
    assert not torch.isclose(got, layerwise_loss(student, teacher, images))


def test_range_penalty_is_zero_inside_its_target_and_pulls_inputs_in():
    m = PolyApprox(Approximation.goldschmidt(9, 1.0, 100.0)).train()
    m.keep_in((2.0, 8.0))
    m(torch.tensor([3.0, 5.0], dtype=torch.float64))
    assert float(m.penalty) == 0.0
    x = torch.tensor([1.0, 16.0], dtype=torch.float64, requires_grad=True)
    m.penalty = None
    m(x)
    (grad,) = torch.autograd.grad(m.penalty, x)
    assert m.penalty.item() > 0 and grad[0] < 0 < grad[1]
    m.keep_in(None)
    m(x)
    assert m.penalty is None


def test_family_constants_are_learned_and_saved(tmp_path):
    teacher, _, images = setup()
    student = Student.from_teacher(teacher, "softmax=quad denominator=constant norm=affine")
    config = DistillConfig(epochs=2, batch_size=32, lr=2e-3)
    distill(teacher, student, images, config=config, checkpoint_dir=tmp_path, progress=False)
    softmax = student.blocks[0].attn.softmax
    assert softmax.numerator.shift.item() != 0.0
    assert softmax.constants is not None and bool((softmax.constants > 0).all())
    student.save(tmp_path / "s.pt")
    again = Student.load(tmp_path / "s.pt")
    assert again.spec == student.spec
    assert torch.equal(again.blocks[0].norm1.inv_std, student.blocks[0].norm1.inv_std)
    assert again.blocks[0].attn.softmax.numerator.approximation == softmax.numerator.approximation


def test_a_loss_spike_rolls_the_epoch_back_and_halves_the_learning_rate(monkeypatch):
    import blindfed.distill as module

    teacher, student, images = setup()
    real = module.prediction_loss
    calls = {"n": 0}

    def spiking(*args, **kwargs):
        # The 8th stage-II batch of the first try blows up, as a diverging run does.
        calls["n"] += 1
        loss = real(*args, **kwargs)
        return loss * 1e6 if calls["n"] == 8 else loss

    monkeypatch.setattr(module, "prediction_loss", spiking)
    monkeypatch.setattr(module._DivergenceWatch, "WARMUP_BATCHES", 4)
    config = DistillConfig(epochs=2, stage1_epochs=0, warm_start_epochs=0, batch_size=8, lr=1e-3)
    history = distill(teacher, student, images, config=config, progress=False)
    first, second = history
    assert first["rollbacks"] == 1 and first["lr"] == pytest.approx(5e-4)
    assert second["rollbacks"] == 1 and second["lr"] == pytest.approx(5e-4)
    # The rolled-back epoch ran again from its start: 12 batches per epoch, 7 wasted.
    assert calls["n"] == 8 + 12 + 12
    assert all(torch.isfinite(p).all() for p in student.parameters())


def test_a_run_that_keeps_diverging_fails_clearly(monkeypatch):
    import blindfed.distill as module

    teacher, student, images = setup()
    real = module.prediction_loss
    monkeypatch.setattr(module, "prediction_loss", lambda *a, **k: real(*a, **k) * float("nan"))
    config = DistillConfig(
        epochs=1, stage1_epochs=0, warm_start_epochs=0, batch_size=32, max_rollbacks=2
    )
    with pytest.raises(FloatingPointError, match="after 2 roll-backs"):
        distill(teacher, student, images, config=config, progress=False)
    config = DistillConfig(
        epochs=1, stage1_epochs=0, warm_start_epochs=0, batch_size=32, divergence_ratio=None
    )
    with pytest.raises(FloatingPointError, match="loss became nan"):
        distill(teacher, student, images, config=config, progress=False)
    with pytest.raises(ValueError, match="divergence_ratio"):
        DistillConfig(divergence_ratio=0.5)
