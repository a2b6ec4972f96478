"""Local privacy mechanisms a client applies before anything leaves it.

- :mod:`~fedguard.mechanisms.dp_sgd`: DP-SGD (Opacus per-example gradients through the split) on the client adapter;
- :mod:`~fedguard.mechanisms.activations`: clipping + Gaussian noise on each example's hidden states;
- :mod:`~fedguard.mechanisms.labels`: k-ary randomised response on labels;
- :mod:`~fedguard.mechanisms.sampling`: Poisson sampling of a client's shard with the client's secret.

Every mechanism reports what it did as :class:`fedguard.privacy.MechanismEvent` s for the ledgers.
"""
