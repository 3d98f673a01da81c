"""Every exception the Rust core raises, in one place; each is a ``ValueError``.

Catch the class that says what went wrong instead of parsing messages:

- :class:`CkksError`: anything the CKKS engine or the encrypted block refused; its subclasses
  say why: :class:`InsecureParametersError` (parameters below 128-bit security),
  :class:`MalformedDataError` (bytes that do not decode to a valid object),
  :class:`MissingKeyError` (an operation needs a key that was not provided),
  :class:`ShapeError` (arrays, weights or batches of the wrong size or layout),
  :class:`OutOfRangeError` (a setting or value outside what the operation accepts),
  :class:`NonFiniteError` (NaN or infinity where finite numbers are needed),
  :class:`SpecError` (an approximation or student spec that does not parse or fit its slot),
  :class:`CalibrationError` (calibration that does not settle, or data outside the calibrated
  ranges), :class:`CallbackError` (a callback of yours, progress or a remote owner, failed);
- :class:`SecAggError`: a step of secure aggregation that was refused;
  :class:`TamperedShareError` (shares that failed authentication) and
  :class:`FixedPointOverflowError` (a value outside the fixed-point bound) are its subclasses.

>>> import numpy as np
>>> from blindfed import ckks, errors
>>> params = ckks.Parameters(log_n=13, levels=2)
>>> try:
...     ckks.SecretKey.generate(params).encrypt(np.array([np.nan]))
... except errors.NonFiniteError as e:
...     print(type(e).__name__, isinstance(e, ValueError))
NonFiniteError True
"""

from blindfed._core import (
    CalibrationError,
    CallbackError,
    CkksError,
    FixedPointOverflowError,
    InsecureParametersError,
    MalformedDataError,
    MissingKeyError,
    NonFiniteError,
    OutOfRangeError,
    SecAggError,
    ShapeError,
    SpecError,
    TamperedShareError,
)

__all__ = [
    "CalibrationError",
    "CallbackError",
    "CkksError",
    "FixedPointOverflowError",
    "InsecureParametersError",
    "MalformedDataError",
    "MissingKeyError",
    "NonFiniteError",
    "OutOfRangeError",
    "SecAggError",
    "ShapeError",
    "SpecError",
    "TamperedShareError",
]
