"""Plaintext, centralised baselines for the adaptation report (NOT double-blind).

BlindFed's tables (Tastan & Nandakumar, ICCV 2025) compare the double-blind adaptation with
what one party holding both the model and all the data in the clear could do. This module runs
those comparisons on the same frozen teacher (the zoo's ``mnist_vit`` by default) and the same
data (in the demo: the union of the owners' training digits, scored on the test digits):

- ``teacher_zero_shot``, ``student_zero_shot``: no training; the models' own MNIST heads on the
  test images (the digits are 0-9 like MNIST, so this is a meaningful floor).
- ``linear_probe``: the teacher frozen; a new linear head on its final-norm tokens, read out as
  :class:`BaselineConfig`'s ``probe_readout`` says (the class token, the input of
  :meth:`blindfed.nn.vit.ViT.head_logits`' ``head``; the mean of the patch tokens; or both;
  :data:`blindfed.nn.adapter.READOUTS`).
- ``student_head``: the same on the frozen FHE-friendly student (its torch forward path, the
  polynomial approximations in eval mode): "the student without adapters".
- ``lora``: LoRA (Hu et al. 2021) of rank ``r`` on the attention ``qkv`` and ``proj`` linears
  of every block of a copy of the teacher (``alpha = r``, so scale 1; ``B`` starts at zero),
  plus a new head; only the LoRA factors and the head train.
- ``full_finetune``: every weight of a copy of the teacher plus a new head train.

The models passed in are never modified: the frozen methods only read them (eval mode and
no gradients for the duration, every module's mode restored after), the trained ones work on a
copy. Training is AdamW on the cross-entropy, one shuffled pass per epoch with a seeded
:class:`torch.Generator`; new weights are drawn under ``torch.manual_seed(seed)`` inside
:func:`torch.random.fork_rng` (LoRA's ``A`` from a seeded generator), so a run is reproducible
and leaves the caller's global RNG as it was. The probes (``linear_probe``, ``student_head``)
compute the frozen features once and train the head on them, so their epochs cost next to
nothing.

Why AdamW and these defaults (:class:`BaselineConfig`): AdamW brings every trained method to
sensible accuracy within a few epochs at the usual rates, where SGD needs a momentum and a
tuned rate per method. The learning rates were chosen on a validation split, never the test
split (``blindfed tune``: 20 % of each owner's training digits held out, 3 owners,
Dirichlet(1); accuracy on the 288 held-out digits): full fine-tuning ``lr`` from (3e-4, 1e-3,
3e-3): 99.0, 99.3, 99.0 %; LoRA ``lora_lr`` from (1e-3, 3e-3, 1e-2): 98.6, 99.3, 98.3 %; the
probes' head ``head_lr`` from (3e-3, 1e-2, 3e-2), mean of the two probes: 95.7, 96.2, 96.9 %;
then their ``probe_readout`` at that rate (docs/federation.md has the figures).
The probes' lone head trains on fixed features for 50 epochs (at its plateau).

>>> from blindfed.experiments.baselines import METHODS, BaselineConfig
>>> BaselineConfig().epochs >= 1 and "lora" in METHODS
True
>>> BaselineConfig(epochs=0)
Traceback (most recent call last):
...
ValueError: epochs must be >= 1, got 0
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from blindfed.nn.adapter import check_readout, read_out, readout_width
from blindfed.nn.lora import add_lora
from blindfed.nn.student import Student
from blindfed.nn.vit import ViT

__all__ = [
    "METHODS",
    "PAPER_CIFAR10",
    "SETTING",
    "BaselineConfig",
    "run_baselines",
]

#: Every baseline, in the order :func:`run_baselines` runs them by default.
METHODS: tuple[str, ...] = (
    "teacher_zero_shot",
    "student_zero_shot",
    "linear_probe",
    "student_head",
    "lora",
    "full_finetune",
)

#: What every baseline is, as opposed to BlindFed itself (stored in each result).
SETTING = "plaintext, centralised, not double-blind"

#: The paper's centralised CIFAR-10 top-1 accuracies in percent (ViT-B/16 foundation model;
#: Tastan & Nandakumar, ICCV 2025): BlindFed's double-blind adaptation next to LoRA, full
#: fine-tuning and linear probing in the clear. For the report's "paper" column only: a
#: different model and data set from the digits demo, so compare the gaps, not the figures.
PAPER_CIFAR10: dict[str, float] = {
    "blindfed": 94.28,
    "lora": 95.92,
    "full_finetune": 96.35,
    "linear_probe": 92.26,
}

_TRAINED = ("linear_probe", "student_head", "lora", "full_finetune")


@dataclass(frozen=True)
class BaselineConfig:
    """Training hyper-parameters shared by the trained baselines.

    ``epochs`` and ``lr`` (AdamW) are for LoRA and full fine-tuning, which run the model every
    step; ``probe_epochs`` and ``head_lr`` for the probes (``linear_probe``, ``student_head``),
    whose new head trains on features computed once, so that they are trained to their plateau
    at little cost, and ``probe_readout`` is how their head reads the final-norm tokens (the
    same choice BlindFed's head has; LoRA and full fine-tuning keep the model's own class-token
    head). ``lora_rank`` is ``r`` (``alpha = r``). ``threads``: torch's intra-op
    threads while :func:`run_baselines` runs (restored after; ``None`` leaves them alone). The
    default is one: on these small matrices the threads' synchronisation costs more than they
    gain, by far when the other cores are busy (two epochs of full fine-tuning on the 1,438
    digits: 1.0 s on one thread, 9-29 s on two while another job ran).
    """

    epochs: int = 30
    batch_size: int = 64
    lr: float = 1e-3
    lora_lr: float = 3e-3
    head_lr: float = 3e-2
    probe_epochs: int = 50
    probe_readout: str = "cls+mean"
    weight_decay: float = 1e-4
    lora_rank: int = 8
    seed: int = 0
    threads: int | None = 1

    def __post_init__(self) -> None:
        if self.threads is not None and (
            isinstance(self.threads, bool) or not isinstance(self.threads, int) or self.threads < 1
        ):
            raise ValueError(f"threads must be >= 1 or None, got {self.threads!r}")
        for name in ("epochs", "probe_epochs", "batch_size", "lora_rank"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be >= 1, got {value!r}")
        for name in ("lr", "lora_lr", "head_lr"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive number, got {value!r}")
        check_readout(self.probe_readout, "probe_readout")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay!r}")


# ---- inputs -------------------------------------------------------------------------------------


def _images(name: str, images: Any, model: ViT, device: torch.device) -> torch.Tensor:
    x = torch.as_tensor(np.asarray(images) if not torch.is_tensor(images) else images)
    c = model.config
    expected = (c.in_chans, c.image_size, c.image_size)
    if x.ndim != 4 or tuple(x.shape[1:]) != expected:
        raise ValueError(
            f"{name} must be shaped (n, {', '.join(map(str, expected))}), got {tuple(x.shape)}"
        )
    if not (x.is_floating_point() or x.dtype in (torch.uint8, torch.int16, torch.int32)):
        raise ValueError(f"{name} must be real numbers, got dtype {x.dtype}")
    x = x.to(device=device, dtype=next(model.parameters()).dtype)
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contain NaN or infinite values")
    return x


def _labels(name: str, labels: Any, n: int, classes: int, device: torch.device) -> torch.Tensor:
    y = torch.as_tensor(np.asarray(labels) if not torch.is_tensor(labels) else labels)
    if y.ndim != 1 or len(y) != n:
        raise ValueError(f"{name} must be shaped ({n},) like the images, got {tuple(y.shape)}")
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise ValueError(f"{name} must be integers, got dtype {y.dtype}")
    if n and (int(y.min()) < 0 or int(y.max()) >= classes):
        raise ValueError(
            f"{name} must lie in [0, {classes}), got values in [{int(y.min())}, {int(y.max())}]"
        )
    return y.to(device=device, dtype=torch.long)


def _methods(methods: Iterable[str]) -> tuple[str, ...]:
    if isinstance(methods, str):
        methods = (methods,)
    chosen = tuple(methods)
    unknown = [m for m in chosen if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown methods {unknown}; available: {', '.join(METHODS)}")
    if not chosen:
        raise ValueError(f"no methods given; available: {', '.join(METHODS)}")
    if len(set(chosen)) != len(chosen):
        raise ValueError(f"methods repeated: {list(chosen)}")
    return chosen


# ---- training and scoring -----------------------------------------------------------------------


def _new_head(model: ViT, seed: int, readout: str = "cls") -> nn.Linear:
    """A fresh ``nn.Linear`` like ``model.head`` (reading ``readout``'s features), drawn under
    ``seed`` on the model's device."""
    old = model.head
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        inputs = readout_width(old.in_features, readout)
        head = nn.Linear(inputs, old.out_features, dtype=old.weight.dtype)
    return head.to(old.weight.device)


def _copy(model: ViT) -> ViT:
    """An independent copy (a student's approximations are core objects that do not deepcopy:
    it is rebuilt from its description and a copy of its state)."""
    if isinstance(model, Student):
        state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        device = next(model.parameters()).device
        return Student.rebuild(model.describe(), state).to(device).train(model.training)
    return copy.deepcopy(model)


@contextmanager
def _evaluating(model: nn.Module) -> Iterator[None]:
    """Eval mode and no gradients for the duration; every module's mode is restored after."""
    modes = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        with torch.no_grad():
            yield
    finally:
        for m, mode in modes:
            m.training = mode


def _head_inputs(
    model: ViT, images: torch.Tensor, readout: str = "cls", batch: int = 256
) -> torch.Tensor:
    """The model's final-norm tokens in its own forward pass, read out by ``readout`` (with
    ``"cls"``: what ``model.head`` receives). Read with a hook, so the forward path runs
    unchanged."""
    seen: list[torch.Tensor] = []
    hook = model.norm.register_forward_hook(
        lambda _, __, out: seen.append(read_out(out.detach(), readout))
    )
    try:
        with _evaluating(model):
            for i in range(0, len(images), batch):
                model(images[i : i + batch])
    finally:
        hook.remove()
    width = readout_width(model.head.in_features, readout)
    return torch.cat(seen) if seen else images.new_zeros(0, width)


@torch.no_grad()
def _accuracy(
    forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, y: torch.Tensor
) -> float:
    if len(y) == 0:
        return float("nan")
    correct = sum(
        int((forward(x[i : i + 256]).argmax(-1) == y[i : i + 256]).sum())
        for i in range(0, len(y), 256)
    )
    return 100.0 * correct / len(y)


def _fit(
    module: nn.Module,
    forward: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    config: BaselineConfig,
    lr: float,
    epochs: int,
) -> int:
    """AdamW on ``module``'s trainable parameters; returns how many scalars trained."""
    params = [p for p in module.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=config.weight_decay)
    gen = torch.Generator().manual_seed(config.seed)
    module.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(y), generator=gen).split(config.batch_size):
            idx = idx.to(y.device)
            loss = nn.functional.cross_entropy(forward(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    module.eval()
    return sum(p.numel() for p in params)


def _probe(
    model: ViT,
    x: torch.Tensor,
    y: torch.Tensor,
    xt: torch.Tensor,
    yt: torch.Tensor,
    cfg: BaselineConfig,
) -> tuple[float, int]:
    """A new head on the frozen ``model``'s final features (computed once; ``model`` is only
    read)."""
    readout = cfg.probe_readout
    features, test_features = _head_inputs(model, x, readout), _head_inputs(model, xt, readout)
    head = _new_head(model, cfg.seed, readout)
    count = _fit(head, head, features, y, cfg, cfg.head_lr, cfg.probe_epochs)
    return _accuracy(head, test_features, yt), count


def _finetune(
    model: ViT,
    x: torch.Tensor,
    y: torch.Tensor,
    xt: torch.Tensor,
    yt: torch.Tensor,
    cfg: BaselineConfig,
    lr: float,
) -> tuple[float, int]:
    """Trains ``model``'s trainable parameters and a new head end to end."""
    model.head = _new_head(model, cfg.seed)
    count = _fit(model, model, x, y, cfg, lr, cfg.epochs)
    return _accuracy(model, xt, yt), count


def _label(method: str, config: BaselineConfig) -> str:
    return {
        "teacher_zero_shot": "Teacher zero-shot (its own MNIST head)",
        "student_zero_shot": "Student zero-shot (its own MNIST head)",
        "linear_probe": f"Linear probe on the frozen teacher (readout {config.probe_readout})",
        "student_head": "New head on the frozen student (no adapters, readout "
        f"{config.probe_readout})",
        "lora": f"LoRA (rank {config.lora_rank}) on the teacher",
        "full_finetune": "Full fine-tuning of the teacher",
    }[method]


def run_baselines(
    train_images: Any,
    train_labels: Any,
    test_images: Any,
    test_labels: Any,
    *,
    teacher: ViT | None = None,
    student: ViT | None = None,
    methods: Sequence[str] = METHODS,
    config: BaselineConfig | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, dict[str, Any]]:
    """Runs the plaintext, centralised baselines; returns one entry per method, in order.

    Args:
        train_images, test_images: (n, channels, height, width) arrays or tensors in the
            teacher's layout (digits: ``blindfed.data.digits_for_mnist_model``), any real
            dtype; they are moved to the teacher's device and dtype.
        train_labels, test_labels: (n,) integers in [0, classes) (the teacher's head size).
        teacher: the foundation model (a :class:`blindfed.nn.vit.ViT`); default the zoo's
            ``mnist_vit``.
        student: its FHE-friendly student, for ``student_zero_shot`` and ``student_head``;
            default :func:`blindfed.zoo.load_student` (loaded only if one of those runs).
        methods: a subset of :data:`METHODS`.
        config: epochs, learning rates, LoRA rank, seed (:class:`BaselineConfig`).
        progress: called with one line per method when it finishes.

    Returns:
        ``{method: {"accuracy": percent on the test images, "trainable_parameters": int,
        "seconds": float, "label": a short human label, "setting": SETTING}}``.

    Raises:
        ValueError: unknown or repeated methods, images not shaped for the model or not finite,
            labels not integers in range or not one per image, no test images, no training
            images for a trained method, a student whose architecture is not the teacher's.
        TypeError: a teacher or student that is not a ViT, a config not a BaselineConfig.

    Example (a few seconds on two cores)::

        from blindfed.experiments.baselines import BaselineConfig, run_baselines
        from blindfed.data import digits_for_mnist_model

        train, test = digits_for_mnist_model("train"), digits_for_mnist_model("test")
        results = run_baselines(train.images, train.labels, test.images, test.labels,
                                methods=("linear_probe", "lora"), config=BaselineConfig(epochs=3))
        results["lora"]["accuracy"]  # percent
    """
    from blindfed import zoo

    config = config or BaselineConfig()
    if not isinstance(config, BaselineConfig):
        raise TypeError(f"config must be a BaselineConfig, got {type(config).__name__}")
    chosen = _methods(methods)
    say = progress or (lambda _: None)
    teacher = zoo.load("mnist_vit") if teacher is None else teacher
    if not isinstance(teacher, ViT):
        raise TypeError(f"teacher must be a blindfed.nn.vit.ViT, got {type(teacher).__name__}")
    needs_student = {"student_zero_shot", "student_head"} & set(chosen)
    if needs_student:
        student = zoo.load_student() if student is None else student
        if not isinstance(student, ViT):
            raise TypeError(f"student must be a blindfed.nn.vit.ViT, got {type(student).__name__}")
        if student.config != teacher.config:
            raise ValueError(
                f"student config {student.config} differs from the teacher's {teacher.config}"
            )
    device = next(teacher.parameters()).device
    classes = teacher.head.out_features
    x = _images("train_images", train_images, teacher, device)
    y = _labels("train_labels", train_labels, len(x), classes, device)
    xt = _images("test_images", test_images, teacher, device)
    yt = _labels("test_labels", test_labels, len(xt), classes, device)
    if len(xt) == 0:
        raise ValueError("test_images is empty")
    if len(x) == 0 and set(chosen) & set(_TRAINED):
        raise ValueError(f"train_images is empty, but {sorted(set(chosen) & set(_TRAINED))} train")

    previous_threads = torch.get_num_threads()
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    try:
        return _run(chosen, teacher, student, x, y, xt, yt, config, say)
    finally:
        torch.set_num_threads(previous_threads)


def _run(
    chosen: tuple[str, ...],
    teacher: ViT,
    student: ViT | None,
    x: torch.Tensor,
    y: torch.Tensor,
    xt: torch.Tensor,
    yt: torch.Tensor,
    config: BaselineConfig,
    say: Callable[[str], None],
) -> dict[str, dict[str, Any]]:
    results: dict[str, dict[str, Any]] = {}
    for method in chosen:
        t0 = time.perf_counter()
        base = student if method.startswith("student") else teacher
        assert base is not None
        # The student may live on another device or in another dtype than the teacher.
        p = next(base.parameters())
        data = (
            x.to(p.device, p.dtype),
            y.to(p.device),
            xt.to(p.device, p.dtype),
            yt.to(p.device),
        )
        if method.endswith("zero_shot"):
            with _evaluating(base):
                acc, count = _accuracy(base, data[2], data[3]), 0
        elif method in ("linear_probe", "student_head"):
            acc, count = _probe(base, *data, config)
        else:
            model = _copy(base)  # trained: the caller's model is never touched
            if method == "lora":
                gen = torch.Generator().manual_seed(config.seed)
                add_lora(model, config.lora_rank, generator=gen)
                lr = config.lora_lr
            else:  # full_finetune
                model.requires_grad_(True)
                lr = config.lr
            acc, count = _finetune(model, *data, config, lr)
        seconds = time.perf_counter() - t0
        results[method] = {
            "accuracy": acc,
            "trainable_parameters": count,
            "seconds": seconds,
            "label": _label(method, config),
            "setting": SETTING,
        }
        say(f"{method}: {acc:.1f} % ({count:,} trainable parameters, {seconds:.1f} s)")
    return results
