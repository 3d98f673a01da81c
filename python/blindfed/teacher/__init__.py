"""Loading real teachers (timm and Hugging Face ViTs on disk) into :class:`blindfed.nn.vit.ViT`.

Every converter copies the weights into our pre-LayerNorm ViT, then checks that it gives the
same logits (for DINOv2, whose classifier does not fold, the same final tokens) as the source
model on a random input, and refuses, with a ``ValueError`` naming the feature, any model that
computes something our ViT does not (register tokens, average pooling, a tanh GELU, layer scale
outside DINOv2, where it folds into the weights...). Our own format is a ``.safetensors`` file
holding the state dict and the :class:`~blindfed.nn.vit.ViTConfig` as JSON in its metadata
(key ``"blindfed.vit_config"``).

timm and transformers are optional (``pip install blindfed[teachers]``); they are imported only
by the functions that need them. Nothing here downloads anything: checkpoints must be on disk.

Usage (not run here)::

    from blindfed import teacher

    vit = teacher.load_timm("vit_base_patch16_224", "vit_base.safetensors")  # timm weights
    vit = teacher.load_huggingface("path/to/vit-base-patch16-224")  # a save_pretrained folder
    vit = teacher.load_dinov2("path/to/dinov2-small", image_size=112)  # backbone, positions resized
    vit = teacher.load_dinov2_onnx("vit_s_focus.onnx", image_size=224)  # DINOv2 in an ONNX graph
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

from pathlib import Path
from typing import Any

from torch import nn

from blindfed.nn.vit import ViT
from blindfed.teacher.checkpoint import CONFIG_KEY, _metadata, load, save
from blindfed.teacher.convert import PathLike, _existing, _model_folder
from blindfed.teacher.dinov2 import from_dinov2, load_dinov2
from blindfed.teacher.huggingface_vit import from_huggingface, load_huggingface
from blindfed.teacher.onnx_dinov2 import load_dinov2_onnx
from blindfed.teacher.timm_vit import from_timm, load_timm

__all__ = [
    "CONFIG_KEY",
    "from_dinov2",
    "from_huggingface",
    "from_timm",
    "load",
    "load_dinov2",
    "load_dinov2_onnx",
    "load_huggingface",
    "load_teacher",
    "load_timm",
    "save",
]

# ---- dispatch ---------------------------------------------------------------------------------


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
      of ``model_type`` ``'dinov2'``: :func:`load_dinov2` (``kwargs`` passed on);
    - a folder with a timm ``config.json`` (``architecture``, as timm's ``save_for_hf`` writes)
      and ``model.safetensors`` or ``pytorch_model.bin``: :func:`load_timm` (its
      ``num_classes`` and ``model_args`` passed to ``timm.create_model``, ``kwargs`` on top);
    - a ``.safetensors`` file with our metadata: :func:`load`;
    - any other weights file, given ``model_name=`` (a timm name):
      ``load_timm(model_name, checkpoint=source, **other_kwargs)``;
    - a model object: our ViT is returned as is, a timm model goes through :func:`from_timm`,
      a Hugging Face DINOv2 through :func:`from_dinov2`, another Hugging Face one through
      :func:`from_huggingface`.

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
        if module.startswith("transformers.models.dinov2"):
            return from_dinov2(source)
        if module.startswith("transformers."):
            return from_huggingface(source)
        raise TypeError(f"cannot load a teacher from a {module}.{type(source).__name__}")

    path = _existing(source, "teacher source")
    if path.is_dir():
        _, config = _model_folder(path)
        model_type = config.get("model_type")
        if model_type == "vit":
            if kwargs:
                raise TypeError(
                    f"unexpected keyword arguments for a Hugging Face folder: {sorted(kwargs)}"
                )
            return load_huggingface(path)
        if model_type == "dinov2":
            return load_dinov2(path, **kwargs)
        if model_type is not None:
            raise ValueError(
                f"folder {str(path)!r} holds a Hugging Face {model_type!r} model; only 'vit' "
                "(ViTForImageClassification) and 'dinov2' convert"
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
