"""Run a Flower app in Flower's deployment runtime: one SuperLink, one SuperNode per owner.

Flower's *deployment* runtime is what a real federation uses: a long-running SuperLink at the
model provider and a long-running SuperNode at every data owner, talking over the network.
This package starts it on one machine, as real processes on loopback, with the security
settings a real deployment should use (TLS on, SuperNode authentication on):

- :mod:`~blindfed.fl.deploy.certificates`: :func:`make_certificates` (a self-signed CA and
  the SuperLink's server certificate) and :func:`make_node_keys` (one ECDSA P-384 key pair per
  owner, registered with the SuperLink before its SuperNode starts);
- :mod:`~blindfed.fl.deploy.local_federation`: :class:`LocalFederation`, a context manager
  that starts and stops everything, submits runs with ``flwr run`` and waits for them, and
  can kill and restart single SuperNodes to test dropouts;
- :mod:`~blindfed.fl.deploy.processes`: how those processes are started and found again.

The manual (which process runs where, the app directory, the commands for several machines,
and why the SuperLink's port must not be exposed as is in Flower 1.42) is docs/deploy.md.
"""

from blindfed.fl.deploy.certificates import Certificates, NodeKey, make_certificates, make_node_keys
from blindfed.fl.deploy.local_federation import LocalFederation

__all__ = ["Certificates", "LocalFederation", "NodeKey", "make_certificates", "make_node_keys"]
