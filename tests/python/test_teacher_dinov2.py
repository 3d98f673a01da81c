"""DINOv2 teachers: tiny random Hugging Face Dinov2 models built here, converted, compared."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("safetensors")
pytest.importorskip("transformers")

from safetensors.torch import load_file, save_file  # noqa: E402

from blindfed import teacher  # noqa: E402
from blindfed.nn.vit import ViT, ViTConfig  # noqa: E402

ARGS: dict[str, Any] = dict(
    image_size=16, patch_size=4, num_channels=3, hidden_size=32, num_hidden_layers=2,
    num_attention_heads=2, mlp_ratio=2, layerscale_value=0.5,
)  # fmt: skip


def randomised(model: torch.nn.Module) -> torch.nn.Module:
    """Makes what the conversion must get right matter: layer scales, positions, biases."""
    torch.manual_seed(1)
    backbone = getattr(model, "dinov2", model)
    with torch.no_grad():
        backbone.embeddings.position_embeddings.normal_()
        backbone.embeddings.cls_token.normal_()
        for layer in backbone.encoder.layer:
            layer.layer_scale1.lambda1.uniform_(-1.5, 1.5)
            layer.layer_scale2.lambda1.uniform_(-1.5, 1.5)
            o_proj = getattr(layer.attention, "o_proj", None)  # transformers 5, else 4
            (o_proj or layer.attention.output.dense).bias.normal_(std=0.5)
            layer.mlp.fc2.bias.normal_(std=0.5)
    return model.eval()


def dinov2(cls: str = "Dinov2Model", **overrides: Any) -> torch.nn.Module:
    import transformers

    torch.manual_seed(0)
    model = getattr(transformers, cls)(transformers.Dinov2Config(**{**ARGS, **overrides}))
    return randomised(model)


def images(size: int, n: int = 3, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def tokens(vit: ViT, x: torch.Tensor) -> torch.Tensor:
    """Our ViT's final-normed tokens, which DINOv2's last_hidden_state holds."""
    with torch.no_grad():
        return vit.norm(vit.features(x).hidden[-1])


def assert_same_tokens(vit: ViT, backbone: torch.nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        expected = backbone(pixel_values=x).last_hidden_state
    got = tokens(vit, x)
    assert got.shape == expected.shape
    error = float((got - expected).abs().max() / expected.abs().max())
    assert error < 1e-5, error
    return error


@pytest.mark.parametrize("size", [None, 16, 24, 8])
def test_from_dinov2_gives_transformers_tokens(size: int | None) -> None:
    model = dinov2()
    vit = teacher.from_dinov2(model, size)
    side = size or 16
    assert vit.config == ViTConfig(
        image_size=side, patch_size=4, in_chans=3, num_classes=1, width=32, depth=2, heads=2,
        mlp=64, eps=model.config.layer_norm_eps,
    )  # fmt: skip
    assert not vit.training
    # transformers resizes its 4x4 position grid to the input's at every call; ours holds it.
    assert_same_tokens(vit, model, images(side))
    assert vit(images(side)).abs().max() == 0  # the head is zero: only the backbone converts


def test_layer_scale_and_positions_are_really_exercised() -> None:
    model = dinov2()
    plain = dinov2()
    with torch.no_grad():
        for layer in plain.encoder.layer:
            layer.layer_scale1.lambda1.fill_(1.0)
            layer.layer_scale2.lambda1.fill_(1.0)
    x = images(24)
    with torch.no_grad():
        differs = model(pixel_values=x).last_hidden_state - plain(pixel_values=x).last_hidden_state
    assert float(differs.abs().max()) > 0.1
    # Nearest-neighbour positions instead of transformers' bicubic ones give other tokens.
    vit = teacher.from_dinov2(model, 24)
    table = model.embeddings.position_embeddings.detach()
    grid = table[:, 1:].reshape(1, 4, 4, 32).permute(0, 3, 1, 2)
    near = torch.nn.functional.interpolate(grid, size=(6, 6), mode="nearest")
    with torch.no_grad():
        vit.pos_embed[:, 1:] = near.permute(0, 2, 3, 1).reshape(1, 36, 32)
    with torch.no_grad():
        expected = model(pixel_values=x).last_hidden_state
    assert float((tokens(vit, x) - expected).abs().max()) > 1e-3


def test_from_dinov2_for_image_classification_converts_its_backbone() -> None:
    model = dinov2("Dinov2ForImageClassification", num_labels=5).train()
    vit = teacher.from_dinov2(model, 24)
    assert model.training  # its mode is restored
    model.eval()
    assert vit.config.num_classes == 5
    assert_same_tokens(vit, model.dinov2, images(24))
    assert torch.equal(vit.head.weight, torch.zeros(5, 32))
    assert teacher.from_dinov2(model, num_classes=3).config.num_classes == 3
    # Not sharing storage with the source.
    with torch.no_grad():
        vit.cls_token.add_(1.0)
    assert not torch.equal(vit.cls_token, model.dinov2.embeddings.cls_token)


def test_load_dinov2_from_a_save_pretrained_folder(tmp_path: Path) -> None:
    model = dinov2()
    folder = tmp_path / "dinov2"
    model.save_pretrained(folder)
    for vit in (
        teacher.load_dinov2(folder),
        teacher.load_teacher(folder),
        teacher.load_teacher(model),
    ):
        assert vit.config.image_size == 16
        assert_same_tokens(vit, model, images(16))
    resized = teacher.load_teacher(folder, image_size=24)
    assert_same_tokens(resized, model, images(24))

    classifier = dinov2("Dinov2ForImageClassification", num_labels=4)
    classifier.save_pretrained(tmp_path / "classifier")
    vit = teacher.load_dinov2(tmp_path / "classifier", 8)
    assert vit.config.num_classes == 4
    assert_same_tokens(vit, classifier.dinov2, images(8))


@pytest.mark.parametrize(
    ("overrides", "feature"),
    [
        (dict(use_swiglu_ffn=True), "SwiGLU FFN"),
        (dict(hidden_act="relu"), "hidden_act='relu'"),
        (dict(hidden_act="gelu_new"), "hidden_act='gelu_new'"),
        (dict(qkv_bias=False), "qkv without bias"),
        (dict(image_size=(16, 8)), "non-square images"),
    ],
)
def test_from_dinov2_refuses_what_our_vit_does_not_compute(
    overrides: dict[str, Any], feature: str
) -> None:
    import transformers

    model = transformers.Dinov2Model(transformers.Dinov2Config(**{**ARGS, **overrides}))
    with pytest.raises(ValueError, match="our ViT does not compute") as e:
        teacher.from_dinov2(model)
    assert feature in str(e.value)


def test_refuses_register_tokens_and_odd_sizes() -> None:
    import transformers

    config = transformers.Dinov2WithRegistersConfig(**ARGS, num_register_tokens=2)
    with pytest.raises(ValueError, match=r"register tokens \(num_register_tokens=2\)"):
        teacher.load_teacher(transformers.Dinov2WithRegistersModel(config))
    with pytest.raises(ValueError, match="image size 18 not a multiple of patch size 4"):
        teacher.from_dinov2(dinov2(), 18)
    with pytest.raises(TypeError, match="Dinov2Model"):
        teacher.from_dinov2(torch.nn.Linear(2, 2))


def test_verification_catches_a_different_computation() -> None:
    model = dinov2()
    plain = model.layernorm.forward
    model.layernorm.forward = lambda h: 2 * plain(h)
    with pytest.raises(ValueError, match="does not reproduce"):
        teacher.from_dinov2(model)


def test_load_dinov2_names_missing_and_mis_shaped_tensors(tmp_path: Path) -> None:
    folder = tmp_path / "broken"
    dinov2().save_pretrained(folder)
    weights = folder / "model.safetensors"
    state = load_file(str(weights))
    key = "encoder.layer.1.mlp.fc2.bias"  # transformers writes its version 4 names on disk
    assert key in state

    save_file({k: v for k, v in state.items() if k != key}, str(weights), {"format": "pt"})
    with pytest.raises(ValueError, match=r"missing keys: encoder\.layer\.1\.mlp\.fc2\.bias"):
        teacher.load_dinov2(folder)

    save_file({**state, key: torch.zeros(5)}, str(weights), {"format": "pt"})
    with pytest.raises(ValueError, match=r"shape mismatches: encoder\.layer\.1\.mlp\.fc2\.bias"):
        teacher.load_teacher(folder)

    with pytest.raises(FileNotFoundError):
        teacher.load_dinov2(tmp_path / "absent")
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "vit"}))
    with pytest.raises(ValueError, match="not 'dinov2'"):
        teacher.load_dinov2(other)
