"""An owner's data: validation of what it holds and the held-out validation split."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from blindfed.fl.owner_data import OwnerData  # noqa: E402


def test_holdout_keeps_the_test_split_out_and_stratifies_by_label():
    share = OwnerData.digits_share(0, 3, seed=0)
    val = share.holdout(0.25, seed=1)
    assert len(val.train_labels) + len(val.test_labels) == len(share.train_labels)
    for label in np.unique(share.train_labels):
        count = int((share.train_labels == label).sum())
        assert int((val.test_labels == label).sum()) == round(0.25 * count)
    # Every held-out and kept image is a training image; none is a test image.
    train = {x.tobytes() for x in share.train_images}
    assert all(x.tobytes() in train for x in np.concatenate([val.train_images, val.test_images]))
    assert np.array_equal(share.holdout(0.25, seed=1).test_labels, val.test_labels)
    for bad in (0.0, 1.0):
        with pytest.raises(ValueError, match="fraction"):
            share.holdout(bad)


def test_owner_data_is_validated(tmp_path):
    with pytest.raises(ValueError, match="train"):
        OwnerData(np.zeros((3, 8, 8)), np.zeros(3), np.zeros((1, 1, 8, 8)), np.zeros(1))
    np.savez(tmp_path / "d.npz", train_images=np.zeros((2, 1, 8, 8)))
    with pytest.raises(ValueError, match="lacks"):
        OwnerData.load(tmp_path / "d.npz")
    share = OwnerData.digits_share(1, 3, train_samples=300, test_samples=60)
    assert share.train_images.shape[1:] == (1, 28, 28) and len(share.test_labels) == 20
    assert torch.is_tensor(torch.as_tensor(share.train_labels))
