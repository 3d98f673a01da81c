"""A federation's settings: presets, explicit overrides and what reaches the owners."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from blindfed.fl.settings import PRESETS, merge_settings, milestones  # noqa: E402


def test_presets_fill_the_keys_they_name_and_explicit_overrides_win():
    assert merge_settings({}, None)["lr"] == PRESETS["digits"]["lr"]
    paper = merge_settings({}, {"preset": "paper"})
    assert paper["lr"] == 1e-3 and paper["server-optimizer"] == "fedavg"
    # In a run config the preset replaces the keys it names (Flower sends every key).
    assert merge_settings({"preset": "paper", "lr": 0.5}, None)["lr"] == 1e-3
    assert merge_settings({}, {"preset": "paper", "lr": 0.5})["lr"] == 0.5
    with pytest.raises(ValueError, match="unknown preset"):
        merge_settings({}, {"preset": "cifar"})
    assert milestones("25,40") == (25, 40) and milestones("") == ()
    with pytest.raises(ValueError, match="milestones"):
        milestones("25;40")
