"""The plaintext, centralised baselines (blindfed.experiments.baselines) on the zoo models and
digits."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from blindfed import zoo  # noqa: E402
from blindfed.data import digits_for_mnist_model  # noqa: E402
from blindfed.distill import accuracy  # noqa: E402
from blindfed.experiments import baselines  # noqa: E402
from blindfed.experiments.baselines import (  # noqa: E402
    METHODS,
    PAPER_CIFAR10,
    SETTING,
    BaselineConfig,
    run_baselines,
)
from blindfed.nn.lora import LoRALinear, add_lora  # noqa: E402

# LoRA of rank 8 on qkv (64 -> 192) and proj (64 -> 64) of each of the 4 blocks, and the head.
LORA_FACTORS = 4 * (8 * 64 + 192 * 8 + 8 * 64 + 64 * 8)
HEAD = 64 * 10 + 10
#: The probes' head reads the class token and the mean of the patch tokens by default.
PROBE_HEAD = 2 * 64 * 10 + 10


@pytest.fixture(scope="module")
def teacher():
    return zoo.load("mnist_vit")


@pytest.fixture(scope="module")
def student():
    return zoo.load_student()


@pytest.fixture(scope="module")
def digits():
    train, test = digits_for_mnist_model("train"), digits_for_mnist_model("test")
    return train.images, train.labels, test.images, test.labels


def snapshot(model):
    return (
        {k: v.detach().clone() for k, v in model.state_dict().items()},
        [p.requires_grad for p in model.parameters()],
        [m.training for m in model.modules()],
    )


def same(a, b) -> bool:
    state_a, grads_a, modes_a = a
    state_b, grads_b, modes_b = b
    return (
        state_a.keys() == state_b.keys()
        and all(torch.equal(state_a[k], state_b[k]) for k in state_a)
        and grads_a == grads_b
        and modes_a == modes_b
    )


@pytest.fixture(scope="module")
def run(teacher, student, digits):
    """Every method once on 600 training digits (2 epochs end to end), recording the modules
    that trained; checks that the caller's models come out untouched."""
    x, y, xt, yt = digits
    before = snapshot(teacher), snapshot(student)
    trained: dict[str, torch.nn.Module] = {}
    lines: list[str] = []
    original = baselines._fit

    def recording(module, forward, *args, **kwargs):
        count = original(module, forward, *args, **kwargs)
        trained[f"call{len(trained)}"] = module
        return count

    baselines._fit = recording
    try:
        results = run_baselines(
            x[:600],
            y[:600],
            xt[:200],
            yt[:200],
            teacher=teacher,
            student=student,
            config=BaselineConfig(epochs=2, probe_epochs=30),
            progress=lines.append,
        )
    finally:
        baselines._fit = original
    after = snapshot(teacher), snapshot(student)
    # _fit runs for linear_probe, student_head, lora, full_finetune, in that order.
    order = ("linear_probe", "student_head", "lora", "full_finetune")
    modules = dict(zip(order, trained.values(), strict=True))
    return results, modules, lines, before, after


def test_lora_linear_starts_at_the_base_and_computes_the_low_rank_update():
    torch.manual_seed(0)
    base = torch.nn.Linear(6, 5)
    lora = LoRALinear(base, rank=2, alpha=4.0)
    x = torch.randn(7, 6)
    assert torch.equal(lora(x), base(x))  # B = 0: exactly the base layer
    assert lora.scale == 2.0 and lora.lora_a.shape == (2, 6) and lora.lora_b.shape == (5, 2)
    assert not any(p.requires_grad for p in base.parameters())
    with torch.no_grad():
        lora.lora_b.normal_()
    want = base(x) + 2.0 * x @ lora.lora_a.T @ lora.lora_b.T
    assert torch.allclose(lora(x), want, atol=1e-6)
    lora(x).sum().backward()
    assert base.weight.grad is None and base.bias.grad is None
    assert lora.lora_a.grad is not None and lora.lora_b.grad is not None
    assert LoRALinear(torch.nn.Linear(3, 3), rank=4).scale == 1.0  # alpha defaults to rank
    with pytest.raises(ValueError, match="rank must be >= 1"):
        LoRALinear(torch.nn.Linear(3, 3), rank=0)


def test_add_lora_keeps_the_teachers_output_and_freezes_all_but_the_factors(teacher, digits):
    model = baselines._copy(teacher)
    add_lora(model, 8, generator=torch.Generator().manual_seed(0))
    x = torch.as_tensor(digits[0][:16], dtype=torch.float32)
    with torch.no_grad():
        assert torch.equal(model(x), teacher(x))
    trainable = {n: p.numel() for n, p in model.named_parameters() if p.requires_grad}
    assert sum(trainable.values()) == LORA_FACTORS
    assert all(n.endswith(("lora_a", "lora_b")) for n in trainable)
    assert len(trainable) == 4 * 2 * 2


def test_every_method_reports_what_it_promises(run, teacher):
    results, _, lines, _, _ = run
    assert tuple(results) == METHODS
    full = sum(p.numel() for p in teacher.parameters())
    expected = {
        "teacher_zero_shot": 0,
        "student_zero_shot": 0,
        "linear_probe": PROBE_HEAD,
        "student_head": PROBE_HEAD,
        "lora": LORA_FACTORS + HEAD,
        "full_finetune": full,
    }
    for method, r in results.items():
        assert set(r) == {"accuracy", "trainable_parameters", "seconds", "label", "setting"}
        assert r["trainable_parameters"] == expected[method], method
        assert r["setting"] == SETTING == "plaintext, centralised, not double-blind"
        assert 0.0 <= r["accuracy"] <= 100.0 and r["seconds"] >= 0.0
    assert results["lora"]["label"] == "LoRA (rank 8) on the teacher"
    assert len(lines) == len(METHODS) and lines[2].startswith("linear_probe: ")


def test_zero_shot_is_the_models_own_head(run, teacher, student, digits):
    results, *_ = run
    xt = torch.as_tensor(digits[2][:200], dtype=torch.float32)
    yt = torch.as_tensor(digits[3][:200])
    assert results["teacher_zero_shot"]["accuracy"] == pytest.approx(accuracy(teacher, xt, yt))
    assert results["student_zero_shot"]["accuracy"] == pytest.approx(accuracy(student, xt, yt))


def test_trained_baselines_learn_the_digits(run):
    results, *_ = run
    # Chance is 10 %; the zoo teacher's own MNIST head reads about 60 % of the digits.
    assert results["linear_probe"]["accuracy"] > 80.0
    assert results["student_head"]["accuracy"] > 80.0
    # Two epochs end to end (85-95 % over seeds 0-2); both must beat the zero-shot floor.
    assert results["lora"]["accuracy"] > 70.0
    assert results["full_finetune"]["accuracy"] > 70.0


def test_training_changes_copies_never_the_callers_models(run, teacher):
    _, modules, _, before, after = run
    assert same(before[0], after[0]) and same(before[1], after[1])
    original = teacher.state_dict()
    full = modules["full_finetune"]
    assert full is not teacher
    changed = [k for k, v in full.state_dict().items() if not torch.equal(v, original[k])]
    assert "blocks.0.attn.qkv.weight" in changed and "patch_embed.proj.weight" in changed
    lora = modules["lora"].state_dict()
    # LoRA leaves every base weight as it was and trains its factors (B moved off zero).
    assert torch.equal(lora["blocks.2.attn.qkv.base.weight"], original["blocks.2.attn.qkv.weight"])
    assert torch.equal(lora["blocks.0.mlp.fc1.weight"], original["blocks.0.mlp.fc1.weight"])
    assert lora["blocks.3.attn.proj.lora_b"].abs().sum() > 0
    assert isinstance(modules["linear_probe"], torch.nn.Linear)


def test_same_seed_same_result_and_the_global_rng_is_left_alone(teacher, digits):
    x, y, xt, yt = (a[:200] for a in digits)
    state, threads = torch.get_rng_state(), torch.get_num_threads()
    methods = ("linear_probe", "lora")

    def once(seed):
        config = BaselineConfig(epochs=1, probe_epochs=5, seed=seed)
        return run_baselines(x, y, xt, yt, teacher=teacher, methods=methods, config=config)

    a, b, c = once(0), once(0), once(1)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.get_num_threads() == threads  # one thread while running, then restored
    for m in methods:
        assert a[m]["accuracy"] == b[m]["accuracy"]
    assert any(a[m]["accuracy"] != c[m]["accuracy"] for m in methods)


def test_numpy_and_torch_inputs_agree(teacher, digits):
    x, y, xt, yt = (a[:100] for a in digits)
    kw = {"teacher": teacher, "methods": ("teacher_zero_shot",)}
    from_numpy = run_baselines(x, y, xt, yt, **kw)
    from_torch = run_baselines(*(torch.as_tensor(a) for a in (x, y, xt, yt)), **kw)
    assert (
        from_numpy["teacher_zero_shot"]["accuracy"] == from_torch["teacher_zero_shot"]["accuracy"]
    )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"train_images": np.zeros((4, 28, 28))}, r"train_images must be shaped \(n, 1, 28, 28\)"),
        ({"test_images": np.zeros((4, 3, 28, 28))}, r"test_images must be shaped \(n, 1, 28, 28\)"),
        ({"train_labels": np.arange(3)}, r"train_labels must be shaped \(4,\)"),
        ({"train_labels": np.array([0, 1, 2, 10])}, r"train_labels must lie in \[0, 10\)"),
        ({"test_labels": np.array([0, -1, 2, 3])}, r"test_labels must lie in \[0, 10\)"),
        ({"train_labels": np.array([0.0, 1.0, 2.0, 3.0])}, "train_labels must be integers"),
        ({"train_images": np.full((4, 1, 28, 28), np.nan)}, "train_images contain NaN"),
        ({"methods": ("lora", "qlora")}, r"unknown methods \['qlora'\]"),
        ({"methods": ("lora", "lora")}, "methods repeated"),
        ({"methods": ()}, "no methods given"),
        (
            {"train_images": np.zeros((0, 1, 28, 28)), "train_labels": np.zeros(0, int)},
            "train_images is empty",
        ),
    ],
)
def test_bad_inputs_are_refused_with_a_clear_message(teacher, change, message):
    args = {
        "train_images": np.zeros((4, 1, 28, 28)),
        "train_labels": np.arange(4),
        "test_images": np.zeros((4, 1, 28, 28)),
        "test_labels": np.arange(4),
        "methods": ("linear_probe",),
    }
    args.update(change)
    methods = args.pop("methods")
    with pytest.raises(ValueError, match=message):
        run_baselines(**args, teacher=teacher, methods=methods)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("epochs", 0, "epochs must be >= 1, got 0"),
        ("epochs", -3, "epochs must be >= 1, got -3"),
        ("probe_epochs", 0, "probe_epochs must be >= 1"),
        ("batch_size", 0, "batch_size must be >= 1"),
        ("lora_rank", 0, "lora_rank must be >= 1"),
        ("lr", 0.0, "lr must be a positive number"),
        ("head_lr", float("nan"), "head_lr must be a positive number"),
        ("weight_decay", -1.0, "weight_decay must be >= 0"),
        ("lora_lr", -1e-3, "lora_lr must be a positive number"),
        ("threads", 0, "threads must be >= 1 or None"),
    ],
)
def test_bad_configs_are_refused(field, value, message):
    with pytest.raises(ValueError, match=message):
        BaselineConfig(**{field: value})


def test_paper_figures_are_the_papers():
    assert PAPER_CIFAR10 == {
        "blindfed": 94.28,
        "lora": 95.92,
        "full_finetune": 96.35,
        "linear_probe": 92.26,
    }


def test_a_student_copy_is_independent(student, digits):
    copy = baselines._copy(student)
    x = torch.as_tensor(digits[0][:8], dtype=torch.float32)
    with torch.no_grad():
        assert torch.equal(copy(x), student(x))
        copy.head.weight.add_(1.0)
    assert not torch.equal(copy.head.weight, student.head.weight)
