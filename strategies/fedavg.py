"""Example-weighted FedAvg of the client adapter tensors (each LoRA matrix averaged on its own)."""

from __future__ import annotations

from flwr.serverapp.strategy import FedAvg

from fedguard.config import RunConfig


def build(config: RunConfig) -> FedAvg:
    """Flower's FedAvg sampling ``fraction-train`` of the connected clients (at least ``min-fit-clients``)
    and averaging the ``arrays`` of the replies weighted by their ``num-examples``."""
    return FedAvg(
        fraction_train=config.fraction_train,
        fraction_evaluate=0.0,
        min_train_nodes=config.min_fit_clients,
        min_evaluate_nodes=0,
        min_available_nodes=config.min_fit_clients,
    )
