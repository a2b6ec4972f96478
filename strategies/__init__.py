"""Server strategies for FedGuard: Flower ``Strategy`` objects that sample clients and aggregate adapters.

FedGuard drives the split exchanges itself and hands the strategy only what Flower strategies expect:
``configure_train`` (sampling, train config) and ``aggregate_train`` over replies carrying the client adapter
(``"arrays"``) and ``"metrics"`` with ``num-examples``. The run-config key ``strategy`` selects one
(:mod:`strategies.registry`); :class:`AdapterStrategy` is the base of the built-ins and of adapter-level
plugins (docs/writing-a-strategy.md). Any plain Flower strategy works too.
"""

from strategies.base import AdapterStrategy, ClientUpdate, StrategyError, weighted_mean
from strategies.registry import (
    BUILTINS,
    ENTRY_POINT_GROUP,
    StrategyFactory,
    UnknownStrategyError,
    available_strategies,
    build_strategy,
    default_strategy_name,
    resolve_factory,
)

__all__ = [
    "AdapterStrategy",
    "BUILTINS",
    "ClientUpdate",
    "ENTRY_POINT_GROUP",
    "StrategyError",
    "StrategyFactory",
    "UnknownStrategyError",
    "available_strategies",
    "build_strategy",
    "default_strategy_name",
    "resolve_factory",
    "weighted_mean",
]
