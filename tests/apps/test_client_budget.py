"""Clients enforce their own privacy budget: a client refuses a round even when the server samples it."""

from __future__ import annotations

import tomllib

import pytest
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from fedguard.apps import client_app
from fedguard.runtime import runtime_for
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
    ledger.record("c", MechanismEvent("dp-sgd", noise_multiplier=1.0, sample_rate=q, steps=steps * rounds,
                                      relation="replace-one"))
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
    # The chunk's DP-SGD steps are spent (and on the client's disk) before its activations leave.
    client_id, events = proto.decode_privacy(reply.content)
    assert client_id == "partition-0"
    assert [(e.kind, e.noise_multiplier, e.sample_rate, e.steps, e.relation) for e in events
            if e.kind == "dp-sgd"] == [("dp-sgd", 1.0, q, steps, "replace-one")]
    assert PrivacyLedger.load(ledger_path).events(client_id, "dp-sgd")[0].steps == steps
    chunk = proto.decode_activations(reply.content, hidden_size=384)
    assert chunk.dp is not None and chunk.dp.noise_multiplier == 1.0  # the server noises its half alike
    grads = [server.train_batch(batch).grad_hidden for batch in chunk.batches]
    final = client_app.exchange(Message(proto.encode_gradients(proto.GradientChunk(grads, final=True), 1),
                                        dst_node_id=7, message_type=proto.EXCHANGE), context)
    _, final_events = proto.decode_privacy(final.content)
    assert final_events == []  # nothing new leaves with the adapter
    assert PrivacyLedger.load(ledger_path).events(client_id, "dp-sgd")[0].steps == steps

    # Round 2: the server samples the client again; the client refuses, saying why, and spends nothing.
    refusal = client_app.start_round(_train_message(config, 2), context)
    reason = refusal.content.config_records[proto.REFUSAL]["reason"]
    assert "max-epsilon" in reason and "model budget" in reason
    assert proto.ACTIVATIONS not in refusal.content.array_records
    assert PrivacyLedger.load(ledger_path).events(client_id, "dp-sgd")[0].steps == steps


def test_the_secret_lives_beside_the_on_disk_ledger_and_survives_a_new_run(tmp_path):
    from fedguard.apps.client_privacy import ClientPrivacy

    ledger = tmp_path / "ledger.json"
    node = {"partition-id": 3, "num-partitions": 4, "ledger-path": str(ledger)}
    config = RunConfig(label_protection="randomized-response", label_epsilon=1.0)
    first = ClientPrivacy(config, Context(1, 7, node, RecordDict(), {}), shard_size=100)
    second = ClientPrivacy(config, Context(2, 7, node, RecordDict(), {}), shard_size=100)  # a new run: new state
    assert first.secret == second.secret
    secret_file = tmp_path / "ledger.json.secret"
    assert secret_file.exists() and (secret_file.stat().st_mode & 0o777) == 0o600
    # Without ledger-path the secret is per run, so a deployment client with RR labels refuses to train.
    memory_only = ClientPrivacy(config, Context(1, 7, {"partition-id": 3}, RecordDict(), {}), 100)
    assert "ledger-path" in memory_only.refusal([[0, 1]], 1, simulation=False)
    assert memory_only.refusal([[0, 1]], 1, simulation=True) is None  # simulation: a warning only


def test_client_ids_do_not_collide_without_a_partition_id():
    from fedguard.apps.client_privacy import client_id_of

    assert client_id_of(Context(1, 7, {"client-id": "hospital-a"}, RecordDict(), {})) == "hospital-a"
    assert client_id_of(Context(1, 7, {"partition-id": 2}, RecordDict(), {})) == "partition-2"
    own_files = [client_id_of(Context(1, node, {"dataset": "/data/mine.csv"}, RecordDict(), {})) for node in (7, 8)]
    assert own_files == ["node-7", "node-8"]


def test_chunk_events_record_releases_steps_and_labels_once():
    from fedguard.apps.client_privacy import ClientPrivacy

    config = RunConfig(dp_noise_multiplier=1.0, act_clip_norm=10.0, act_noise_multiplier=1.0,
                       label_protection="randomized-response", label_epsilon=2.0)
    privacy = ClientPrivacy(config, Context(1, 7, {"partition-id": 0}, RecordDict(), {}), shard_size=50)
    first = privacy.chunk_events([[0, 1, 2], [2, 3]], server_round=1, labels_leave=True)
    privacy.record(first)
    kinds = {e.kind: e for e in first}
    assert set(kinds) == {"activation", "dp-sgd", "dp-sgd-server", "label-rr"}
    assert kinds["dp-sgd"].steps == 2 and kinds["dp-sgd"].sample_rate == config.batch_size / 50
    assert kinds["activation"].steps == 2 and kinds["dp-sgd-server"].steps == 2  # example 2 was sent twice
    second = privacy.chunk_events([[4]], server_round=1, labels_leave=True)
    assert {e.kind for e in second} == {"dp-sgd"}  # no example sent more often than before; RR labels once
