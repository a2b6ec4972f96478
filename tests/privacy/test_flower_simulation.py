"""EdgeworthAccountant inside Flower's DP strategy, in a real run_simulation (Ray; ~10-30 s)."""

import math

import numpy as np
import pytest

from fedguard.privacy import EdgeworthAccountant

flwr = pytest.importorskip("flwr")
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict  # noqa: E402
from flwr.clientapp import ClientApp  # noqa: E402
from flwr.serverapp import (  # noqa: E402
    Grid,
    NeighboringRelation,
    PrivacyConfig,
    SamplingMethod,
    ServerApp,
)
from flwr.serverapp.strategy import DifferentialPrivacyServerSideFixedClipping, FedAvg  # noqa: E402
from flwr.simulation import run_simulation  # noqa: E402

NUM_CLIENTS = 3
ROUNDS = 2
NOISE = 1.2


@pytest.mark.slow
def test_edgeworth_accountant_in_flower_dp_strategy():
    accountant = EdgeworthAccountant(
        PrivacyConfig(
            target_delta=1e-3,
            population_size=NUM_CLIENTS,
            neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE,
            sampling_method=SamplingMethod.NO_AMPLIFICATION,
            max_epsilon=100.0,
        )
    )
    results = {}

    client_app = ClientApp()

    @client_app.train()
    def train(msg: Message, context: Context) -> Message:
        arrays = msg.content["arrays"].to_numpy_ndarrays()
        updated = [a + 0.1 for a in arrays]  # a tiny deterministic "training step"
        content = RecordDict(
            {"arrays": ArrayRecord(updated), "metrics": MetricRecord({"num-examples": 10})}
        )
        return Message(content=content, reply_to=msg)

    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        strategy = DifferentialPrivacyServerSideFixedClipping(
            FedAvg(fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=NUM_CLIENTS,
                   min_available_nodes=NUM_CLIENTS),
            noise_multiplier=NOISE,
            clipping_norm=1.0,
            num_sampled_clients=NUM_CLIENTS,
            accountant=accountant,
        )
        result = strategy.start(
            grid=grid, initial_arrays=ArrayRecord([np.zeros(4, dtype=np.float32)]), num_rounds=ROUNDS
        )
        results["spent"] = strategy.privacy_spent()
        results["arrays"] = result.arrays

    run_simulation(
        server_app=server_app,
        client_app=client_app,
        num_supernodes=NUM_CLIENTS,
        backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}},
    )

    assert accountant.num_releases == ROUNDS
    assert accountant.history == {(NOISE, 1.0): ROUNDS}
    spent = results["spent"]
    assert spent.num_releases == ROUNDS and math.isfinite(spent.epsilon) and spent.epsilon > 0
    assert spent.epsilon == pytest.approx(accountant.get_epsilon(1e-3))
    assert "pld-pessimistic" in spent.accounting_method and "edgeworth" in spent.accounting_method
    # q = 1 (no amplification): Edgeworth is exact for the Gaussian mechanism, so the two agree.
    assert accountant.get_epsilon_estimate(1e-3) == pytest.approx(spent.epsilon, rel=5e-3)
