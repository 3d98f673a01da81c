"""Our teacher format: a ``.safetensors`` file with the state dict and the
:class:`~blindfed.nn.vit.ViTConfig` as JSON in its metadata."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from blindfed.nn.vit import ViT, ViTConfig
from blindfed.teacher.convert import PathLike, _build, _existing

#: The safetensors metadata key holding the ViTConfig JSON in our files.
CONFIG_KEY = "blindfed.vit_config"

_CONFIG_FIELDS = tuple(ViTConfig.__dataclass_fields__)
_INT_FIELDS = tuple(f for f in _CONFIG_FIELDS if f != "eps")

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
