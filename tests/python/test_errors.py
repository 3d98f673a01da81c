"""The core's errors reach Python as typed ``ValueError`` subclasses (``blindfed.errors``), so a
caller can tell a wrong shape from a bad spec or a NaN without reading the message."""

from __future__ import annotations

import numpy as np
import pytest

from blindfed import ckks, errors
from blindfed.approx import Approximation, StudentSpec
from blindfed.block import Block, random_weights


def test_each_kind_of_refusal_has_its_own_class():
    params = ckks.Parameters(log_n=13, levels=2)
    owner = ckks.SecretKey.generate(params)
    block = Block(random_weights(8, 16), tokens=5, heads=2)
    cases = [
        (errors.NonFiniteError, lambda: owner.encrypt(np.array([1.0, np.nan]))),
        (errors.OutOfRangeError, lambda: Approximation.exp_chebyshev(-4.0, 2.0, degree=0)),
        (errors.OutOfRangeError, lambda: owner.evaluation_keys(rotations=[params.slots])),
        (errors.SpecError, lambda: StudentSpec("softmax=chebyshev:x")),
        (errors.SpecError, lambda: Approximation.parse("numerator", "sine:3")),
        (errors.ShapeError, lambda: block.forward(np.zeros((1, 5, 7)))),
    ]
    for kind, call in cases:
        with pytest.raises(kind) as caught:
            call()
        # Every one is also the engine's error and a ValueError.
        assert isinstance(caught.value, errors.CkksError)
        assert isinstance(caught.value, ValueError)
    # The classes are distinct: a shape error is not a spec error.
    assert not issubclass(errors.ShapeError, errors.SpecError)
    assert issubclass(errors.TamperedShareError, errors.SecAggError)
