"""Federated adaptation: several owners adapt one provider's model together.

- :mod:`~blindfed.fl.fedavg`: weighted FedAvg of adapters and heads, the learning-rate
  schedule, the bounds a secure sum must keep; :mod:`~blindfed.fl.server_opt`: the server's
  step on the secure sum (FedAvg, FedAvgM, FedAdam).
- :mod:`~blindfed.fl.owner_data`, :mod:`~blindfed.fl.owner_node`: an owner's data and its
  state on its own disk (keys, cached block outputs, secure-aggregation rounds).
- :mod:`~blindfed.fl.server`: the provider's side (online phase, rounds, checkpoints);
  :mod:`~blindfed.fl.transport`: how it reaches the owners
  (:class:`~blindfed.fl.transport.LocalTransport` holds them in this process).
- :mod:`~blindfed.fl.dispatch`: the actions an owner answers.
- :mod:`~blindfed.fl.settings`: a federation's settings (run-config keys, their defaults,
  presets), the one source of every default; :mod:`~blindfed.fl.run`: its two roles.
- :mod:`~blindfed.fl.secure_sum`: a SecAgg round in one process (the federated baselines of
  :mod:`blindfed.experiments.federated_baselines` add up through it).
- :mod:`~blindfed.fl.app`: the Flower ServerApp and ClientApp (``flwr`` 1.42, Python 3.11+);
  :mod:`~blindfed.fl.deploy`: Flower's deployment runtime on one machine.

``import blindfed.fl`` loads neither torch nor Flower; the modules that need them import them.
"""
