"""blindfed: double-blind federated adaptation of foundation models.

The model provider computes on CKKS ciphertexts and never sees the data owners' inputs; the
owners never see the model. The CKKS engine (:mod:`blindfed.ckks`), the polynomial
approximations (:mod:`blindfed.approx`) and the encrypted transformer block
(:mod:`blindfed.block`); with torch, distillation (:mod:`blindfed.distill`), the online
phase (:class:`Provider` and :class:`DataOwner`, :mod:`blindfed.protocol`), federation over
Flower with secure aggregation (:mod:`blindfed.fl`). Apart from this library, the harness
behind the README's figures (:mod:`blindfed.experiments`): the end-to-end demo, the
baselines, tuning, the studies and the benchmarks.

>>> import numpy as np
>>> from blindfed import approx, block, ckks
>>> params = ckks.Parameters(log_n=13, levels=2)
>>> sk = ckks.SecretKey.generate(params)
>>> ct = sk.encrypt(np.array([0.5, -1.0, 2.0]))
>>> np.round(sk.decrypt(ct)[:3], 4)
array([ 0.5, -1. ,  2. ])
"""

from blindfed import approx, block, ckks
from blindfed._core import __version__, num_threads, set_num_threads
from blindfed.protocol import DataOwner, Provider

__all__ = [
    "DataOwner",
    "Provider",
    "__version__",
    "approx",
    "block",
    "ckks",
    "num_threads",
    "set_num_threads",
]
