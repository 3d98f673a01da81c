"""A secure-aggregation round with every party in this process (studies and baselines).

The same SecAgg protocol and fixed-point encoding as a federation's rounds
(:mod:`blindfed.fl.server`), without a transport: each owner's vector is masked, the server
only ever handles masked vectors, and what comes out is the exact sum of the fixed-point
encodings. The owners' secrets come from the OS CSPRNG.

>>> import numpy as np
>>> total = secure_sum({1: np.array([0.5, -1.0]), 2: np.array([0.25, 2.0])}, bound=4.0)
>>> total.tolist()
[0.75, 1.0]
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping

import numpy as np

from blindfed import secagg
from blindfed.fl.settings import FRAC_BITS

__all__ = ["majority", "secure_sum"]


def majority(owners: int) -> int:
    """The default unmasking threshold of a round with ``owners`` owners: a majority, and
    at least 2."""
    return max(2, owners // 2 + 1)


def secure_sum(
    vectors: Mapping[int, np.ndarray],
    *,
    bound: float,
    frac_bits: int = FRAC_BITS,
    neighbours: int | None = None,
) -> np.ndarray:
    """The sum of ``vectors`` (owner id -> equal-length float vectors, every entry within
    ``bound``) through one SecAgg round; the threshold is a majority (at least 2)."""
    owners = sorted(vectors)
    if len(owners) < 2:
        raise ValueError(f"secure aggregation needs at least 2 owners, got {len(owners)}")
    lengths = {np.shape(v) for v in vectors.values()}
    if len(lengths) != 1 or len(next(iter(lengths))) != 1:
        raise ValueError(f"vectors must be 1-d and of one length, got shapes {sorted(lengths)}")
    params = secagg.Params(
        owners,
        majority(len(owners)),
        next(iter(lengths))[0],
        bound,
        frac_bits=frac_bits,
        neighbours=neighbours,
        context=f"blindfed-local:{secrets.token_hex(8)}".encode(),
    )
    parties = {i: secagg.Owner(params, i) for i in owners}
    server = secagg.Server(params)
    roster = server.roster({i: p.advertise() for i, p in parties.items()})
    inboxes = server.route({i: p.share(roster) for i, p in parties.items()})
    request = server.collect(
        {i: parties[i].mask(box, np.asarray(vectors[i], np.float64)) for i, box in inboxes.items()}
    )
    return server.aggregate({i: parties[i].unmask(request) for i in server.survivors})
