"""Example trainers, named in jobs as ``flrt.examples.<module>:<Trainer>``.

- :mod:`flrt.examples.logreg`: ``LogisticRegressionTrainer``, numpy logistic regression on the
  breast-cancer data; with one full-batch step per round FedAvg equals centralised gradient descent.
- :mod:`flrt.examples.mlp`: ``MLPTrainer``, a PyTorch MLP on the same data, with FedProx and SCAFFOLD
  (needs the ``torch`` extra).
- :mod:`flrt.examples.noise`: ``NoiseTrainer``, the benchmark trainer (global model plus noise,
  stragglers, failures), and ``make_model`` for initial models of a given size.

This package imports none of them, so that importing it never imports PyTorch.
"""

from __future__ import annotations

__all__: list[str] = []
