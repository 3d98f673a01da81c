"""What every teacher converter shares: reading files, building our ViT from a state dict,
checking that it computes what the source model computes, and naming what it cannot."""

from __future__ import annotations

import importlib
import json
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from blindfed.nn.vit import ViT, ViTConfig

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


def _read_json(path: Path) -> dict[str, Any]:
    """A JSON object from ``path``; ValueError naming the file if it is not one."""
    try:
        d = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"cannot read {str(path)!r} as JSON: {e}") from e
    if not isinstance(d, dict):
        raise ValueError(f"{str(path)!r} is not a JSON object")
    return d


def _model_folder(path: PathLike) -> tuple[Path, dict[str, Any]]:
    """A Hugging Face or timm model folder and its ``config.json``: FileNotFoundError if the
    folder does not exist, ValueError if it has no readable config.json."""
    folder = _existing(path, "model folder")
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise ValueError(
            f"{str(folder)!r} is not a Hugging Face or timm model folder (no config.json)"
        )
    return folder, _read_json(config_file)


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


def _scale_rows(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """A linear layer's weight or bias with output row ``j`` multiplied by ``scale[j]``: how a
    layer scale (``scale * linear(h)``) folds into the layer before it. Computed in float64 so
    that the fold rounds once, to ``x``'s dtype."""
    s = scale.detach().double().reshape(-1, *([1] * (x.ndim - 1)))
    return (x.detach().double() * s).to(x.dtype)


def _final_norm_tokens(vit: ViT) -> Callable[[torch.Tensor], torch.Tensor]:
    """``vit``'s every token after the final norm: what a source backbone without classifier
    outputs, and so what :func:`_verify` compares for one (its ``ours``)."""
    return lambda images: vit.norm(vit.features(images).hidden[-1])


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
    *,
    ours: Callable[[torch.Tensor], torch.Tensor] | None = None,
    output: str = "logits",
) -> None:
    """Checks ``ours`` (default: ``vit`` itself) gives ``reference``'s ``output`` on a random
    batch (both in eval mode)."""
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
    got = (ours or vit)(images)
    if got.shape != expected.shape:
        raise ValueError(
            f"{what}: the converted ViT gives {output} shaped {tuple(got.shape)}, "
            f"the source {tuple(expected.shape)}"
        )
    expected, got = expected.double(), got.double()
    if not bool(torch.isfinite(expected).all()):
        raise ValueError(f"{what}: the source model gives non-finite {output} on a random input")
    rtol = _default_rtol(p.dtype) if rtol is None else rtol
    scale = max(float(expected.abs().max()), 1e-30)
    error = float((got - expected).abs().max()) / scale
    if not error <= rtol:  # also catches NaN
        raise ValueError(
            f"{what}: the converted ViT does not reproduce the source model's {output} "
            f"(max error {error:.3g} relative to their largest value, tolerance {rtol:.3g}); "
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


def _width_and_heads(cfg: Any, problems: _Problems) -> tuple[int, int]:
    """A Hugging Face config's width and heads; a ``head_dim`` that does not split the width
    is a problem."""
    width = int(cfg.hidden_size)
    heads = int(cfg.num_attention_heads)
    head_dim = getattr(cfg, "head_dim", None)
    if head_dim is not None and int(head_dim) * heads != width:
        problems.add(f"head_dim {head_dim} x {heads} heads != hidden_size {width}")
    return width, heads


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
