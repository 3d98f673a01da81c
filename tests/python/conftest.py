"""Shared fixtures: one small parameter set (fast, insecure: test only) and its keys."""

import numpy as np
import pytest

from blindfed import ckks


@pytest.fixture(scope="session")
def params() -> ckks.Parameters:
    return ckks.Parameters(11, 3, 40, insecure=True)


@pytest.fixture(scope="session")
def owner(params: ckks.Parameters) -> ckks.SecretKey:
    return ckks.SecretKey.generate(params)


@pytest.fixture(scope="session")
def keys(owner: ckks.SecretKey) -> ckks.EvaluationKeys:
    return owner.evaluation_keys(rotations=[1, 2, -3], conjugate=True)


@pytest.fixture()
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)
