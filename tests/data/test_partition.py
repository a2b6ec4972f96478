"""Partitions come from flwr-datasets partitioners, cover the data once, and are reproducible."""

from __future__ import annotations

import numpy as np
import pytest

from fedguard.data.partition import PartitionScheme, partition_indices

LABELS = [i % 2 for i in range(400)]


@pytest.mark.parametrize("kind", ["iid", "dirichlet", "pathological"])
def test_partitions_are_disjoint_cover_and_reproducible(kind):
    scheme = PartitionScheme(kind, num_partitions=4, dirichlet_alpha=0.3, pathological_classes=1, seed=7)
    parts = [partition_indices(LABELS, scheme, i) for i in range(4)]
    flat = [i for part in parts for i in part]
    assert len(flat) == len(set(flat))
    if kind != "pathological":
        assert sorted(flat) == list(range(len(LABELS)))
    assert parts[2] == partition_indices(LABELS, scheme, 2)


def test_pathological_partitions_hold_one_class_each():
    scheme = PartitionScheme("pathological", num_partitions=4, pathological_classes=1, seed=7)
    for i in range(4):
        assert len({LABELS[j] for j in partition_indices(LABELS, scheme, i)}) == 1


def test_small_dirichlet_alpha_skews_labels_more_than_iid():
    def skew(kind: str) -> float:
        scheme = PartitionScheme(kind, num_partitions=4, dirichlet_alpha=0.1, seed=3)
        return float(np.mean([abs(np.mean([LABELS[j] for j in partition_indices(LABELS, scheme, i)]) - 0.5)
                              for i in range(4)]))

    assert skew("dirichlet") > skew("iid") + 0.1


def test_unknown_partitioner_and_bad_partition_id():
    with pytest.raises(ValueError, match="allowed iid, dirichlet, pathological"):
        PartitionScheme("zipf", 2)
    with pytest.raises(ValueError, match="partition-id=5: must be in 0..1"):
        partition_indices(LABELS, PartitionScheme("iid", 2), 5)
