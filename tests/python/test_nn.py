"""The torch side of the approximations, the ViT and its FHE-friendly student."""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from blindfed import ckks  # noqa: E402
from blindfed.approx import Approximation, StudentSpec  # noqa: E402
from blindfed.block import PackedBatch, owner_normalise  # noqa: E402
from blindfed.nn import (  # noqa: E402
    AffineNorm,
    PolyApprox,
    PolyLayerNorm,
    PolySoftmax,
    PowerApprox,
    Student,
    ViT,
    ViTConfig,
)

APPROXIMATIONS = [
    Approximation.exp_chebyshev(-8.0, 4.0, 15),
    Approximation.exp_taylor(-2.0, 2.0, 6),
    Approximation.exp_squaring(6, -8.0, 4.0),
    Approximation.goldschmidt(9, 1.0, 100.0),
    Approximation.inv_sqrt(0.05, 5.0),
    Approximation.gelu_quad(),
    Approximation.gelu_chebyshev(-6.0, 6.0, 15),
    Approximation.power(2, 1.5, -3.0, 3.0),
    Approximation.power(6, -0.25, -1.0, 1.0),
]


def grid(a: Approximation, n: int = 201, dtype=torch.float64) -> torch.Tensor:
    lo, hi = a.range
    return torch.linspace(lo, hi, n, dtype=dtype)


@pytest.mark.parametrize("a", APPROXIMATIONS, ids=lambda a: a.name)
def test_core_and_native_paths_agree_with_the_spec(a):
    x = grid(a)
    core = PolyApprox(a)(x)
    native = PolyApprox(a, native=True)(x)
    reference = torch.from_numpy(a(x.numpy()))
    scale = 1.0 + reference.abs()
    assert torch.all((core - reference).abs() <= 1e-12 * scale)
    assert torch.all((native - reference).abs() <= 1e-9 * scale)


@pytest.mark.parametrize("a", APPROXIMATIONS, ids=lambda a: a.name)
def test_gradients_are_exact_on_both_paths(a):
    lo, hi = a.range
    g = torch.Generator().manual_seed(0)
    x = (lo + (hi - lo) * torch.rand(12, dtype=torch.float64, generator=g)).requires_grad_()
    assert torch.autograd.gradcheck(PolyApprox(a), (x,), eps=1e-6, atol=1e-5, rtol=1e-4)
    assert torch.autograd.gradcheck(PolyApprox(a, native=True), (x,), eps=1e-6, atol=1e-5)
    core = torch.autograd.grad(PolyApprox(a)(x).sum(), x)[0]
    native = torch.autograd.grad(PolyApprox(a, native=True)(x).sum(), x)[0]
    assert torch.allclose(core, native, rtol=1e-8, atol=1e-8)


def test_float32_stays_float32_and_shape_is_kept():
    m = PolyApprox(Approximation.exp_chebyshev(-4.0, 2.0))
    x = torch.randn(3, 4, 5, generator=torch.Generator().manual_seed(1)).clamp(-3.5, 1.5)
    y = m(x)
    assert y.dtype == torch.float32 and y.shape == x.shape
    assert torch.allclose(y, x.exp(), rtol=1e-5)
    # Non-contiguous inputs are read correctly.
    xt = x.transpose(0, 2)
    assert torch.allclose(m(xt), xt.exp(), rtol=1e-5)


def test_range_is_a_buffer_that_refits_the_approximation():
    m = PolyApprox(Approximation.exp_chebyshev(-4.0, 2.0))
    assert "range" in m.state_dict()
    m.load_state_dict({"range": torch.tensor([-10.0, 5.0], dtype=torch.float64)})
    assert m.approximation.range == (-10.0, 5.0)
    x = torch.linspace(-10.0, 5.0, 50, dtype=torch.float64)
    assert torch.allclose(m(x), x.exp(), rtol=1e-6)
    m.start_observing()
    m(torch.tensor([-20.0, 0.0, 1.0], dtype=torch.float64))
    assert m.stop_observing() == (-20.0, 1.0)
    assert m.out_of_range == 1


def test_raise_top_gives_one_over_sqrt_headroom_at_the_same_precision():
    m = PolyApprox(Approximation.inv_sqrt(0.01, 1.0, guess_degree=31, newton_steps=2)).eval()
    x = torch.tensor([0.1, 2.5], dtype=torch.float64)  # 2.5: past the top, as an odd sample is
    assert not torch.isclose(m(x)[1], x[1].rsqrt(), rtol=1e-2)  # the guess exploded there
    m.raise_top(16.0, max_relative_error=1e-6)
    assert m.approximation.range == (0.01, 16.0) and m.approximation.max_error()[1] <= 1e-6
    assert m.approximation.steps()[0]["steps"] > 2  # paid for in Newton steps, not precision
    assert torch.allclose(m(x), x.rsqrt(), rtol=1e-5)
    with pytest.raises(ValueError, match="only a 1/sqrt"):
        PolyApprox(Approximation.gelu_quad()).raise_top(2.0)
    with pytest.raises(ValueError, match="needs more than 3 iterations"):
        m.raise_top(1e6, max_relative_error=1e-12, max_newton_steps=3)
    # The bottom too: a variance under the calibrated one (a flat image) stays finite.
    low = torch.tensor([0.002], dtype=torch.float64)
    assert not torch.isclose(m(low), low.rsqrt(), rtol=1e-3)
    m.raise_top(1.0, bottom=8.0, max_relative_error=1e-6)
    assert m.approximation.range == (0.01 / 8, 16.0)
    assert torch.allclose(m(low), low.rsqrt(), rtol=1e-5)


def test_raise_top_widens_a_goldschmidt_reciprocal_with_iterations():
    m = PolyApprox(Approximation.goldschmidt(12, 1.0, 100.0)).eval()
    x = torch.tensor([0.3, 350.0], dtype=torch.float64)  # both outside: Goldschmidt is off
    assert not torch.allclose(m(x), 1 / x, rtol=1e-2)
    before = m.approximation.max_error()[1]
    m.raise_top(4.0, bottom=4.0)
    assert m.approximation.range == (0.25, 400.0)
    assert m.approximation.max_error()[1] <= max(1e-5, before)
    assert m.approximation.steps()[0]["iterations"] > 12
    assert torch.allclose(m(x), 1 / x, rtol=1e-4)
    with pytest.raises(ValueError, match="at least 1"):
        m.raise_top(0.5)
    # Past the core's most Goldschmidt iterations: the same clear refusal.
    with pytest.raises(ValueError, match=r"needs more than .* iterations"):
        m.raise_top(1e9, max_relative_error=1e-9)


def test_text_is_the_serialisation():
    for a in APPROXIMATIONS:
        again = Approximation.from_text(a.text)
        assert again == a and again.steps() == a.steps()
    with pytest.raises(ValueError, match="unknown kind"):
        Approximation.from_text("exp:sine:3 range=0.0,1.0")
    with pytest.raises(ValueError, match="range"):
        Approximation.from_text("exp:chebyshev:15 range=4.0")
    with pytest.raises(ValueError, match=r"chebyshev:x"):
        Approximation.parse("numerator", "chebyshev:x")


@pytest.mark.parametrize("p", [2, 4])
def test_power_numerator_learns_its_shift_and_matches_the_core(p):
    m = PowerApprox(Approximation.power(p, 0.7, -3.0, 3.0)).double()
    x = torch.linspace(-2.5, 2.5, 41, dtype=torch.float64, requires_grad=True)
    y = m(x)
    y_core, dy_core = m.approximation.value_and_derivative(x.detach().numpy())
    assert torch.allclose(y, torch.from_numpy(y_core), rtol=1e-12)
    (gx, gs) = torch.autograd.grad(y.sum(), [x, m.shift])
    assert torch.allclose(gx, torch.from_numpy(dy_core), rtol=1e-12)
    # d/dc (x + c)^p = d/dx (x + c)^p.
    assert torch.isclose(gs, gx.sum())
    with torch.no_grad():
        m.shift.fill_(-0.2)
    assert m.approximation.shift == -0.2
    assert Approximation.from_text(m.approximation.text).shift == -0.2


def test_constant_denominator_affine_norm_and_owner_normalised_path():
    g = torch.Generator().manual_seed(4)
    scores = torch.randn(3, 2, 5, 5, dtype=torch.float64, generator=g)
    sm = PolySoftmax(Approximation.power(2, 2.0, -4.0, 4.0), heads=2).double()
    with torch.no_grad():
        sm.log_denominator.copy_(torch.tensor([1.0, 2.0]).log())
    e = (scores + 2.0) ** 2
    assert torch.allclose(sm(scores), e / torch.tensor([1.0, 2.0]).view(1, 2, 1, 1))
    assert sm.constants.tolist() == pytest.approx([1.0, 2.0])
    x = torch.randn(6, 8, dtype=torch.float64, generator=g) * 3 + 1
    norm = AffineNorm(8).double()
    norm.start_observing()
    norm(x)
    norm.stop_observing(calibrate=True)
    assert torch.allclose(norm(x).mean(0), torch.zeros(8, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(norm(x).var(0, unbiased=False), torch.ones(8, dtype=torch.float64))
    norm.owner_normalised = True
    exact = torch.nn.functional.layer_norm(x, (8,), eps=1e-6)
    assert torch.allclose(norm(x), exact, atol=1e-12)
    assert np.allclose(owner_normalise(x.numpy()), exact.numpy(), atol=1e-12)


def test_poly_softmax_and_layer_norm_match_the_exact_functions():
    g = torch.Generator().manual_seed(5)
    scores = torch.randn(4, 7, dtype=torch.float64, generator=g) * 2
    sm = PolySoftmax(
        Approximation.exp_chebyshev(-8.0, 8.0), Approximation.goldschmidt(12, 0.5, 80.0)
    )
    assert torch.allclose(sm(scores), scores.softmax(-1), atol=1e-6)
    x = torch.randn(5, 16, dtype=torch.float64, generator=g) * 1.5
    var = x.var(dim=-1, unbiased=False)
    assert float(var.min()) > 0.5 and float(var.max()) < 5.0
    ln = PolyLayerNorm(16, Approximation.inv_sqrt(0.5, 5.0))
    exact = torch.nn.functional.layer_norm(x, (16,), eps=1e-6)
    assert torch.allclose(ln(x), exact, atol=1e-3)


def test_wrong_arguments_are_clear_errors():
    with pytest.raises(TypeError, match="Approximation"):
        PolyApprox(3.0)
    with pytest.raises(ValueError, match="slot"):
        Student(ViTConfig(width=16, heads=2, mlp=32, depth=1), "softmax=gelu:quad")
    with pytest.raises(TypeError, match="StudentSpec"):
        Student(ViTConfig(width=16, heads=2, mlp=32, depth=1), {"exp": Approximation.gelu_quad()})
    with pytest.raises(ValueError, match="heads"):
        ViTConfig(width=30, heads=4)
    with pytest.raises(ValueError, match="images"):
        ViT(ViTConfig(width=16, heads=2, mlp=32, depth=1))(torch.zeros(2, 3, 28, 28))


TINY = ViTConfig(image_size=8, patch_size=4, width=16, depth=2, heads=2, mlp=32)


def tiny_images(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 8, 8, generator=g)


def test_student_with_exact_functions_is_the_teacher():
    torch.manual_seed(0)
    teacher = ViT(TINY).double().eval()
    with torch.no_grad():
        # An untrained class token is ~0: its LayerNorm variance would be ~1e-4, a range no
        # 1/sqrt guess covers accurately (trained tokens are not degenerate).
        teacher.cls_token.normal_()
    # Chebyshev GELU: with Quad (the default) the student needs distillation to be close.
    spec = StudentSpec("gelu=chebyshev:15", base="reference")
    student = Student.from_teacher(teacher, spec).double().eval()
    x = tiny_images(6).double()
    student.set_exact(True)
    assert torch.allclose(student(x), teacher(x), atol=1e-10)
    student.set_exact(False)
    report = student.calibrate([x])
    assert all(r["out_of_range"] == 0 for r in report.values())
    # Calibrated approximations stay close to the teacher.
    assert torch.allclose(student(x), teacher(x), atol=0.02)
    # The detector sees inputs the calibration did not cover.
    assert sum(student.out_of_range([x * 20]).values()) > 0


def test_paper_preset_builds_a_student_with_the_papers_functions():
    student = Student(TINY, "paper")
    names = {m.approximation.name for _, m in student.approximations()}
    assert "exp_taylor(degree=6)" in names and "gelu_quad" in names
    assert StudentSpec("paper").reciprocal.name.startswith("goldschmidt")


def test_save_and_load_keep_weights_and_ranges(tmp_path):
    torch.manual_seed(1)
    student = Student.from_teacher(ViT(TINY))
    student.calibrate([tiny_images(16)])
    student.save(tmp_path / "student.pt")
    again = Student.load(tmp_path / "student.pt")
    x = tiny_images(4, seed=3)
    assert torch.equal(student(x), again(x))
    assert [m.range.tolist() for _, m in student.approximations()] == [
        m.range.tolist() for _, m in again.approximations()
    ]
    # The CKKS scale it is planned at travels with it; the provider plans at it.
    from blindfed.protocol import Provider

    assert again.scale_bits is None
    default = Provider(again, mode="simulate").parameters.scale_bits
    student.scale_bits = default + 10
    student.save(tmp_path / "student.pt")
    again = Student.load(tmp_path / "student.pt")
    assert again.scale_bits == default + 10
    assert Provider(again, mode="simulate").parameters.scale_bits == default + 10
    assert {p["scale_bits"] for p in again.plans()} == {default + 10}
    description = again.describe()
    with pytest.raises(ValueError, match="scale_bits must be an integer"):
        Student.rebuild({**description, "scale_bits": "40"}, again.state_dict())


@pytest.mark.parametrize(
    "spec",
    [
        "reference",
        "default",
        "softmax=quad denominator=constant norm=affine",
        "softmax=power:4 owner-norm=on",
    ],
)
def test_torch_student_equals_rust_mirror_equals_encrypted_block(spec):
    """One block three ways: torch (float64), the Rust f64 reference and mirror, CKKS; and
    the owner-normalised path the same three ways."""
    torch.manual_seed(2)
    config = ViTConfig(image_size=8, patch_size=4, width=16, depth=1, heads=2, mlp=32)
    teacher = ViT(config)
    with torch.no_grad():
        # An untrained class token is ~0: its LayerNorm variance ~1e-4 would make 1/sqrt
        # amplify the CKKS noise 100-fold; a trained token is not degenerate.
        teacher.cls_token.normal_()
    student = Student.from_teacher(teacher, StudentSpec(spec, base="reference")).double().eval()
    images = tiny_images(8).double()
    student.calibrate([images], constants=True)
    tokens = student.embed(images[:3]).detach()
    block = student.export_blocks()[0]
    x = tokens.numpy()
    plan = block.plan()
    params = plan["parameters"]
    sk = ckks.SecretKey.generate(params)
    keys = sk.evaluation_keys(rotations=plan["rotation_steps"], conjugate=plan["conjugate"])
    for normalised in (False, True):
        student.blocks[0].norm1.owner_normalised = normalised
        with torch.no_grad():
            torch_out = student.blocks[0](tokens)[0].numpy()
        reference = block.forward(x, normalised=normalised)
        assert np.allclose(reference, torch_out, atol=1e-9)
        x_hat = owner_normalise(x, student.config.eps) if normalised else None
        mirrored = block.mirror(x, params=params, x_hat=x_hat)
        assert np.allclose(mirrored, reference, atol=1e-8)
        hat = PackedBatch.encrypt(sk, x_hat) if normalised else None
        out, _ = block.evaluate(PackedBatch.encrypt(sk, x), keys, sk, x_hat=hat)
        decrypted = out.decrypt(sk)
        spread = float(reference.max() - reference.min())
        error = float(np.abs(decrypted - reference).max())
        print(f"{spec}, owner-normalised {normalised}: encrypted vs reference {error:.3g}")
        assert error < 1e-3 * spread


def test_calibration_refuses_to_chase_a_diverging_approximation():
    from blindfed.nn.calibration import check_not_diverging

    modules = {"a": PolyApprox(Approximation.inv_sqrt(0.05, 5.0, 3, 1))}
    check_not_diverging("a", (0.5, 90.0), (0.1, 2.0), modules)  # a different model: widen
    with pytest.raises(ValueError, match=r"calibration diverges.*inv_sqrt"):
        check_not_diverging("a", (0.1, 3e20), (0.1, 2.0), modules)


def test_calibration_refuses_a_range_float32_training_cannot_hold():
    """A DINOv2 student with the paper's exp numerator crashed its second distillation epoch
    on a row-sum range widened past float32's top; such a range is now a clear error."""
    from blindfed.nn.calibration import check_representable

    check_representable("a", (1e-9, 3e38))
    for bad in ((1.0, 3.5e38), (-math.inf, 1.0), (0.0, math.nan)):
        with pytest.raises(ValueError, match=r"calibration: blocks.3.attn.softmax.reciprocal"):
            check_representable("blocks.3.attn.softmax.reciprocal", bad)


def test_a_power_softmax_reciprocal_is_not_widened_past_its_reference(monkeypatch):
    """The 1/x of a power's row sums has no exact-model range; its reference is the power's
    own sums of the exact model's scores (which nothing upstream can blow up), so a blow-up in
    a later pass (as DINOv2 students' calibrations met) is cut to a hundred widths of it, not
    chased to 1e38."""
    torch.manual_seed(0)
    config = ViTConfig(image_size=8, patch_size=4, width=8, depth=1, heads=2, mlp=16)
    student = Student.from_teacher(ViT(config), StudentSpec("softmax=power:2"))
    name = "blocks.0.attn.softmax.reciprocal"
    observe, calls = Student._observe, []

    def blown_up(self, batches):
        report = observe(self, batches)
        calls.append(report[name]["observed"])
        if len(calls) == 2:  # the first widening pass
            lo = report[name]["observed"][0]
            report[name].update(observed=(lo, 1e38), out_of_range=1)
        return report

    monkeypatch.setattr(Student, "_observe", blown_up)
    student.calibrate([tiny_images(16)], strict=False)
    reference = calls[0]  # the exact pass
    assert reference is not None
    top = float(student.blocks[0].attn.softmax.reciprocal.range[1])
    assert reference[1] < top <= reference[1] + 1.2 * 101 * (reference[1] - reference[0])


def test_training_clamps_to_the_range_and_eval_does_not():
    m = PolyApprox(Approximation.goldschmidt(9, 1.0, 10.0))
    x = torch.tensor([5.0, 40.0], dtype=torch.float64)
    trained = m.train()(x)
    assert torch.allclose(trained, torch.tensor([0.2, 0.1], dtype=torch.float64))
    # Eval mode computes what the encrypted evaluator would: Goldschmidt diverges at 4x hi.
    evaluated = m.eval()(x)
    assert evaluated[0] == trained[0]
    assert not (abs(float(evaluated[1])) < 1e6)
