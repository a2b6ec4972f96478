"""A plugin as a new plugin author writes it: a plain Flower ``FedAvg`` subclass, named by dotted path."""

from __future__ import annotations

from flwr.serverapp.strategy import FedAvg


class CountingFedAvg(FedAvg):
    """Flower's FedAvg that counts its aggregations (``strategy-options`` arrive as keyword arguments)."""

    aggregations = 0

    def __init__(self, label: str = "", **kwargs) -> None:  # noqa: ANN003 - Flower's FedAvg arguments
        super().__init__(**kwargs)
        self.label = label

    def aggregate_train(self, server_round, replies):  # noqa: ANN001, ANN201 - Flower's signature
        type(self).aggregations += 1
        return super().aggregate_train(server_round, replies)
