"""Loading teachers: tiny timm and Hugging Face ViTs built here, saved, loaded and compared."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("safetensors")

from safetensors.torch import save_file  # noqa: E402

from blindfed import teacher  # noqa: E402
from blindfed.nn.vit import ViT, ViTConfig  # noqa: E402

TIMM_ARGS: dict[str, Any] = dict(
    img_size=28, patch_size=7, in_chans=1, num_classes=10, embed_dim=32, depth=2, num_heads=2,
    mlp_ratio=2,
)  # fmt: skip
TIMM_NAME = "vit_tiny_patch16_224"  # its defaults are overridden by TIMM_ARGS


def images(n: int = 3, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 1, 28, 28, generator=torch.Generator().manual_seed(seed))


def assert_same_logits(ours: ViT, reference: torch.Tensor, x: torch.Tensor) -> None:
    with torch.no_grad():
        torch.testing.assert_close(ours(x), reference, rtol=1e-5, atol=1e-6)


def timm_model(**overrides: Any) -> torch.nn.Module:
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    model = VisionTransformer(**{**TIMM_ARGS, **overrides}).eval()
    with torch.no_grad():  # timm initialises these near zero: make them matter
        model.cls_token.normal_()
        for b in model.blocks:
            b.attn.qkv.bias.normal_(std=0.1)
            b.norm1.weight.normal_(1.0, 0.1)
    return model


def hf_model(**overrides: Any) -> torch.nn.Module:
    from transformers import ViTConfig as HFConfig
    from transformers import ViTForImageClassification

    args: dict[str, Any] = dict(
        image_size=28, patch_size=7, num_channels=1, hidden_size=32, num_hidden_layers=2,
        num_attention_heads=2, intermediate_size=64, num_labels=10,
    )  # fmt: skip
    torch.manual_seed(0)
    return ViTForImageClassification(HFConfig(**{**args, **overrides})).eval()


# ---- timm --------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_load_timm_checkpoint_gives_the_same_logits(tmp_path: Path, suffix: str) -> None:
    pytest.importorskip("timm")
    model = timm_model()
    state = model.state_dict()
    path = tmp_path / f"vit{suffix}"
    if suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save({"state_dict": state, "epoch": 3}, path)  # nested, as trainers write them
    x = images()
    with torch.no_grad():
        reference = model(x)

    loaded = teacher.load_timm(TIMM_NAME, path, **TIMM_ARGS)
    assert loaded.config == ViTConfig(
        image_size=28, patch_size=7, in_chans=1, num_classes=10, width=32, depth=2, heads=2,
        mlp=64, eps=1e-6,
    )  # fmt: skip
    assert not loaded.training
    assert_same_logits(loaded, reference, x)

    via_dispatch = teacher.load_teacher(path, model_name=TIMM_NAME, **TIMM_ARGS)
    assert_same_logits(via_dispatch, reference, x)
    # An instantiated model with other weights takes the checkpoint's.
    from timm.models.vision_transformer import VisionTransformer

    fresh = VisionTransformer(**TIMM_ARGS)
    assert_same_logits(teacher.load_timm(fresh, path), reference, x)


def test_from_timm_and_timm_folder(tmp_path: Path) -> None:
    pytest.importorskip("timm")
    model = timm_model()
    x = images()
    with torch.no_grad():
        reference = model(x)
    model.train()
    vit = teacher.from_timm(model)
    assert model.training  # its mode is restored
    assert_same_logits(vit, reference, x)
    # Not sharing storage with the source.
    with torch.no_grad():
        vit.head.bias.add_(1.0)
        assert not torch.equal(vit.head.bias, model.head.bias)

    # A folder as timm's save_for_hf writes it: config.json (architecture) + model.safetensors.
    folder = tmp_path / "timm_folder"
    folder.mkdir()
    args = {k: v for k, v in TIMM_ARGS.items() if k != "num_classes"}
    config = {"architecture": TIMM_NAME, "num_classes": 10, "model_args": args}
    (folder / "config.json").write_text(json.dumps(config))
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(folder / "model.safetensors"))
    assert_same_logits(teacher.load_teacher(folder), reference, x)


@pytest.mark.parametrize(
    ("overrides", "feature"),
    [
        (dict(global_pool="avg"), "global_pool='avg'"),
        (dict(qkv_bias=False), "qkv without bias"),
        (dict(reg_tokens=2), "register tokens"),
        (dict(no_embed_class=True), "no_embed_class"),
        (dict(class_token=False, global_pool="avg"), "class token"),
        (dict(qk_norm=True), "q/k norm"),
        (dict(pre_norm=True), "norm_pre"),
        (dict(act_layer="gelu_tanh"), "non-GELU activation"),
        (dict(act_layer="relu"), "non-GELU activation"),
        (dict(norm_layer="rmsnorm"), "non-LayerNorm norm"),
        (dict(img_size=(28, 14)), "non-square images"),
    ],
)
def test_from_timm_refuses_what_our_vit_does_not_compute(
    overrides: dict[str, Any], feature: str
) -> None:
    pytest.importorskip("timm")
    from timm.models.vision_transformer import VisionTransformer

    model = VisionTransformer(**{**TIMM_ARGS, **overrides})
    with pytest.raises(ValueError, match="our ViT does not compute") as e:
        teacher.from_timm(model)
    assert feature in str(e.value)


@pytest.mark.parametrize(
    "overrides",
    [dict(init_values=1e-5), dict(num_classes=0), dict(dynamic_img_size=True)],
    ids=["layer scale", "no classifier", "dynamic image size"],
)
def test_from_timm_converts_dinov2_style_features(overrides: dict[str, Any]) -> None:
    """Layer scale folds, a backbone without classifier is compared by its final tokens, and a
    dynamic image size is fixed at conversion (the DINOv2 file itself:
    tests/python/test_teacher_timm_dinov2.py)."""
    pytest.importorskip("timm")
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    model = VisionTransformer(**{**TIMM_ARGS, **overrides}).eval()
    for name, p in model.named_parameters():
        if name.endswith("gamma"):  # a layer scale far from 1, so that a missed fold shows
            torch.nn.init.uniform_(p, 0.5, 2.0)
    size = 42 if overrides.get("dynamic_img_size") else None
    vit = teacher.from_timm(model, image_size=size)  # verified against timm inside
    assert vit.config.image_size == (size or TIMM_ARGS["img_size"])


def test_timm_verification_catches_a_different_computation() -> None:
    pytest.importorskip("timm")
    model = timm_model()
    plain = model.forward_head
    model.forward_head = lambda x, pre_logits=False: 2 * plain(x, pre_logits)
    with pytest.raises(ValueError, match="does not reproduce"):
        teacher.from_timm(model)


def test_load_timm_lists_missing_and_unexpected_keys(tmp_path: Path) -> None:
    pytest.importorskip("timm")
    state = dict(timm_model().state_dict())
    del state["blocks.1.mlp.fc2.bias"]
    state["blocks.1.ls1.gamma"] = torch.ones(32)
    path = tmp_path / "broken.pth"
    torch.save(state, path)
    with pytest.raises(ValueError, match=r"missing keys: blocks\.1\.mlp\.fc2\.bias") as e:
        teacher.load_timm(TIMM_NAME, path, **TIMM_ARGS)
    assert "unexpected keys: blocks.1.ls1.gamma" in str(e.value)

    state = dict(timm_model().state_dict())
    state["head.weight"] = torch.zeros(5, 32)
    torch.save({"model": state}, path)
    with pytest.raises(ValueError, match=r"shape mismatches: head\.weight \(5, 32\)"):
        teacher.load_timm(TIMM_NAME, path, **TIMM_ARGS)


def test_load_timm_errors(tmp_path: Path) -> None:
    pytest.importorskip("timm")
    with pytest.raises(FileNotFoundError, match=r"nowhere\.pth"):
        teacher.load_timm(TIMM_NAME, tmp_path / "nowhere.pth", **TIMM_ARGS)
    with pytest.raises(ValueError, match="needs checkpoint"):
        teacher.load_timm(TIMM_NAME, **TIMM_ARGS)
    (tmp_path / "weights.npz").write_bytes(b"\0")
    with pytest.raises(ValueError, match=r"unknown checkpoint format \.npz"):
        teacher.load_timm(TIMM_NAME, tmp_path / "weights.npz", **TIMM_ARGS)
    (tmp_path / "junk.pth").write_bytes(b"not a pickle")
    with pytest.raises(ValueError, match="weights_only"):
        teacher.load_timm(TIMM_NAME, tmp_path / "junk.pth", **TIMM_ARGS)
    with pytest.raises(TypeError, match="timm VisionTransformer"):
        teacher.from_timm(torch.nn.Linear(2, 2))


# ---- Hugging Face ------------------------------------------------------------------------------


def test_load_huggingface_gives_the_same_logits_and_a_student(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    from blindfed.nn.student import Student

    model = hf_model()
    folder = tmp_path / "hf_vit"
    model.save_pretrained(folder)
    x = images()
    with torch.no_grad():
        reference = model(pixel_values=x).logits

    loaded = teacher.load_huggingface(folder)
    assert loaded.config == ViTConfig(
        image_size=28, patch_size=7, in_chans=1, num_classes=10, width=32, depth=2, heads=2,
        mlp=64, eps=model.config.layer_norm_eps,
    )  # fmt: skip
    assert_same_logits(loaded, reference, x)
    assert_same_logits(teacher.load_teacher(folder), reference, x)
    assert_same_logits(teacher.from_huggingface(model), reference, x)

    # The student takes the loaded teacher's weights: exact, it gives the teacher's logits.
    student = Student.from_teacher(loaded).eval()
    with torch.no_grad():
        out = student(x)
        student.set_exact(True)
        exact = student(x)
    assert out.shape == (3, 10)
    assert bool(torch.isfinite(out).all())
    torch.testing.assert_close(exact, reference, rtol=1e-5, atol=1e-5)


# transformers 5 renamed ViT's modules; checkpoints on disk (e.g. google/vit-base-patch16-224)
# keep transformers 4's names, which transformers 5 maps when loading.
V4_NAMES = (
    ("vit.layers.", "vit.encoder.layer."),
    (".attention.q_proj.", ".attention.attention.query."),
    (".attention.k_proj.", ".attention.attention.key."),
    (".attention.v_proj.", ".attention.attention.value."),
    (".attention.o_proj.", ".attention.output.dense."),
    (".mlp.fc1.", ".intermediate.dense."),
    (".mlp.fc2.", ".output.dense."),
)


def test_load_huggingface_reads_transformers_4_names(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    from safetensors.torch import load_file

    model = hf_model()
    folder = tmp_path / "hf_v4"
    model.save_pretrained(folder)
    weights = folder / "model.safetensors"
    state = load_file(str(weights))
    renamed = {}
    for key, value in state.items():
        for new, old in V4_NAMES:
            key = key.replace(new, old)
        renamed[key] = value
    assert "vit.encoder.layer.1.attention.attention.value.bias" in renamed
    save_file(renamed, str(weights), metadata={"format": "pt"})
    x = images()
    with torch.no_grad():
        reference = model(pixel_values=x).logits
    assert_same_logits(teacher.load_teacher(folder), reference, x)


@pytest.mark.parametrize(
    ("overrides", "feature"),
    [
        (dict(hidden_act="relu"), "hidden_act='relu'"),
        (dict(hidden_act="gelu_new"), "hidden_act='gelu_new'"),
        (dict(qkv_bias=False), "qkv without bias"),
        (dict(num_labels=0), "head of 0 classes"),
        (dict(image_size=(28, 14)), "non-square images"),
    ],
)
def test_from_huggingface_refuses_what_our_vit_does_not_compute(
    overrides: dict[str, Any], feature: str
) -> None:
    pytest.importorskip("transformers")
    with pytest.raises(ValueError, match="our ViT does not compute") as e:
        teacher.from_huggingface(hf_model(**overrides))
    assert feature in str(e.value)


def test_huggingface_errors(tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    base = hf_model()
    with pytest.raises(TypeError, match="ViTForImageClassification"):
        teacher.from_huggingface(base.vit)
    # A bare ViTModel checkpoint has no classifier: transformers would make one up.
    folder = tmp_path / "bare"
    base.vit.save_pretrained(folder)
    assert isinstance(base.vit, transformers.ViTModel)
    with pytest.raises(ValueError, match="classifier"):
        teacher.load_huggingface(folder)
    with pytest.raises(FileNotFoundError):
        teacher.load_huggingface(tmp_path / "absent")
    # Another model type in a Hugging Face folder.
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "deit"}))
    with pytest.raises(ValueError, match="'deit'"):
        teacher.load_teacher(other)


# ---- our format and the dispatcher --------------------------------------------------------------


def small_vit() -> ViT:
    torch.manual_seed(0)
    return ViT(ViTConfig(width=32, depth=2, heads=2, mlp=64, num_classes=7, eps=1e-5))


def test_save_load_round_trip(tmp_path: Path) -> None:
    model = small_vit().eval()
    path = tmp_path / "teacher.safetensors"
    teacher.save(model, path)
    for loaded in (teacher.load(path), teacher.load_teacher(path), teacher.load_teacher(model)):
        assert loaded.config == model.config
        for k, v in model.state_dict().items():
            assert torch.equal(loaded.state_dict()[k], v), k
    x = images()
    with torch.no_grad():
        assert torch.equal(teacher.load(path)(x), model(x))
    with pytest.raises(TypeError, match="no keyword arguments"):
        teacher.load_teacher(path, model_name="vit_tiny_patch16_224")


def test_save_refuses_a_student(tmp_path: Path) -> None:
    from blindfed.nn.student import Student

    with pytest.raises(TypeError, match="plain blindfed ViT"):
        teacher.save(Student.from_teacher(small_vit()), tmp_path / "s.safetensors")


def write_with_metadata(path: Path, metadata: dict[str, str], state: dict | None = None) -> None:
    state = small_vit().state_dict() if state is None else state
    save_file({k: v.contiguous() for k, v in state.items()}, str(path), metadata=metadata)


def test_load_refuses_files_that_are_not_ours(tmp_path: Path) -> None:
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"\x07\x00\x00\x00\x00\x00\x00\x00garbage")
    with pytest.raises(ValueError, match="not a safetensors file"):
        teacher.load(corrupt)
    with pytest.raises(ValueError, match="not a valid safetensors file"):
        teacher.load_teacher(corrupt)

    foreign = tmp_path / "foreign.safetensors"
    write_with_metadata(foreign, {"format": "pt"})
    with pytest.raises(ValueError, match="not a blindfed teacher file"):
        teacher.load(foreign)
    with pytest.raises(ValueError, match="model_name="):
        teacher.load_teacher(foreign)

    config = small_vit().config.to_dict()
    for bad in (
        "{not json",
        json.dumps([1, 2]),
        json.dumps({**config, "width": "32"}),
        json.dumps({k: v for k, v in config.items() if k != "heads"}),
        json.dumps({**config, "heads": 3}),  # 32 does not split into 3 heads
    ):
        path = tmp_path / "malformed.safetensors"
        write_with_metadata(path, {teacher.CONFIG_KEY: bad})
        with pytest.raises(ValueError, match="malformed"):
            teacher.load(path)

    wrong_shapes = tmp_path / "wrong.safetensors"
    write_with_metadata(wrong_shapes, {teacher.CONFIG_KEY: json.dumps({**config, "mlp": 32})})
    with pytest.raises(ValueError, match=r"shape mismatches: blocks\.0\.mlp\.fc1\.weight"):
        teacher.load(wrong_shapes)


def test_missing_paths_and_unknown_sources(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        teacher.load(tmp_path / "absent.safetensors")
    with pytest.raises(FileNotFoundError):
        teacher.load_teacher(tmp_path / "absent")
    with pytest.raises(FileNotFoundError):
        teacher.load_teacher(tmp_path / "absent.pth", model_name=TIMM_NAME)
    with pytest.raises(ValueError, match=r"no config\.json"):
        teacher.load_teacher(tmp_path)
    (tmp_path / "weights.pth").write_bytes(b"")
    with pytest.raises(ValueError, match="model_name="):
        teacher.load_teacher(tmp_path / "weights.pth")
    with pytest.raises(TypeError, match="cannot load a teacher"):
        teacher.load_teacher(torch.nn.Linear(2, 2))
