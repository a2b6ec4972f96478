"""``fedavg``: example-weighted mean of every adapter tensor, each LoRA factor (A and B) on its own.

The baseline. Note that mean(B) · mean(A) ≠ mean(B · A): averaging the factors separately does not average
the clients' LoRA updates (see ``ffa-lora`` and ``svd`` for aggregations that do).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from strategies.base import AdapterStrategy, ClientUpdate, weighted_mean


class FedAvgAdapters(AdapterStrategy):
    """FedAvg of the client adapters, weighted by ``num-examples``."""

    def aggregate_adapters(self, server_round: int, updates: Sequence[ClientUpdate],
                           current_global: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return weighted_mean(updates)
