"""The privacy-budget wrapper composes with any strategy: FedGuard's own and Flower's."""

from __future__ import annotations

import pytest
from flwr.serverapp import NeighboringRelation, PrivacyConfig, SamplingMethod
from flwr.serverapp.strategy import DifferentialPrivacyServerSideFixedClipping, FedAvg, FedProx

from fedguard.config import RunConfig

from fedguard.privacy import EdgeworthAccountant
from fedguard.testing import run_one_round, tiny_bert_adapter
from strategies import build_strategy
from strategies.privacy_budget import PrivacyBudgetStrategy


class Keeper:
    """Budgets: node 1002 is out; counts the re-checks."""

    def __init__(self) -> None:
        self.checks = 0

    def eligible(self, node_id: int) -> bool:
        return node_id != 1002

    def update_budgets(self) -> None:
        self.checks += 1


def _inner(name: str):
    if name == "flower-fedavg":
        return FedAvg(fraction_evaluate=0.0)
    if name == "flower-fedprox":
        return FedProx(proximal_mu=0.1, fraction_evaluate=0.0)
    if name == "flower-dp-fixed-clipping":
        return DifferentialPrivacyServerSideFixedClipping(
            FedAvg(fraction_evaluate=0.0), noise_multiplier=0.5, clipping_norm=10.0, num_sampled_clients=3,
            accountant=EdgeworthAccountant(PrivacyConfig(
                target_delta=1e-5, population_size=4, neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE,
                sampling_method=SamplingMethod.NO_AMPLIFICATION, max_epsilon=100.0)))
    return build_strategy(RunConfig(strategy=name))


@pytest.mark.parametrize("name", ["fedavg", "ffa-lora", "svd", "flower-fedavg", "flower-fedprox",
                                  "flower-dp-fixed-clipping"])
def test_out_of_budget_clients_are_never_sampled_and_budgets_are_rechecked(name):
    keeper = Keeper()
    result = run_one_round(PrivacyBudgetStrategy(_inner(name), keeper), tiny_bert_adapter(), num_nodes=4)
    sampled = {m.metadata.dst_node_id for m in result.messages}
    assert sampled == {1001, 1003, 1004}
    assert result.arrays is not None and keeper.checks == 1
