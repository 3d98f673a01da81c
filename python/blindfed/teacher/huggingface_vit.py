"""Hugging Face ``ViTModel`` / ``ViTForImageClassification`` (a model object or a
``save_pretrained`` folder) into our :class:`~blindfed.nn.vit.ViT`."""

from __future__ import annotations

import torch
from torch import nn

from blindfed.nn.vit import ViT, ViTConfig
from blindfed.teacher.convert import (
    PathLike,
    _build,
    _check_layer_norms,
    _import,
    _listing,
    _model_folder,
    _Problems,
    _square,
    _verify,
    _width_and_heads,
)

# ---- Hugging Face -----------------------------------------------------------------------------


def _hf_layers(vit_model: nn.Module) -> list[nn.Module]:
    layers = getattr(vit_model, "layers", None)  # transformers >= 5
    if layers is None:
        layers = vit_model.encoder.layer  # transformers 4
    return list(layers)


def _hf_attention(layer: nn.Module) -> dict[str, nn.Module]:
    """A ViT or DINOv2 layer's query, key, value and output projection, in either transformers
    4's or 5's layout."""
    att = layer.attention
    if hasattr(att, "q_proj"):  # transformers >= 5
        return {"q": att.q_proj, "k": att.k_proj, "v": att.v_proj, "proj": att.o_proj}
    # transformers 4: attention.attention.{query,key,value}, attention.output.dense
    inner = att.attention
    return {"q": inner.query, "k": inner.key, "v": inner.value, "proj": att.output.dense}


def _hf_layer_modules(layer: nn.Module) -> dict[str, nn.Module]:
    """A ViTLayer's modules by role, in either transformers 4's or 5's layout."""
    if hasattr(layer.attention, "q_proj"):  # transformers >= 5
        fc1, act, fc2 = layer.mlp.fc1, layer.mlp.activation_fn, layer.mlp.fc2
    else:
        fc1, act = layer.intermediate.dense, layer.intermediate.intermediate_act_fn
        fc2 = layer.output.dense
    return {
        "norm1": layer.layernorm_before,
        **_hf_attention(layer),
        "norm2": layer.layernorm_after,
        "fc1": fc1,
        "act": act,
        "fc2": fc2,
    }


def _hf_config_and_state(model: nn.Module) -> tuple[ViTConfig, dict[str, torch.Tensor]]:
    cfg = model.config
    problems = _Problems()
    act = getattr(cfg, "hidden_act", None)
    if act not in ("gelu", "gelu_python"):
        problems.add(f"hidden_act={act!r} (only 'gelu', the exact erf GELU)")
    emb = model.vit.embeddings
    if getattr(emb, "mask_token", None) is not None:
        problems.add("a mask token (use_mask_token=True)")
    proj = emb.patch_embeddings.projection
    image_size = _square(emb.patch_embeddings.image_size, "images", problems)
    patch_size = _square(proj.kernel_size, "patches", problems)
    if image_size and patch_size and image_size % patch_size:
        problems.add(f"image size {image_size} not a multiple of patch size {patch_size}")
    width, heads = _width_and_heads(cfg, problems)
    classifier = model.classifier
    if not isinstance(classifier, nn.Linear):
        problems.add(f"a head of {getattr(cfg, 'num_labels', 0)} classes (num_labels=0)")
    layers = _hf_layers(model.vit)
    parts = [_hf_layer_modules(layer) for layer in layers]
    norms: list[tuple[str, nn.Module]] = [("vit.layernorm", model.vit.layernorm)]
    for i, m in enumerate(parts):
        norms += [
            (f"layer {i} layernorm_before", m["norm1"]),
            (f"layer {i} layernorm_after", m["norm2"]),
        ]
        if any(m[n].bias is None for n in ("q", "k", "v")):
            problems.add("qkv without bias (qkv_bias=False)", f"layer {i}")
        if any(m[n].bias is None for n in ("proj", "fc1", "fc2")):
            problems.add("a linear layer without bias", f"layer {i}")
    eps = _check_layer_norms(norms, width, (nn.LayerNorm,), problems)
    problems.refuse("Hugging Face ViTForImageClassification")

    config = ViTConfig(
        image_size=int(image_size),
        patch_size=int(patch_size),
        in_chans=int(proj.in_channels),
        num_classes=int(classifier.out_features),
        width=width,
        depth=len(layers),
        heads=heads,
        mlp=int(parts[0]["fc1"].out_features) if parts else int(cfg.intermediate_size),
        eps=eps.pop(),
    )

    def t(x: torch.Tensor) -> torch.Tensor:
        return x.detach()

    state = {
        "cls_token": t(emb.cls_token),
        "pos_embed": t(emb.position_embeddings),
        "patch_embed.proj.weight": t(proj.weight),
        "patch_embed.proj.bias": t(proj.bias),
        "norm.weight": t(model.vit.layernorm.weight),
        "norm.bias": t(model.vit.layernorm.bias),
        "head.weight": t(classifier.weight),
        "head.bias": t(classifier.bias),
    }
    for i, m in enumerate(parts):
        n = f"blocks.{i}"
        state[f"{n}.attn.qkv.weight"] = torch.cat([t(m[x].weight) for x in "qkv"], dim=0)
        state[f"{n}.attn.qkv.bias"] = torch.cat([t(m[x].bias) for x in "qkv"], dim=0)
        for ours, theirs in (
            ("norm1", "norm1"),
            ("attn.proj", "proj"),
            ("norm2", "norm2"),
            ("mlp.fc1", "fc1"),
            ("mlp.fc2", "fc2"),
        ):
            state[f"{n}.{ours}.weight"] = t(m[theirs].weight)
            state[f"{n}.{ours}.bias"] = t(m[theirs].bias)
    return config, state


def from_huggingface(model: nn.Module, *, verify: bool = True, rtol: float | None = None) -> ViT:
    """Converts a ``transformers.ViTForImageClassification`` into our :class:`ViT`.

    The configuration comes from the model (``hidden_size``, ``num_hidden_layers``,
    ``num_attention_heads``, ``intermediate_size``, ``image_size``, ``patch_size``,
    ``num_channels``, ``layer_norm_eps``, ``num_labels``). Each layer's query, key and value
    are stacked into our ``attn.qkv`` (in that order); ``layernorm_before`` / ``layernorm_after``
    become ``norm1`` / ``norm2``, the attention output projection ``attn.proj``, the MLP
    ``mlp.fc1`` / ``mlp.fc2``, ``vit.layernorm`` ``norm`` and ``classifier`` ``head``. Both
    transformers 4's module layout (``encoder.layer.{i}.attention.attention.query``...) and
    5's (``layers.{i}.attention.q_proj``...) are read.

    Refused with a ``ValueError`` naming the feature: ``hidden_act`` other than the exact GELU
    (``'gelu'``; ``'gelu_python'`` is the same function), ``qkv_bias=False``, a classifier of 0
    labels, non-square images. A bare ``ViTModel`` has no classifier and is refused with a
    ``TypeError`` (its optional pooler is never used by ``ViTForImageClassification``).

    Args:
        model: the Hugging Face model.
        verify: check that the copy gives the same logits as ``model(pixel_values=...).logits``
            on a random batch (in eval mode; ``model``'s mode is restored); ``ValueError`` if
            not.
        rtol: tolerance of that check, relative to the largest logit (default 1e-5 in float32).

    Returns:
        The converted ViT on the model's device and dtype, in eval mode.
    """
    transformers = _import("transformers", "transformers")
    if not isinstance(model, transformers.ViTForImageClassification):
        hint = (
            " (a ViTModel has no classifier: load the checkpoint as ViTForImageClassification)"
            if isinstance(model, transformers.ViTModel)
            else ""
        )
        raise TypeError(
            "from_huggingface needs a transformers.ViTForImageClassification, got "
            f"{type(model).__module__}.{type(model).__name__}{hint}"
        )
    config, state = _hf_config_and_state(model)
    p = next(model.parameters())
    vit = _build(config, state, "Hugging Face model does not match our ViT", p.device, p.dtype)
    if verify:

        def reference(images: torch.Tensor) -> torch.Tensor:
            return model(pixel_values=images).logits

        _verify(vit, model, reference, rtol, "Hugging Face model")
    return vit


def load_huggingface(path: PathLike, *, verify: bool = True, rtol: float | None = None) -> ViT:
    """Loads a ``save_pretrained`` folder as ``ViTForImageClassification`` and converts it.

    Uses ``ViTForImageClassification.from_pretrained(path, local_files_only=True)``; a
    checkpoint that lacks weights of the classifier (e.g. a bare ``ViTModel``, which
    transformers would fill with random ones) is refused with a ``ValueError`` listing them.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: ``path`` is not a ViT folder, its weights do not fill the model, or the model
            does not convert (see :func:`from_huggingface`).
    """
    transformers = _import("transformers", "transformers")
    folder, _ = _model_folder(path)
    model, info = transformers.ViTForImageClassification.from_pretrained(
        str(folder), local_files_only=True, output_loading_info=True
    )
    missing = list(info.get("missing_keys") or [])
    mismatched = [str(m) for m in info.get("mismatched_keys") or []]
    if missing or mismatched:
        raise ValueError(
            f"{str(folder)!r} does not hold all of ViTForImageClassification's weights "
            f"(transformers would make them up): missing {_listing(missing)}"
            + (f"; mismatched {_listing(mismatched)}" if mismatched else "")
        )
    return from_huggingface(model, verify=verify, rtol=rtol)
