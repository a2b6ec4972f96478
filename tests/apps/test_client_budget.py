"""Clients enforce their own privacy budget: a client refuses a round even when the server samples it."""

from __future__ import annotations

import tomllib

import pytest
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from fedguard.apps import client_app
from fedguard.apps.runtime import runtime_for
from fedguard.config import RunConfig
from fedguard.model.lora import trainable_state
from fedguard.privacy import MechanismEvent, PrivacyLedger
from fedguard.protocol import messages as proto
from fedguard.training.server_half import ServerHalfTrainer
from tests.apps.flwr_harness import ROOT


@pytest.fixture
def task_identity():
    saved = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 7, 1
    yield
    TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = saved


def _epsilon(rounds: int, q: float, steps: int) -> float:
    ledger = PrivacyLedger()
    ledger.record("c", MechanismEvent("dp-sgd", noise_multiplier=1.0, sample_rate=q, steps=steps * rounds))
    return ledger.epsilon("c", 1e-5, warn=False).epsilon_certified


def _train_message(config: RunConfig, server_round: int) -> Message:
    adapter = trainable_state(runtime_for(config, 2).client)
    return Message(RecordDict({
        proto.ADAPTER: ArrayRecord(torch_state_dict=adapter),
        "config": ConfigRecord({"server-round": server_round, proto.NUM_LABELS: 2}),
    }), dst_node_id=7, message_type=proto.TRAIN)


def test_client_refuses_the_round_that_would_exceed_its_budget(tmp_path, task_identity):
    data = tmp_path / "mine.tsv"
    data.write_text("sentence\tlabel\n" + "".join(f"text number {i} is {'good' if i % 2 else 'bad'}\t{i % 2}\n"
                                                  for i in range(40)))
    q, steps = 4 / 40, 2
    budget = (_epsilon(1, q, steps) + _epsilon(2, q, steps)) / 2  # one round fits, two do not
    raw = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    raw.update({"dp-noise-multiplier": 1.0, "local-steps": steps, "batch-size": 4, "max-epsilon": budget,
                "exchange-batches": 2, "max-length": 16})
    config = RunConfig.from_run_config(raw)
    ledger_path = tmp_path / "client-ledger.json"
    context = Context(run_id=1, node_id=7, node_config={"partition-id": 0, "num-partitions": 1, "dataset": str(data),
                                                       "ledger-path": str(ledger_path)},
                      state=RecordDict(), run_config=raw)
    server = ServerHalfTrainer(runtime_for(config, 2).server, 1e-3)

    # Round 1: the client trains (one chunk of 2 Poisson batches), the server returns gradients.
    reply = client_app.start_round(_train_message(config, 1), context)
    assert proto.REFUSAL not in reply.content.config_records
    chunk = proto.decode_activations(reply.content, hidden_size=384)
    grads = [server.train_batch(batch).grad_hidden for batch in chunk.batches]
    final = client_app.exchange(Message(proto.encode_gradients(proto.GradientChunk(grads, final=True), 1),
                                        dst_node_id=7, message_type=proto.EXCHANGE), context)
    client_id, events = proto.decode_privacy(final.content)
    assert [(e.kind, e.noise_multiplier, e.sample_rate, e.steps) for e in events] == [("dp-sgd", 1.0, q, steps)]
    # The client's own ledger is on its disk and already holds the round.
    assert PrivacyLedger.load(ledger_path).events(client_id, "dp-sgd")[0].steps == steps

    # Round 2: the server samples the client again; the client refuses, saying why, and spends nothing.
    refusal = client_app.start_round(_train_message(config, 2), context)
    reason = refusal.content.config_records[proto.REFUSAL]["reason"]
    assert "max-epsilon" in reason and "adapter budget" in reason
    assert proto.ACTIVATIONS not in refusal.content.array_records
    assert PrivacyLedger.load(ledger_path).events(client_id, "dp-sgd")[0].steps == steps
