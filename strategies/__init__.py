"""Server strategies for FedGuard: Flower ``Strategy`` objects that sample clients and aggregate adapters.

FedGuard drives the split exchanges itself and hands the strategy only what Flower strategies expect:
``configure_train`` (sampling) and ``aggregate_train`` over replies carrying the client adapter
(``"arrays"``) and ``"metrics"`` with ``num-examples``.
"""

from strategies.fedavg import build as build_fedavg

__all__ = ["build_strategy", "build_fedavg"]


def build_strategy(config):  # noqa: ANN001 - fedguard.config.RunConfig
    """The strategy for a run: example-weighted FedAvg of the client adapter tensors."""
    return build_fedavg(config)
