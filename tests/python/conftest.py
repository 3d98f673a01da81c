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


@pytest.fixture(scope="session")
def make_student():
    """A calibrated student of a tiny random ViT (8x8 images, 5 tokens, width 8)."""

    def make(depth: int):
        import torch

        from blindfed.nn.student import Student
        from blindfed.nn.vit import ViT, ViTConfig

        torch.manual_seed(0)
        config = ViTConfig(image_size=8, patch_size=4, width=8, depth=depth, heads=2, mlp=16)
        student = Student.from_teacher(ViT(config))
        student.calibrate([torch.randn(64, 1, 8, 8)], constants=True)
        return student

    return make
