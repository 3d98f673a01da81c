"""The model-extraction study: what an owner aligns and what its surrogates recover."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from blindfed.experiments.extraction import (  # noqa: E402
    Scenario,
    SurrogateConfig,
    extraction_study,
    match_windows,
)
from blindfed.nn.student import Student  # noqa: E402


def test_matching_recovers_a_permutation_within_windows():
    rng = np.random.default_rng(0)
    keys = rng.normal(size=(12, 3, 4))
    windows = [5, 4, 3]
    starts = [0, 5, 9]
    order = np.concatenate([rng.permutation(w) + s for w, s in zip(windows, starts, strict=True)])
    queries = keys[order] + 0.01 * rng.normal(size=keys.shape)
    assert (match_windows(queries, keys, windows) == order).all()
    # Matching never leaves a window, even when a closer key sits in the next one.
    far = keys.copy()
    far[5] = queries[0]
    assert match_windows(queries, far, windows)[0] < 5


@pytest.fixture(scope="module")
def student(make_student) -> Student:
    return make_student(4)


def test_the_study_reports_what_each_defence_leaves_the_owner(student):
    rng = np.random.default_rng(0)
    images, labels = rng.random((120, 1, 8, 8)), rng.integers(0, 3, 120)
    held_out = (rng.random((40, 1, 8, 8)), rng.integers(0, 3, 40))
    scenarios = (
        Scenario("none", permute=False, sample_blocks=False),
        Scenario("sampling", permute=False, sample_blocks=True),
        Scenario("both", permute=True, sample_blocks=True, passes=3),
    )
    reports = extraction_study(
        student,
        (images, labels),
        held_out,
        scenarios=scenarios,
        config=SurrogateConfig(epochs=3),
        min_pairs=16,
    )
    none, sampling, both = reports
    assert none["tied_to_inputs"] == sampling["tied_to_inputs"] == 1.0
    assert list(none["spans"]) == ["input->0", "0->1", "1->2", "2->3"]
    assert none["chain"] == list(none["spans"])
    assert 0.0 <= none["agreement_with_student"] <= 100.0
    assert all(np.isfinite(s["held_out_error"]) for s in none["spans"].values())
    # One pass with block sampling: no span joins two consecutive blocks.
    for name in sampling["spans"]:
        a, b = name.split("->")
        assert a == "input" or int(b) - int(a) >= 2
    # Several passes of the same images can only add spans, each ending at a real block.
    assert all(int(name.split("->")[1]) <= 3 for name in both["spans"])
    assert 0.0 <= both["tied_to_inputs"] <= 1.0
