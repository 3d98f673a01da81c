"""The experiment harness: what reproduces the README's figures, apart from the library a
provider and its owners run.

- :mod:`~blindfed.experiments.demo` (``blindfed demo``) and its report
  (:mod:`~blindfed.experiments.report`); the foundation models it runs
  (:mod:`~blindfed.experiments.foundation`).
- :mod:`~blindfed.experiments.recipes`: how the zoo's students were distilled and one owner's
  adaptation of digits.
- The baselines beside BlindFed: centralised (:mod:`~blindfed.experiments.baselines`) and
  federated (:mod:`~blindfed.experiments.federated_baselines`).
- :mod:`~blindfed.experiments.tune` (``blindfed tune``: every method's learning rate chosen on
  a validation split) and :mod:`~blindfed.experiments.study` (the paper's tables' shapes).
- :mod:`~blindfed.experiments.extraction`: how much of the model a data owner could extract.
- :mod:`~blindfed.experiments.bench` (``blindfed bench``): speed and memory, each against a
  baseline timed in the same run.

Nothing in the library (:mod:`blindfed.ckks`, :mod:`blindfed.nn`, :mod:`blindfed.protocol`,
:mod:`blindfed.fl`, ...) imports from here.
"""
