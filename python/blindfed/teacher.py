"""Loading real teachers (timm and Hugging Face ViTs on disk) into :class:`blindfed.nn.vit.ViT`.

Every converter copies the weights into our pre-LayerNorm ViT, then checks that it gives the
same logits as the source model on a random input, and refuses, with a ``ValueError`` naming the
feature, any model that computes something our ViT does not (layer scale, register tokens,
average pooling, a tanh GELU...). Our own format is a ``.safetensors`` file holding the state dict
and the :class:`~blindfed.nn.vit.ViTConfig` as JSON in its metadata (key
``"blindfed.vit_config"``).

timm and transformers are optional (``pip install blindfed[teachers]``); they are imported only
by the functions that need them. Nothing here downloads anything: checkpoints must be on disk.

Usage (not run here)::

    from blindfed import teacher

    vit = teacher.load_timm("vit_base_patch16_224", "vit_base.safetensors")  # timm weights
    vit = teacher.load_huggingface("path/to/vit-base-patch16-224")  # a save_pretrained folder
    vit = teacher.load_teacher("path/to/anything")  # dispatch on what the path holds
    teacher.save(vit, "teacher.safetensors")  # our format, read back by load / load_teacher

Round trip through our format (needs only torch and safetensors):

>>> import tempfile
>>> from pathlib import Path
>>> import torch
>>> from blindfed import teacher
>>> from blindfed.nn.vit import ViT, ViTConfig
>>> model = ViT(ViTConfig(width=32, depth=2, heads=2, mlp=64))
>>> with tempfile.TemporaryDirectory() as d:
...     teacher.save(model, Path(d) / "tiny.safetensors")
...     again = teacher.load(Path(d) / "tiny.safetensors")
>>> again.config == model.config
True
>>> images = torch.randn(2, 1, 28, 28)
>>> torch.equal(model.eval()(images), again(images))
True
"""

from __future__ import annotations

import importlib
import json
import math
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from blindfed.nn.vit import ViT, ViTConfig

__all__ = [
    "CONFIG_KEY",
    "from_huggingface",
    "from_timm",
    "load",
    "load_huggingface",
    "load_teacher",
    "load_timm",
    "save",
]

#: The safetensors metadata key holding the ViTConfig JSON in our files.
CONFIG_KEY = "blindfed.vit_config"

_TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
_CONFIG_FIELDS = tuple(ViTConfig.__dataclass_fields__)
_INT_FIELDS = tuple(f for f in _CONFIG_FIELDS if f != "eps")

PathLike = str | os.PathLike


# ---- shared helpers ---------------------------------------------------------------------------


def _import(module: str, package: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(
            f"this needs {package}, which is not installed: pip install {package} "
            f"(or pip install blindfed[teachers])"
        ) from e


def _existing(path: PathLike, what: str) -> Path:
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{what} {str(p)!r} does not exist")
    return p


def _listing(keys: Iterable[str], limit: int = 12) -> str:
    keys = list(keys)
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def _check_state(
    expected: Mapping[str, torch.Size], got: Mapping[str, torch.Tensor], what: str
) -> None:
    """Raises a ValueError listing missing and unexpected keys and shape mismatches."""
    missing = [k for k in expected if k not in got]
    unexpected = [k for k in got if k not in expected]
    mismatched = [
        f"{k} {tuple(got[k].shape)} (expected {tuple(expected[k])})"
        for k in expected
        if k in got and tuple(got[k].shape) != tuple(expected[k])
    ]
    problems = []
    if missing:
        problems.append(f"missing keys: {_listing(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_listing(unexpected)}")
    if mismatched:
        problems.append(f"shape mismatches: {_listing(mismatched)}")
    if problems:
        raise ValueError(f"{what}: " + "; ".join(problems))


def _build(
    config: ViTConfig,
    state: Mapping[str, torch.Tensor],
    what: str,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> ViT:
    """``ViT(config)`` holding a copy of ``state`` (checked first), in eval mode."""
    with torch.device("meta"):
        vit = ViT(config)
    _check_state({k: v.shape for k, v in vit.state_dict().items()}, state, what)
    vit = vit.to_empty(device=device).to(dtype)
    with torch.no_grad():
        vit.load_state_dict(dict(state), strict=True)
    return vit.eval()


def _default_rtol(dtype: torch.dtype) -> float:
    if dtype == torch.float64:
        return 1e-10
    if dtype == torch.float32:
        return 1e-5
    return 2e-2


@torch.no_grad()
def _verify(
    vit: ViT,
    source: nn.Module,
    reference: Callable[[torch.Tensor], torch.Tensor],
    rtol: float | None,
    what: str,
) -> None:
    """Checks ``vit`` gives ``reference``'s logits on a random batch (both in eval mode)."""
    c = vit.config
    p = next(vit.parameters())
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(2, c.in_chans, c.image_size, c.image_size, generator=generator)
    images = images.to(device=p.device, dtype=p.dtype)
    was_training = source.training
    source.eval()
    try:
        expected = reference(images)
    finally:
        source.train(was_training)
    got = vit(images)
    if got.shape != expected.shape:
        raise ValueError(
            f"{what}: the converted ViT gives logits shaped {tuple(got.shape)}, "
            f"the source {tuple(expected.shape)}"
        )
    expected, got = expected.double(), got.double()
    if not bool(torch.isfinite(expected).all()):
        raise ValueError(f"{what}: the source model gives non-finite logits on a random input")
    rtol = _default_rtol(p.dtype) if rtol is None else rtol
    scale = max(float(expected.abs().max()), 1e-30)
    error = float((got - expected).abs().max()) / scale
    if not error <= rtol:  # also catches NaN
        raise ValueError(
            f"{what}: the converted ViT does not reproduce the source model's logits "
            f"(max error {error:.3g} relative to the largest logit, tolerance {rtol:.3g}); "
            "it computes something our ViT does not"
        )


class _Problems:
    """What a model computes that our ViT does not: each feature once, with where it occurs."""

    def __init__(self) -> None:
        self.found: dict[str, list[str]] = {}

    def add(self, feature: str, where: str | None = None) -> None:
        places = self.found.setdefault(feature, [])
        if where is not None:
            places.append(where)

    def __bool__(self) -> bool:
        return bool(self.found)

    def refuse(self, what: str) -> None:
        if not self.found:
            return
        listed = [f"{f} at {_listing(w, 4)}" if w else f for f, w in self.found.items()]
        raise ValueError(
            f"cannot convert this {what}: our ViT does not compute "
            + "; ".join(listed)
            + ". Only a plain pre-LayerNorm ViT (class token, learned positions, exact GELU, "
            "biased qkv, classifier on the class token after the final LayerNorm) converts"
        )


def _square(size: Any, name: str, problems: _Problems) -> int | None:
    """``size`` as one int, or None after recording why it is not square."""
    if isinstance(size, int):
        return size
    sizes = tuple(int(s) for s in size)
    if len(sizes) != 2 or sizes[0] != sizes[1]:
        problems.add(f"non-square {name} {sizes}")
        return None
    return sizes[0]


def _check_layer_norms(
    norms: list[tuple[str, nn.Module]], width: int, allowed: tuple[type, ...], problems: _Problems
) -> set[float]:
    """Records norms that are not LayerNorms over ``width`` with weight and bias; their eps."""
    for name, module in norms:
        if type(module) not in allowed:
            problems.add(f"a non-LayerNorm norm {type(module).__name__}", name)
        elif tuple(module.normalized_shape) != (width,):
            problems.add(f"a LayerNorm over {tuple(module.normalized_shape)}", name)
        elif module.weight is None or module.bias is None:
            problems.add("a LayerNorm without affine weight and bias", name)
    eps = {float(module.eps) for _, module in norms if hasattr(module, "eps")}
    if len(eps) > 1:
        problems.add(f"LayerNorms with different eps {sorted(eps)}")
    return eps


# ---- timm -----------------------------------------------------------------------------------


def _timm_config(model: nn.Module) -> ViTConfig:
    """The ViTConfig of a timm VisionTransformer, after refusing what our ViT lacks."""
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
    if getattr(model, "dynamic_img_size", False):
        problems.add("dynamic image size (dynamic_img_size=True)")
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
    if not isinstance(head, nn.Linear):
        classes = getattr(model, "num_classes", "?")
        problems.add(f"a head of {classes} classes (head is {type(head).__name__}, not Linear)")
    elif head.bias is None:
        problems.add("a head without bias")

    pe = model.patch_embed
    if getattr(pe, "dynamic_img_pad", False):
        problems.add("dynamic image padding (dynamic_img_pad=True)")
    if not identity(getattr(pe, "norm", None)):
        problems.add("a norm in the patch embedding (embed_norm_layer)")
    proj = getattr(pe, "proj", None)
    image_size = patch_size = None
    if not isinstance(proj, nn.Conv2d):
        problems.add(f"a patch embedding that is not one Conv2d ({type(pe).__name__})")
    else:
        if proj.bias is None:
            problems.add("a patch embedding without bias (pre_norm=True)")
        if getattr(pe, "img_size", None) is None:
            problems.add("no fixed image size (img_size=None)")
        else:
            image_size = _square(pe.img_size, "images", problems)
        patch_size = _square(proj.kernel_size, "patches", problems)
        if (
            tuple(proj.stride) != tuple(proj.kernel_size)
            or any(proj.padding)
            or proj.groups != 1
            or any(d != 1 for d in proj.dilation)
        ):
            problems.add("a patch embedding whose Conv2d is not kernel = stride, no padding")
        if image_size and patch_size and image_size % patch_size:
            problems.add(f"image size {image_size} not a multiple of patch size {patch_size}")

    width = int(model.embed_dim)
    norm_types = tuple(t for t in (nn.LayerNorm, getattr(vt, "LayerNorm", None)) if t)
    norms: list[tuple[str, nn.Module]] = [("norm", model.norm)] if not identity(model.norm) else []
    block_types = tuple(t for t in (getattr(vt, "Block", None),) if t)
    attention_types = tuple(t for t in (getattr(vt, "Attention", None),) if t)
    mlp_types = tuple(t for t in (getattr(vt, "Mlp", None),) if t)
    timm_gelu = _import("timm.layers.activations", "timm").GELU
    blocks = list(model.blocks)
    if not blocks:
        problems.add("a model without blocks (depth=0)")
    for i, b in enumerate(blocks):
        n = f"blocks.{i}"
        if type(b) not in block_types:
            problems.add(f"a block other than timm's pre-norm Block: {type(b).__name__}", n)
            continue
        if not identity(getattr(b, "ls1", None)) or not identity(getattr(b, "ls2", None)):
            problems.add("layer scale (init_values set)", f"{n}.ls1/ls2")
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
    if model.pos_embed is not None and image_size and patch_size and not problems:
        tokens = (image_size // patch_size) ** 2 + 1
        if model.pos_embed.shape[1] != tokens:
            problems.add(f"a pos_embed of {model.pos_embed.shape[1]} positions for {tokens} tokens")
    problems.refuse("timm VisionTransformer")

    return ViTConfig(
        image_size=int(image_size),
        patch_size=int(patch_size),
        in_chans=int(proj.in_channels),
        num_classes=int(head.out_features),
        width=width,
        depth=len(blocks),
        heads=int(blocks[0].attn.num_heads),
        mlp=int(blocks[0].mlp.fc1.out_features),
        eps=eps.pop(),
    )


def from_timm(model: nn.Module, *, verify: bool = True, rtol: float | None = None) -> ViT:
    """Converts a timm ``VisionTransformer`` into our :class:`ViT` (same device and dtype).

    The configuration comes from the model (image and patch size, channels, ``embed_dim``,
    depth, heads, MLP width ``fc1.out_features``, classes, LayerNorm eps), and the weights are
    copied by name (timm's names are ours). Anything our ViT does not compute identically is
    refused with a ``ValueError`` naming it: no class token, register tokens, ``global_pool``
    other than ``'token'``, qkv without bias, layer scale, q/k norm, ``norm_pre`` or ``fc_norm``,
    a non-GELU (or tanh GELU) activation, non-LayerNorm norms, a head of 0 classes, non-square
    images, dynamic image size, ``no_embed_class``...

    Args:
        model: an instantiated ``timm.models.vision_transformer.VisionTransformer``.
        verify: check that the copy gives the same logits as ``model`` on a random batch (in eval
            mode; ``model``'s mode is restored) and raise ``ValueError`` if not.
        rtol: tolerance of that check, relative to the largest logit (default 1e-5 in float32).

    Returns:
        The converted ViT, in eval mode.
    """
    vt = _import("timm.models.vision_transformer", "timm")
    if not isinstance(model, vt.VisionTransformer):
        raise TypeError(
            f"from_timm needs a timm VisionTransformer, got {type(model).__module__}."
            f"{type(model).__name__}"
        )
    config = _timm_config(model)
    p = next(model.parameters())
    state = {k: v.detach() for k, v in model.state_dict().items()}
    vit = _build(config, state, "timm model does not match our ViT", p.device, p.dtype)
    if verify:
        _verify(vit, model, model, rtol, "timm model")
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
        verify, rtol: as in :func:`from_timm`.
        **kwargs: passed to ``timm.create_model`` (``num_classes``, ``img_size``, ``in_chans``...).

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
    return from_timm(model, verify=verify, rtol=rtol)


# ---- Hugging Face -----------------------------------------------------------------------------


def _hf_layers(vit_model: nn.Module) -> list[nn.Module]:
    layers = getattr(vit_model, "layers", None)  # transformers >= 5
    if layers is None:
        layers = vit_model.encoder.layer  # transformers 4
    return list(layers)


def _hf_layer_modules(layer: nn.Module) -> dict[str, nn.Module]:
    """A ViTLayer's modules by role, in either transformers 4's or 5's layout."""
    att = layer.attention
    if hasattr(att, "q_proj"):  # transformers >= 5
        q, k, v, o = att.q_proj, att.k_proj, att.v_proj, att.o_proj
        fc1, act, fc2 = layer.mlp.fc1, layer.mlp.activation_fn, layer.mlp.fc2
    else:  # transformers 4: attention.attention.{query,key,value}, attention.output.dense
        q, k, v = att.attention.query, att.attention.key, att.attention.value
        o = att.output.dense
        fc1, act = layer.intermediate.dense, layer.intermediate.intermediate_act_fn
        fc2 = layer.output.dense
    return {
        "norm1": layer.layernorm_before,
        "q": q,
        "k": k,
        "v": v,
        "proj": o,
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
    width = int(cfg.hidden_size)
    heads = int(cfg.num_attention_heads)
    head_dim = getattr(cfg, "head_dim", None)
    if head_dim is not None and int(head_dim) * heads != width:
        problems.add(f"head_dim {head_dim} x {heads} heads != hidden_size {width}")
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
    folder = _existing(path, "Hugging Face model folder")
    if not (folder / "config.json").is_file():
        raise ValueError(f"{str(folder)!r} is not a Hugging Face model folder (no config.json)")
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


# ---- our format --------------------------------------------------------------------------------


def save(vit: ViT, path: PathLike) -> None:
    """Writes ``vit`` as a ``.safetensors`` file with its config in the metadata.

    Only a plain :class:`ViT` (a teacher) is saved; a subclass such as the student carries more
    than the teacher format holds.
    """
    from safetensors.torch import save_file

    if type(vit) is not ViT:
        raise TypeError(f"save writes a plain blindfed ViT, got {type(vit).__name__}")
    state = {k: v.detach().to("cpu").contiguous() for k, v in vit.state_dict().items()}
    metadata = {"format": "pt", CONFIG_KEY: json.dumps(vit.config.to_dict(), sort_keys=True)}
    save_file(state, str(path), metadata=metadata)


def _metadata(path: Path) -> dict[str, str] | None:
    """A safetensors file's metadata ({} when it has none), or None if it is not safetensors."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except Exception:
        return None


def _parse_config(text: str, path: Path) -> ViTConfig:
    try:
        d = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{str(path)!r}: malformed {CONFIG_KEY} metadata: {e}") from e
    if not isinstance(d, dict):
        raise ValueError(f"{str(path)!r}: malformed {CONFIG_KEY} metadata: not a JSON object")
    missing = [f for f in _CONFIG_FIELDS if f not in d]
    unknown = [f for f in d if f not in _CONFIG_FIELDS]
    wrong = [
        f for f in _INT_FIELDS if f in d and (isinstance(d[f], bool) or not isinstance(d[f], int))
    ]
    if "eps" in d and (
        isinstance(d["eps"], bool)
        or not isinstance(d["eps"], int | float)
        or not math.isfinite(d["eps"])
        or d["eps"] <= 0
    ):
        wrong.append("eps")
    if missing or unknown or wrong:
        raise ValueError(
            f"{str(path)!r}: malformed {CONFIG_KEY} metadata: missing {missing}, unknown "
            f"{unknown}, wrongly typed {wrong}"
        )
    try:
        return ViTConfig.from_dict(d)
    except ValueError as e:
        raise ValueError(f"{str(path)!r}: malformed {CONFIG_KEY} metadata: {e}") from e


def load(path: PathLike, *, device: str | torch.device = "cpu") -> ViT:
    """Reads a file written by :func:`save` (float32, in eval mode).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file is not safetensors, lacks our metadata (not ours), has malformed
            metadata, or its tensors do not match the config.
    """
    from safetensors.torch import load_file

    p = _existing(path, "teacher file")
    metadata = _metadata(p) if p.is_file() else None
    if metadata is None:
        raise ValueError(f"{str(p)!r} is not a safetensors file")
    if CONFIG_KEY not in metadata:
        raise ValueError(
            f"{str(p)!r} is not a blindfed teacher file (no {CONFIG_KEY!r} metadata); for timm "
            "or Hugging Face weights use load_timm / load_huggingface / load_teacher"
        )
    config = _parse_config(metadata[CONFIG_KEY], p)
    state = load_file(str(p), device=str(device))
    return _build(config, state, f"{str(p)!r} does not match its config", device)


# ---- dispatch ---------------------------------------------------------------------------------


def _read_json(path: Path) -> dict[str, Any]:
    try:
        d = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"cannot read {str(path)!r} as JSON: {e}") from e
    if not isinstance(d, dict):
        raise ValueError(f"{str(path)!r} is not a JSON object")
    return d


def _load_timm_folder(folder: Path, config: dict[str, Any], kwargs: dict[str, Any]) -> ViT:
    """A timm hub-style folder: config.json with 'architecture' and model.safetensors/.bin."""
    weights = next(
        (folder / n for n in ("model.safetensors", "pytorch_model.bin") if (folder / n).is_file()),
        None,
    )
    if weights is None:
        raise ValueError(
            f"timm folder {str(folder)!r} has no model.safetensors or pytorch_model.bin"
        )
    args: dict[str, Any] = dict(config.get("model_args") or {})
    if "num_classes" in config:
        args["num_classes"] = config["num_classes"]
    args.update(kwargs)
    name = args.pop("model_name", config["architecture"])
    return load_timm(name, checkpoint=weights, **args)


def load_teacher(source: PathLike | nn.Module, **kwargs: Any) -> ViT:
    """Loads a teacher from whatever ``source`` is, into our :class:`ViT`.

    - a folder with a ``config.json`` of ``model_type`` ``'vit'``: :func:`load_huggingface`;
    - a folder with a timm ``config.json`` (``architecture``, as timm's ``save_for_hf`` writes)
      and ``model.safetensors`` or ``pytorch_model.bin``: :func:`load_timm` (its
      ``num_classes`` and ``model_args`` passed to ``timm.create_model``, ``kwargs`` on top);
    - a ``.safetensors`` file with our metadata: :func:`load`;
    - any other weights file, given ``model_name=`` (a timm name):
      ``load_timm(model_name, checkpoint=source, **other_kwargs)``;
    - a model object: our ViT is returned as is, a timm model goes through :func:`from_timm`,
      a Hugging Face one through :func:`from_huggingface`.

    Raises:
        FileNotFoundError: ``source`` is a path that does not exist.
        ValueError: ``source`` is none of the above (the message says what it is and what to
            pass), or the model found does not convert.
        TypeError: keyword arguments that the source cannot use.
    """
    if isinstance(source, nn.Module):
        if kwargs:
            raise TypeError(f"unexpected keyword arguments with a model: {sorted(kwargs)}")
        module = type(source).__module__
        if isinstance(source, ViT) and type(source) is ViT:
            return source
        if module.startswith("timm."):
            return from_timm(source)
        if module.startswith("transformers."):
            return from_huggingface(source)
        raise TypeError(f"cannot load a teacher from a {module}.{type(source).__name__}")

    path = _existing(source, "teacher source")
    if path.is_dir():
        config_file = path / "config.json"
        if not config_file.is_file():
            raise ValueError(
                f"folder {str(path)!r} has no config.json: not a Hugging Face or timm model folder"
            )
        config = _read_json(config_file)
        model_type = config.get("model_type")
        if model_type == "vit":
            if kwargs:
                raise TypeError(
                    f"unexpected keyword arguments for a Hugging Face folder: {sorted(kwargs)}"
                )
            return load_huggingface(path)
        if model_type is not None:
            raise ValueError(
                f"folder {str(path)!r} holds a Hugging Face {model_type!r} model; only 'vit' "
                "(ViTForImageClassification) converts"
            )
        if "architecture" in config:
            return _load_timm_folder(path, config, dict(kwargs))
        raise ValueError(
            f"folder {str(path)!r}: config.json has neither model_type (Hugging Face) nor "
            "architecture (timm)"
        )

    metadata = _metadata(path) if path.suffix.lower() == ".safetensors" else None
    if metadata is not None and CONFIG_KEY in metadata:
        if kwargs:
            raise TypeError(
                f"{str(path)!r} is a blindfed teacher file, which takes no keyword arguments "
                f"(got {sorted(kwargs)})"
            )
        return load(path)
    if "model_name" in kwargs:
        rest = dict(kwargs)
        return load_timm(rest.pop("model_name"), checkpoint=path, **rest)
    what = (
        "not a valid safetensors file"
        if path.suffix.lower() == ".safetensors" and metadata is None
        else f"not a blindfed teacher file (no {CONFIG_KEY!r} metadata)"
    )
    raise ValueError(
        f"{str(path)!r} is {what}; for a timm checkpoint pass model_name= (a timm model name), "
        "for Hugging Face pass the save_pretrained folder"
    )
