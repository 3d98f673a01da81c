"""Federated adaptation: several owners adapt one provider's model together.

- :mod:`~blindfed.fl.fedavg`: weighted FedAvg of adapters and heads, the paper's schedule.
- :mod:`~blindfed.fl.owner_data`, :mod:`~blindfed.fl.owner_node`: an owner's data and its
  state on its own disk (keys, cached block outputs, secure-aggregation rounds).
- :mod:`~blindfed.fl.server`: the provider's side (online phase, rounds, checkpoints) over
  any transport; :class:`~blindfed.fl.server.LocalTransport` runs owners in this process.
- :mod:`~blindfed.fl.dispatch`: the actions an owner answers.
- :mod:`~blindfed.fl.app`: the Flower ServerApp and ClientApp (``flwr`` 1.42, Python 3.11+);
  :mod:`~blindfed.fl.deploy`: Flower's deployment runtime on one machine.

``import blindfed.fl`` loads neither torch nor Flower; the modules that need them import them.
"""
