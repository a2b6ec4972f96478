"""Label randomised response (k-ary RR), applied once per example.

Each training example's label is replaced, once and for all, by a randomised-response draw: kept with
probability e^ε / (e^ε + k − 1), otherwise one of the other k − 1 labels uniformly. The draw is fixed
by the client's secret and the example's index, so sending the same example again releases the same
noisy label (post-processing): the label's total privacy cost is ε (``label-epsilon``, pure ε-label-DP,
replace-one on the label) however often the example is used.
"""

from __future__ import annotations

import math

from fedguard.mechanisms.sampling import secret_rng
from fedguard.privacy import MechanismEvent
from fedguard.privacy.events import REPLACE_ONE


def keep_probability(epsilon: float, num_labels: int) -> float:
    """Probability that k-ary RR with privacy ``epsilon`` reports the true label."""
    return math.exp(epsilon) / (math.exp(epsilon) + num_labels - 1)


def randomized_labels(labels: list[int], indices: list[int], num_labels: int, epsilon: float, secret: int) -> list[int]:
    """The RR label of each example ``indices[i]`` (true label ``labels[i]``), fixed per example."""
    keep = keep_probability(epsilon, num_labels)
    out = []
    for label, index in zip(labels, indices):
        rng = secret_rng(secret, index, 0x1AB)
        if rng.random() < keep:
            out.append(int(label))
        else:
            other = int(rng.integers(num_labels - 1))
            out.append(other if other < label else other + 1)
    return out


def label_event(epsilon: float, server_round: int | None = None) -> MechanismEvent:
    """The ledger event of releasing the RR labels (pure ε, replace one example's label by another)."""
    return MechanismEvent("label-rr", epsilon=epsilon, steps=1, round=server_round, relation=REPLACE_ONE)


__all__ = ["keep_probability", "randomized_labels", "label_event"]
