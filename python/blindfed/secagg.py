"""Secure aggregation (SecAgg and SecAgg+, Bell et al. 2020) over bytes, backed by the Rust core.

The server learns the sum of the owners' vectors and nothing else, even when owners drop out
at any stage (as long as ``threshold`` of them answer the unmasking request). One round:

1. every owner ``advertise()``\\ s its two public keys; the server makes a ``roster`` of them;
2. every owner ``share()``\\ s secret shares of its mask seeds, encrypted to each neighbour; the
   server ``route``\\ s them to their recipients;
3. every owner ``mask()``\\ s its vector (fixed point, pairwise masks and a self mask); the server
   ``collect``\\ s them and asks the survivors to unmask;
4. every survivor ``unmask()``\\ s (shares of the survivors' self masks and of the dropped
   owners' mask keys); the server ``aggregate``\\ s: the exact sum of the survivors' vectors.

X25519 key agreement, ChaCha20 masks, Shamir shares over GF(2^8) (with a self share),
ChaCha20-Poly1305 between owners, 2^64 fixed point that refuses values out of ``bound``. Every
message is checked on arrival; a step out of order or a refused request raises
:class:`SecAggError` (a ``ValueError``). :mod:`blindfed.fl` runs it between Flower nodes.

>>> import numpy as np
>>> from blindfed.secagg import Owner, Params, Server
>>> params = Params([1, 2, 3], 2, 4, 10.0)   # owners, threshold, length, bound
>>> owners = {i: Owner(params, i) for i in (1, 2, 3)}
>>> server = Server(params)
>>> roster = server.roster({i: o.advertise() for i, o in owners.items()})
>>> inboxes = server.route({i: o.share(roster) for i, o in owners.items()})
>>> values = {i: np.full(4, float(i)) for i in owners}
>>> request = server.collect({i: owners[i].mask(box, values[i]) for i, box in inboxes.items()})
>>> server.aggregate({i: owners[i].unmask(request) for i in server.survivors})
array([6., 6., 6., 6.])
"""

from blindfed._core import SecAggError
from blindfed._core import SecAggOwner as Owner
from blindfed._core import SecAggParams as Params
from blindfed._core import SecAggServer as Server

__all__ = ["Owner", "Params", "SecAggError", "Server"]
