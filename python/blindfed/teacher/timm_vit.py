"""timm ViTs (a model object or a checkpoint on disk) into our :class:`~blindfed.nn.vit.ViT`.

Plain timm ``VisionTransformer`` models copy over by name. timm's DINOv2 backbones
(``vit_small_patch14_dinov2`` and kin) add two things our ViT does not have but that fold away
exactly: a per-channel *layer scale* after the attention and after the MLP (``ls1`` / ``ls2``,
folded into the rows of ``attn.proj`` and ``mlp.fc2``), and, with ``dynamic_img_size=True``, a
position table that timm resamples at every forward pass to the image's size (resampled once
here, with timm's own function, to the one image size our ViT takes). They have no classifier
(``num_classes=0``): the converted ViT then gets a zero head, and what matches timm is its
final-norm tokens (timm's ``forward_features``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from blindfed.nn.vit import ViT, ViTConfig
from blindfed.teacher.convert import (
    PathLike,
    _build,
    _check_layer_norms,
    _check_state,
    _existing,
    _final_norm_tokens,
    _import,
    _listing,
    _Problems,
    _scale_rows,
    _square,
    _verify,
)

_TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")

# ---- timm -----------------------------------------------------------------------------------


def _timm_config(model: nn.Module, image_size: int | None) -> ViTConfig:
    """The ViTConfig of a timm VisionTransformer for ``image_size`` images (default: its own
    ``img_size``), after refusing what our ViT lacks."""
    vt = _import("timm.models.vision_transformer", "timm")
    problems = _Problems()

    def identity(module: Any) -> bool:
        return module is None or isinstance(module, nn.Identity)

    if getattr(model, "cls_token", None) is None:
        problems.add("a model without class token (class_token=False)")
    if getattr(model, "reg_token", None) is not None or getattr(model, "num_reg_tokens", 0):
        problems.add(f"register tokens (reg_tokens={getattr(model, 'num_reg_tokens', '?')})")
    if getattr(model, "global_pool", "token") != "token":
        problems.add(f"global_pool={model.global_pool!r} (only 'token')")
    if getattr(model, "attn_pool", None) is not None:
        problems.add("attention pooling (attn_pool)")
    if getattr(model, "no_embed_class", False):
        problems.add("a pos_embed without the class token position (no_embed_class=True)")
    if getattr(model, "pos_embed", None) is None:
        problems.add("a model without learned position embedding (pos_embed='none')")
    if not identity(getattr(model, "norm_pre", None)):
        problems.add("a norm before the blocks (norm_pre, pre_norm=True)")
    if not identity(getattr(model, "fc_norm", None)):
        problems.add("a norm after pooling (fc_norm)")
    elif identity(getattr(model, "norm", None)):
        problems.add("a model without final norm (final_norm=False)")
    head = getattr(model, "head", None)
    if not isinstance(head, nn.Linear) and not identity(head):
        problems.add(f"a head that is {type(head).__name__} (only Linear, or none: num_classes=0)")
    elif isinstance(head, nn.Linear) and head.bias is None:
        problems.add("a head without bias")

    pe = model.patch_embed
    if getattr(pe, "dynamic_img_pad", False):
        problems.add("dynamic image padding (dynamic_img_pad=True)")
    if not identity(getattr(pe, "norm", None)):
        problems.add("a norm in the patch embedding (embed_norm_layer)")
    proj = getattr(pe, "proj", None)
    stored_size = patch_size = None
    if not isinstance(proj, nn.Conv2d):
        problems.add(f"a patch embedding that is not one Conv2d ({type(pe).__name__})")
    else:
        if proj.bias is None:
            problems.add("a patch embedding without bias (pre_norm=True)")
        if getattr(pe, "img_size", None) is None:
            problems.add("no fixed image size (img_size=None)")
        else:
            stored_size = _square(pe.img_size, "images", problems)
        patch_size = _square(proj.kernel_size, "patches", problems)
        if (
            tuple(proj.stride) != tuple(proj.kernel_size)
            or any(proj.padding)
            or proj.groups != 1
            or any(d != 1 for d in proj.dilation)
        ):
            problems.add("a patch embedding whose Conv2d is not kernel = stride, no padding")
    size = stored_size if image_size is None else int(image_size)
    if size and patch_size and size % patch_size:
        # timm's Conv2d would drop the last pixels, our ViT takes whole patches only
        problems.add(f"image size {size} not a multiple of patch size {patch_size}")

    width = int(model.embed_dim)
    norm_types = tuple(t for t in (nn.LayerNorm, getattr(vt, "LayerNorm", None)) if t)
    norms: list[tuple[str, nn.Module]] = [("norm", model.norm)] if not identity(model.norm) else []
    block_types = tuple(t for t in (getattr(vt, "Block", None),) if t)
    attention_types = tuple(t for t in (getattr(vt, "Attention", None),) if t)
    mlp_types = tuple(t for t in (getattr(vt, "Mlp", None),) if t)
    layer_scale_types = tuple(t for t in (getattr(vt, "LayerScale", None),) if t)
    timm_gelu = _import("timm.layers.activations", "timm").GELU
    blocks = list(model.blocks)
    if not blocks:
        problems.add("a model without blocks (depth=0)")
    for i, b in enumerate(blocks):
        n = f"blocks.{i}"
        if type(b) not in block_types:
            problems.add(f"a block other than timm's pre-norm Block: {type(b).__name__}", n)
            continue
        for scale_name in ("ls1", "ls2"):  # folded into attn.proj / mlp.fc2 by _timm_state
            scale = getattr(b, scale_name, None)
            if identity(scale):
                continue
            gamma = getattr(scale, "gamma", None)
            if type(scale) not in layer_scale_types or gamma is None or gamma.shape != (width,):
                problems.add(
                    f"a layer scale other than timm's per-channel LayerScale: "
                    f"{type(scale).__name__}",
                    f"{n}.{scale_name}",
                )
        norms += [(f"{n}.norm1", b.norm1), (f"{n}.norm2", b.norm2)]
        a, m = b.attn, b.mlp
        if type(a) not in attention_types:
            problems.add(f"an attention other than timm's Attention: {type(a).__name__}", n)
        else:
            if a.qkv.bias is None:
                problems.add("qkv without bias (qkv_bias=False)", f"{n}.attn.qkv")
            if not identity(getattr(a, "q_norm", None)) or not identity(getattr(a, "k_norm", None)):
                problems.add("q/k norm (qk_norm=True)", f"{n}.attn")
            if not identity(getattr(a, "norm", None)):
                problems.add("a norm inside attention (scale_attn_norm=True)", f"{n}.attn.norm")
            if getattr(a, "gate", None) is not None:
                problems.add("gated attention", f"{n}.attn.gate")
            if a.proj.bias is None:
                problems.add("an attention projection without bias", f"{n}.attn.proj")
            if a.qkv.out_features != 3 * width or a.proj.in_features != width:
                problems.add("an attention width other than embed_dim", f"{n}.attn")
        if type(m) not in mlp_types:
            problems.add(f"an MLP other than timm's Mlp: {type(m).__name__}", n)
        else:
            if not identity(getattr(m, "norm", None)):
                problems.add("a norm inside the MLP (scale_mlp_norm=True)", f"{n}.mlp.norm")
            if m.fc1.bias is None or m.fc2.bias is None:
                problems.add("an MLP without bias (proj_bias=False)", f"{n}.mlp")
            act = m.act
            exact = type(act) is timm_gelu or (
                type(act) is nn.GELU and getattr(act, "approximate", "none") == "none"
            )
            if not exact:
                problems.add(
                    f"a non-GELU activation {act!r} (only the exact erf GELU)", f"{n}.mlp.act"
                )
    eps = _check_layer_norms(norms, width, norm_types, problems)
    if model.pos_embed is not None and stored_size and patch_size and not problems:
        tokens = (stored_size // patch_size) ** 2 + 1
        if model.pos_embed.shape[1] != tokens:
            problems.add(f"a pos_embed of {model.pos_embed.shape[1]} positions for {tokens} tokens")
    problems.refuse("timm VisionTransformer")
    if size != stored_size and not getattr(model, "dynamic_img_size", False):
        raise ValueError(
            f"image_size={size}: this timm model takes only {stored_size}-pixel images "
            f"(dynamic_img_size=False), so it gives nothing to match at {size} pixels; create "
            f"it with img_size={size} or with dynamic_img_size=True"
        )

    return ViTConfig(
        image_size=int(size),
        patch_size=int(patch_size),
        in_chans=int(proj.in_channels),
        # without a classifier (num_classes=0) our ViT still needs a head: one zero output
        num_classes=int(head.out_features) if isinstance(head, nn.Linear) else 1,
        width=width,
        depth=len(blocks),
        heads=int(blocks[0].attn.num_heads),
        mlp=int(blocks[0].mlp.fc1.out_features),
        eps=eps.pop(),
    )


def _timm_state(model: nn.Module, config: ViTConfig) -> dict[str, torch.Tensor]:
    """The timm model's weights under our names (timm's are ours), with its layer scales folded,
    its position table at ``config.image_size`` and, if it has no classifier, a zero head."""
    vt = _import("timm.models.vision_transformer", "timm")
    state = {k: v.detach() for k, v in model.state_dict().items()}
    for i in range(config.depth):
        for scale_name, linear in (("ls1", "attn.proj"), ("ls2", "mlp.fc2")):
            gamma = state.pop(f"blocks.{i}.{scale_name}.gamma", None)
            if gamma is None:  # nn.Identity: no layer scale
                continue
            for part in ("weight", "bias"):
                key = f"blocks.{i}.{linear}.{part}"
                state[key] = _scale_rows(state[key], gamma)
    # The very call timm's _pos_embed makes for a dynamic_img_size model (in float32, cast back),
    # so that only its exact arithmetic is reproduced; at the model's own size it returns the
    # stored table untouched, as a fixed-size model uses it.
    grid = config.image_size // config.patch_size
    with torch.no_grad():
        state["pos_embed"] = vt.resample_abs_pos_embed(
            state["pos_embed"],
            new_size=(grid, grid),
            old_size=model.patch_embed.grid_size,
            num_prefix_tokens=model.num_prefix_tokens,  # no_embed_class is refused
        )
    if "head.weight" not in state:  # head is nn.Identity
        like = state["norm.weight"]
        state["head.weight"] = like.new_zeros(config.num_classes, config.width)
        state["head.bias"] = like.new_zeros(config.num_classes)
    return state


def from_timm(
    model: nn.Module,
    *,
    image_size: int | None = None,
    verify: bool = True,
    rtol: float | None = None,
) -> ViT:
    """Converts a timm ``VisionTransformer`` into our :class:`ViT` (same device and dtype).

    The configuration comes from the model (patch size, channels, ``embed_dim``, depth, heads,
    MLP width ``fc1.out_features``, classes, LayerNorm eps; image size below), and the weights
    are copied by name (timm's names are ours). Layer scale (``init_values``, as in timm's DINOv2
    models) is folded exactly: ``ls1.gamma`` scales the weight rows and bias of ``attn.proj``,
    ``ls2.gamma`` those of ``mlp.fc2``. Anything our ViT does not compute identically is refused
    with a ``ValueError`` naming it: no class token, register tokens (``reg_tokens``),
    ``global_pool`` other than ``'token'``, qkv without bias, q/k norm, ``norm_pre`` or
    ``fc_norm``, a non-GELU (or tanh GELU) activation, non-LayerNorm norms, a head that is
    neither Linear nor absent, non-square images, ``no_embed_class``, ``dynamic_img_pad``...

    A model without classifier (``num_classes=0``, as timm's DINOv2 backbones) converts to a ViT
    whose ``head`` has one output and is all zeros: train it (e.g. a linear probe) before using
    its logits. What is checked, and matches, is then ``vit.norm`` of the last block's tokens
    against timm's ``forward_features``.

    Args:
        model: an instantiated ``timm.models.vision_transformer.VisionTransformer``.
        image_size: the one image size the converted ViT takes (default: the model's
            ``img_size``, 518 px for DINOv2). Another size needs a model built with
            ``dynamic_img_size=True``: its position table (stored for ``img_size``) is then
            resampled once, by timm's own ``resample_abs_pos_embed`` called as timm's forward
            calls it, so the converted ViT on ``image_size`` images computes what ``model``
            does on them. It must be a multiple of the patch size.
        verify: check that the copy gives the same logits (or, without classifier, final-norm
            tokens) as ``model`` on a random batch of ``image_size`` images (in eval mode;
            ``model``'s mode is restored) and raise ``ValueError`` if not.
        rtol: tolerance of that check, relative to the largest output (default 1e-5 in float32).

    Returns:
        The converted ViT, in eval mode.
    """
    vt = _import("timm.models.vision_transformer", "timm")
    if not isinstance(model, vt.VisionTransformer):
        raise TypeError(
            f"from_timm needs a timm VisionTransformer, got {type(model).__module__}."
            f"{type(model).__name__}"
        )
    config = _timm_config(model, image_size)
    p = next(model.parameters())
    state = _timm_state(model, config)
    vit = _build(config, state, "timm model does not match our ViT", p.device, p.dtype)
    if verify and isinstance(model.head, nn.Linear):
        _verify(vit, model, model, rtol, "timm model")
    elif verify:  # no classifier: compare every token after the final norm
        _verify(
            vit,
            model,
            model.forward_features,
            rtol,
            "timm model",
            ours=_final_norm_tokens(vit),
            output="final-norm tokens (forward_features)",
        )
    return vit


def _unwrap_state(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    """A checkpoint's state dict: top level or nested under 'state_dict' / 'model'."""
    for _ in range(3):
        if not isinstance(obj, Mapping):
            break
        inner = next(
            (obj[k] for k in ("state_dict", "model") if isinstance(obj.get(k), Mapping)), None
        )
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, Mapping) or not obj:
        raise ValueError(f"checkpoint {str(path)!r} holds no state dict (got {type(obj).__name__})")
    bad = [str(k) for k, v in obj.items() if not isinstance(k, str) or not torch.is_tensor(v)]
    if bad:
        raise ValueError(
            f"checkpoint {str(path)!r} has entries that are not tensors: {_listing(bad)}"
        )
    state = dict(obj)
    for prefix in ("module.", "_orig_mod."):  # DistributedDataParallel, torch.compile
        if all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    return state


def _read_checkpoint(checkpoint: PathLike) -> dict[str, torch.Tensor]:
    """Reads a ``.safetensors`` or torch (``.pt/.pth/.bin/.ckpt``) state dict onto the CPU."""
    path = _existing(checkpoint, "checkpoint")
    if path.is_dir():
        raise ValueError(f"checkpoint {str(path)!r} is a directory; pass the weights file")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            obj: Any = load_file(str(path), device="cpu")
        except Exception as e:
            raise ValueError(f"{str(path)!r} is not a readable safetensors file: {e}") from e
    elif suffix in _TORCH_SUFFIXES:
        try:
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as e:
            raise ValueError(
                f"{str(path)!r} is not a torch state dict loadable with weights_only=True "
                f"(a pickled model is refused; save model.state_dict() instead): {e}"
            ) from e
    else:
        raise ValueError(
            f"unknown checkpoint format {suffix or '(no suffix)'} for {str(path)!r}; expected "
            f".safetensors or one of {', '.join(_TORCH_SUFFIXES)}"
        )
    return _unwrap_state(obj, path)


def load_timm(
    name_or_model: str | nn.Module,
    checkpoint: PathLike | None = None,
    *,
    image_size: int | None = None,
    verify: bool = True,
    rtol: float | None = None,
    **kwargs: Any,
) -> ViT:
    """Builds a timm ViT, loads a local checkpoint into it, and converts it (:func:`from_timm`).

    Args:
        name_or_model: a timm model name, created with ``timm.create_model(name,
            pretrained=False, **kwargs)`` (nothing is downloaded), or an instantiated
            ``VisionTransformer``.
        checkpoint: the weights: a ``.safetensors`` file, or a torch ``.pt/.pth/.bin/.ckpt``
            file read with ``weights_only=True``; the state dict may be nested under
            ``'state_dict'`` or ``'model'``. Required with a name (timm would otherwise give
            random weights); optional with a model (which then keeps its weights).
        image_size, verify, rtol: as in :func:`from_timm`. ``image_size`` is the size the
            converted ViT takes; ``img_size`` (in ``kwargs``) the one timm builds the model for,
            which sizes the position table the checkpoint must hold.
        **kwargs: passed to ``timm.create_model`` (``num_classes``, ``img_size``, ``in_chans``,
            ``dynamic_img_size``...).

    Raises:
        FileNotFoundError: ``checkpoint`` does not exist.
        ValueError: the checkpoint's keys or shapes do not match the model (missing and
            unexpected keys are listed), or the model does not convert.
    """
    timm = _import("timm", "timm")
    if isinstance(name_or_model, str):
        if "pretrained" in kwargs:
            raise TypeError("load_timm never downloads: drop pretrained= and pass checkpoint=")
        if checkpoint is None:
            raise ValueError(
                f"load_timm({name_or_model!r}) needs checkpoint=: without one timm gives random "
                "weights (nothing is downloaded)"
            )
        state = _read_checkpoint(checkpoint)
        model = timm.create_model(name_or_model, pretrained=False, **kwargs)
        what = f"timm model {name_or_model!r}"
    elif isinstance(name_or_model, nn.Module):
        if kwargs:
            raise TypeError(f"unexpected keyword arguments with a model: {sorted(kwargs)}")
        model = name_or_model
        state = None if checkpoint is None else _read_checkpoint(checkpoint)
        what = f"timm model {type(model).__name__}"
    else:
        raise TypeError(f"expected a timm model name or model, got {type(name_or_model).__name__}")
    if state is not None:
        expected = {k: v.shape for k, v in model.state_dict().items()}
        _check_state(expected, state, f"checkpoint {str(checkpoint)!r} does not match {what}")
        with torch.no_grad():
            model.load_state_dict(state, strict=True)
    return from_timm(model, image_size=image_size, verify=verify, rtol=rtol)
