"""CKKS homomorphic encryption over numpy arrays, backed by blindfed's Rust engine.

Roles, as in the protocol: the *owner* holds a :class:`SecretKey` and never ships it; it ships
an :class:`EvaluationKeys` bundle (public, relinearisation and rotation keys, seeded and
compact) and ciphertexts as bytes. The *evaluator* (the model provider) loads both and computes
without being able to decrypt.

>>> import numpy as np
>>> from blindfed import ckks
>>> params = ckks.Parameters(log_n=13, levels=2)
>>> owner = ckks.SecretKey.generate(params)
>>> bundle = owner.evaluation_keys(rotations=[1])
>>> wire = owner.encrypt(np.arange(4.0)).to_bytes()          # owner -> evaluator
>>> keys = ckks.EvaluationKeys.from_bytes(params, bundle.to_bytes())
>>> x = ckks.Ciphertext.from_bytes(params, wire, keys=keys)
>>> y = (x * x + 1.0).rotate(1)                               # evaluator, on ciphertexts
>>> np.round(owner.decrypt(y)[:3], 3)                          # back at the owner
array([ 2.,  5., 10.])

Parameters default to 128-bit security (HE Standard bounds); anything weaker is refused
unless ``insecure=True`` is passed, which is meant for tests only.
"""

from blindfed._core import (
    Ciphertext,
    CkksError,
    EvaluationKeys,
    GaloisKeys,
    InsecureParametersError,
    MalformedDataError,
    MissingKeyError,
    Parameters,
    Plaintext,
    PublicKey,
    RelinKey,
    SecretKey,
)

__all__ = [
    "Ciphertext",
    "CkksError",
    "EvaluationKeys",
    "GaloisKeys",
    "InsecureParametersError",
    "MalformedDataError",
    "MissingKeyError",
    "Parameters",
    "Plaintext",
    "PublicKey",
    "RelinKey",
    "SecretKey",
]
