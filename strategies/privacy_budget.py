"""A wrapper that makes any Flower strategy respect the clients' privacy budgets.

``PrivacyBudgetStrategy(inner, keeper)`` delegates everything to ``inner`` — a FedGuard strategy, a plugin, or
Flower's own ``FedAvg``, ``FedProx``, ``DifferentialPrivacyServerSideFixedClipping`` … — except that
``configure_train`` / ``configure_evaluate`` see only the clients ``keeper`` still allows (a view of the grid
without the others), and after every aggregation ``keeper`` re-checks the budgets. The keeper is FedGuard's
per-client ledger (:class:`fedguard.apps.server_privacy.ServerPrivacy`) or anything with the same two
methods (:class:`BudgetKeeper`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy


class BudgetKeeper(Protocol):
    """Who may still be sampled, and when to re-check."""

    def eligible(self, node_id: int) -> bool:
        """True if the node's client is within its budgets (unknown clients are eligible)."""

    def update_budgets(self) -> None:
        """Re-check every client's budget after a round's spending was recorded."""


class EligibleGrid:
    """A view of a Flower ``Grid`` whose ``get_node_ids`` leaves out clients that may not be sampled."""

    def __init__(self, grid: Any, keeper: BudgetKeeper) -> None:
        self._grid = grid
        self._keeper = keeper

    def get_node_ids(self):  # noqa: ANN201 - same as Grid.get_node_ids
        return [n for n in self._grid.get_node_ids() if self._keeper.eligible(n)]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)


class PrivacyBudgetStrategy(Strategy):
    """``inner`` restricted to the clients within their privacy budgets (see the module docstring)."""

    def __init__(self, inner: Strategy, keeper: BudgetKeeper) -> None:
        self.inner = inner
        self.keeper = keeper

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        return self.inner.configure_train(server_round, arrays, config, EligibleGrid(grid, self.keeper))

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        result = self.inner.aggregate_train(server_round, replies)
        self.keeper.update_budgets()
        return result

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        return self.inner.configure_evaluate(server_round, arrays, config, EligibleGrid(grid, self.keeper))

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        return self.inner.aggregate_evaluate(server_round, replies)

    def summary(self) -> None:
        self.inner.summary()

    def __getattr__(self, name: str) -> Any:  # the inner strategy's own attributes (name, options ...)
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)
