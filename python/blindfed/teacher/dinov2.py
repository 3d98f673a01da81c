"""Hugging Face ``Dinov2Model`` / ``Dinov2ForImageClassification`` (a model object or a
``save_pretrained`` folder) into our :class:`~blindfed.nn.vit.ViT`.

DINOv2 is a plain pre-LayerNorm ViT with two additions that our ViT does not have but that
fold away exactly: a per-channel *layer scale* after the attention and after the MLP (folded
into the rows of the attention output projection and of ``fc2``), and position embeddings that
transformers resizes at every forward pass (resized once here, to the one image size our ViT
takes). Its classifier does not fold: see :func:`from_dinov2`.
"""

from __future__ import annotations

import torch
from torch import nn

from blindfed.nn.vit import ViT, ViTConfig
from blindfed.teacher.convert import (
    PathLike,
    _build,
    _check_layer_norms,
    _final_norm_tokens,
    _import,
    _listing,
    _model_folder,
    _Problems,
    _scale_rows,
    _square,
    _verify,
    _width_and_heads,
)
from blindfed.teacher.huggingface_vit import _hf_attention, _hf_layers

_CLASSES = ("Dinov2Model", "Dinov2ForImageClassification")
_WITH_REGISTERS = ("Dinov2WithRegistersModel", "Dinov2WithRegistersForImageClassification")


def _layer_modules(layer: nn.Module) -> dict[str, nn.Module]:
    """A Dinov2Layer's norms and attention modules by role."""
    return {"norm1": layer.norm1, **_hf_attention(layer), "norm2": layer.norm2}


def _config_and_state(
    model: nn.Module, image_size: int | None, num_classes: int | None
) -> tuple[ViTConfig, dict[str, torch.Tensor]]:
    name = type(model).__name__
    cfg = model.config
    backbone = getattr(model, "dinov2", model)
    problems = _Problems()
    registers = int(getattr(cfg, "num_register_tokens", 0) or 0)
    if name in _WITH_REGISTERS or registers:
        problems.add(f"register tokens (num_register_tokens={registers})")
    if getattr(cfg, "use_swiglu_ffn", False):
        problems.add("a SwiGLU FFN (use_swiglu_ffn=True)")
    act = getattr(cfg, "hidden_act", None)
    if act not in ("gelu", "gelu_python"):
        problems.add(f"hidden_act={act!r} (only 'gelu', the exact erf GELU)")
    emb = backbone.embeddings
    proj = emb.patch_embeddings.projection
    stored = _square(emb.patch_embeddings.image_size, "images", problems)
    patch = _square(proj.kernel_size, "patches", problems)
    if proj.bias is None:
        problems.add("a patch embedding without bias")
    size = stored if image_size is None else int(image_size)
    if size and patch and size % patch:
        problems.add(f"image size {size} not a multiple of patch size {patch}")
    width, heads = _width_and_heads(cfg, problems)
    layers = _hf_layers(backbone)
    parts = [_layer_modules(layer) for layer in layers]
    norms: list[tuple[str, nn.Module]] = [("layernorm", backbone.layernorm)]
    for i, (layer, m) in enumerate(zip(layers, parts, strict=True)):
        norms += [(f"layer {i} norm1", m["norm1"]), (f"layer {i} norm2", m["norm2"])]
        if any(m[n].bias is None for n in "qkv"):
            problems.add("qkv without bias (qkv_bias=False)", f"layer {i}")
        mlp = layer.mlp
        if not (isinstance(getattr(mlp, "fc1", None), nn.Linear) and hasattr(mlp, "fc2")):
            problems.add(f"an MLP that is not fc1-GELU-fc2 ({type(mlp).__name__})", f"layer {i}")
            continue
        m.update(fc1=mlp.fc1, fc2=mlp.fc2)
        if any(m[n].bias is None for n in ("proj", "fc1", "fc2")):
            problems.add("a linear layer without bias", f"layer {i}")
    eps = _check_layer_norms(norms, width, (nn.LayerNorm,), problems)
    problems.refuse(f"Hugging Face {name}")

    if num_classes is None:
        classifier = getattr(model, "classifier", None)
        num_classes = classifier.out_features if isinstance(classifier, nn.Linear) else 1
    config = ViTConfig(
        image_size=int(size),
        patch_size=int(patch),
        in_chans=int(proj.in_channels),
        num_classes=int(num_classes),
        width=width,
        depth=len(layers),
        heads=heads,
        mlp=int(parts[0]["fc1"].out_features) if parts else int(width * cfg.mlp_ratio),
        eps=eps.pop() if eps else float(cfg.layer_norm_eps),
    )

    def t(x: torch.Tensor) -> torch.Tensor:
        return x.detach().clone()

    # transformers' own resizing (bicubic in float32, cast back; in older releases a scale factor
    # with an offset): only its exact arithmetic gives its outputs at this size. It reads nothing
    # of the embeddings tensor but its shape, and returns the stored table when no resizing is due.
    p, grid = emb.position_embeddings, config.image_size // config.patch_size
    with torch.no_grad():
        pos = emb.interpolate_pos_encoding(p.new_empty(1, grid * grid + 1, width), size, size)
    state = {
        "cls_token": t(emb.cls_token),
        "pos_embed": t(pos),
        "patch_embed.proj.weight": t(proj.weight),
        "patch_embed.proj.bias": t(proj.bias),
        "norm.weight": t(backbone.layernorm.weight),
        "norm.bias": t(backbone.layernorm.bias),
        "head.weight": p.new_zeros(config.num_classes, width),
        "head.bias": p.new_zeros(config.num_classes),
    }

    for i, (layer, m) in enumerate(zip(layers, parts, strict=True)):
        n = f"blocks.{i}"
        state[f"{n}.attn.qkv.weight"] = torch.cat([t(m[x].weight) for x in "qkv"], dim=0)
        state[f"{n}.attn.qkv.bias"] = torch.cat([t(m[x].bias) for x in "qkv"], dim=0)
        for ours, theirs in (("norm1", "norm1"), ("norm2", "norm2"), ("mlp.fc1", "fc1")):
            state[f"{n}.{ours}.weight"] = t(m[theirs].weight)
            state[f"{n}.{ours}.bias"] = t(m[theirs].bias)
        for ours, theirs, scale in (
            ("attn.proj", "proj", layer.layer_scale1.lambda1),
            ("mlp.fc2", "fc2", layer.layer_scale2.lambda1),
        ):
            state[f"{n}.{ours}.weight"] = _scale_rows(m[theirs].weight, scale)
            state[f"{n}.{ours}.bias"] = _scale_rows(m[theirs].bias, scale)
    return config, state


def from_dinov2(
    model: nn.Module,
    image_size: int | None = None,
    *,
    num_classes: int | None = None,
    verify: bool = True,
    rtol: float | None = None,
) -> ViT:
    """Converts a ``transformers.Dinov2Model`` or ``Dinov2ForImageClassification`` backbone.

    Mapping as in :func:`~blindfed.teacher.from_huggingface` (``norm1`` / ``norm2``, query, key
    and value stacked into ``attn.qkv``, ``o_proj`` to ``attn.proj``, ``layernorm`` to ``norm``),
    transformers 4's and 5's module layouts both read. ``layer_scale1`` / ``layer_scale2`` are
    folded into ``attn.proj`` / ``mlp.fc2`` (weight rows and bias scaled). The position table,
    stored for the config's ``image_size`` (518 px in the released checkpoints), is resized by
    transformers' own ``interpolate_pos_encoding`` to ``image_size``, so the converted ViT on
    ``image_size`` images computes what the source does on them.

    Only the backbone converts: ``Dinov2ForImageClassification``'s classifier reads the class
    token *and* the mean of the patch tokens, which our head (class token only) cannot express.
    The converted ViT's ``head`` has ``num_classes`` outputs (default: the source classifier's,
    else 1) and is all zeros: train it (e.g. a linear probe) before using its logits. What the
    check compares, and what matches, is ``vit.norm`` of the last block's tokens against
    ``Dinov2Model``'s ``last_hidden_state``.

    Refused with a ``ValueError`` naming the feature: register tokens (Dinov2WithRegisters),
    ``use_swiglu_ffn=True``, ``hidden_act`` other than the exact GELU, ``qkv_bias=False``,
    non-square images or patches, an ``image_size`` that is not a multiple of the patch size.
    Masking (``bool_masked_pos``, the mask token) is a pre-training input and is not carried.

    Args:
        model: the Hugging Face model.
        image_size: the one image size the converted ViT takes (default: the config's).
        num_classes: outputs of the (zero) head.
        verify: check the copy against ``model`` on a random batch of ``image_size`` images (in
            eval mode; ``model``'s mode is restored); ``ValueError`` if it differs.
        rtol: tolerance of that check, relative to the largest output (default 1e-5 in float32).

    Returns:
        The converted ViT on the model's device and dtype, in eval mode.
    """
    name = type(model).__name__
    if not type(model).__module__.startswith("transformers.") or name not in (
        _CLASSES + _WITH_REGISTERS
    ):
        raise TypeError(
            "from_dinov2 needs a transformers.Dinov2Model or Dinov2ForImageClassification, got "
            f"{type(model).__module__}.{name}"
        )
    config, state = _config_and_state(model, image_size, num_classes)
    p = next(model.parameters())
    what = f"Hugging Face {name}"
    vit = _build(config, state, f"{what} does not match our ViT", p.device, p.dtype)
    if verify:
        backbone = getattr(model, "dinov2", model)
        _verify(
            vit,
            backbone,
            lambda images: backbone(pixel_values=images).last_hidden_state,
            rtol,
            what,
            ours=_final_norm_tokens(vit),
            output="last_hidden_state",
        )
    return vit


def load_dinov2(
    path: PathLike,
    image_size: int | None = None,
    *,
    num_classes: int | None = None,
    verify: bool = True,
    rtol: float | None = None,
) -> ViT:
    """Loads a DINOv2 ``save_pretrained`` folder and converts it (see :func:`from_dinov2`).

    The class named in config.json's ``architectures`` is loaded (``Dinov2ForImageClassification``
    or else ``Dinov2Model``) with ``local_files_only=True``. Weights that the folder lacks
    (which transformers would make up at random) or holds in another shape are refused, naming
    them; the mask token, which the conversion does not read, may be absent.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: ``path`` is not a DINOv2 folder, its weights do not fill the model, or the
            model does not convert.
    """
    transformers = _import("transformers", "transformers")
    folder, config = _model_folder(path)
    model_type = config.get("model_type")
    if model_type != "dinov2":
        raise ValueError(f"{str(folder)!r} holds model_type {model_type!r}, not 'dinov2'")
    architectures = config.get("architectures") or []
    name = _CLASSES[1] if _CLASSES[1] in architectures else _CLASSES[0]
    try:
        model, info = getattr(transformers, name).from_pretrained(
            str(folder),
            local_files_only=True,
            output_loading_info=True,
            ignore_mismatched_sizes=True,  # so that they are listed in info, refused below
        )
    except (RuntimeError, ValueError) as e:  # e.g. a tensor shaped unlike the config says
        raise ValueError(f"{str(folder)!r} does not load as {name}: {e}") from e
    missing = [k for k in info.get("missing_keys") or [] if not k.endswith("mask_token")]
    mismatched = [
        f"{m[0]} {tuple(m[1])} (expected {tuple(m[2])})"
        if isinstance(m, tuple) and len(m) == 3
        else str(m)
        for m in info.get("mismatched_keys") or []
    ]
    problems = [f"missing keys: {_listing(missing)}"] if missing else []
    problems += [f"shape mismatches: {_listing(mismatched)}"] if mismatched else []
    if problems:
        raise ValueError(
            f"{str(folder)!r} does not hold {name}'s weights as its config.json describes "
            "(transformers would fill them at random): " + "; ".join(problems)
        )
    return from_dinov2(model, image_size, num_classes=num_classes, verify=verify, rtol=rtol)
