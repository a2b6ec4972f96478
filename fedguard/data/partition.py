"""Split a training set over clients with ``flwr-datasets`` partitioners (IID, Dirichlet, pathological)."""

from __future__ import annotations

from dataclasses import dataclass

import datasets
import numpy as np
from flwr_datasets.partitioner import (
    DirichletPartitioner,
    IidPartitioner,
    Partitioner,
    PathologicalPartitioner,
)

from fedguard.config import PARTITIONERS


@dataclass(frozen=True)
class PartitionScheme:
    """How the training set is divided: ``kind`` in ``iid | dirichlet | pathological``.

    ``dirichlet_alpha`` is the Dirichlet concentration over labels (smaller = more skewed);
    ``pathological_classes`` is the number of classes each client holds. The data order is shuffled
    with ``seed`` first, so IID shards are random and every client computes the same partition.
    """

    kind: str
    num_partitions: int
    dirichlet_alpha: float = 0.5
    pathological_classes: int = 1
    seed: int = 42

    def __post_init__(self) -> None:
        if self.kind not in PARTITIONERS:
            raise ValueError(f"partitioner={self.kind!r}: unknown; allowed {', '.join(PARTITIONERS)}")
        if self.num_partitions < 1:
            raise ValueError(f"num-partitions={self.num_partitions}: must be >= 1")

    def build(self) -> Partitioner:
        if self.kind == "iid":
            return IidPartitioner(num_partitions=self.num_partitions)
        if self.kind == "dirichlet":
            return DirichletPartitioner(
                num_partitions=self.num_partitions, partition_by="label", alpha=self.dirichlet_alpha,
                min_partition_size=1, seed=self.seed,
            )
        return PathologicalPartitioner(
            num_partitions=self.num_partitions, partition_by="label",
            num_classes_per_partition=self.pathological_classes, seed=self.seed,
        )


def partition_indices(labels: list[int], scheme: PartitionScheme, partition_id: int) -> list[int]:
    """Row indices (into the training set) of partition ``partition_id`` in ``[0, num_partitions)``."""
    if not 0 <= partition_id < scheme.num_partitions:
        raise ValueError(f"partition-id={partition_id}: must be in 0..{scheme.num_partitions - 1}")
    order = np.random.default_rng(scheme.seed).permutation(len(labels))
    table = datasets.Dataset.from_dict({"row": order, "label": np.asarray(labels)[order]})
    partitioner = scheme.build()
    partitioner.dataset = table
    return [int(i) for i in partitioner.load_partition(partition_id)["row"]]
