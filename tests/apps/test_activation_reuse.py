"""activation-reuse (SAP's "noise once, reuse"): an example's noised release is drawn once per period from a
secret key, resent unchanged, and counted once."""

from __future__ import annotations

import pytest
import torch
from flwr.app import Context, RecordDict

from fedguard.apps.client_privacy import ClientPrivacy
from fedguard.config import ConfigError, RunConfig
from fedguard.data.batches import TokenBatch
from fedguard.mechanisms.embedding_dchi import EmbeddingDChi
from fedguard.training.client_half import ClientHalfTrainer
from tests.training.lora_halves import lora_halves


def _privacy(reuse: str) -> ClientPrivacy:
    config = RunConfig(split_layer=0, dchi_eta=50.0, activation_reuse=reuse)
    return ClientPrivacy(config, Context(1, 7, {"partition-id": 0}, RecordDict(), {}), shard_size=10)


def test_keys_are_fixed_per_example_and_period_and_differ_between_examples():
    run = _privacy("run")
    first, later = run.noise_keys([[0, 1], [2]], 1), run.noise_keys([[2, 0]], 4)
    assert first[0][0] == later[0][1] and first[1][0] == later[0][0]
    assert len({first[0][0], first[0][1], first[1][0]}) == 3
    per_round = _privacy("round")
    assert per_round.noise_keys([[0]], 1) != per_round.noise_keys([[0]], 2)
    assert _privacy("none").noise_keys([[0]], 1) is None


def test_keys_depend_on_the_clients_secret():
    a, b = _privacy("run"), _privacy("run")  # two runs: two secrets
    assert a.noise_keys([[0]], 1) != b.noise_keys([[0]], 1)


@pytest.mark.parametrize("reuse,expected", [("none", 6), ("round", 2), ("run", 1)])
def test_a_resent_draw_is_not_counted_again(reuse, expected):
    privacy = _privacy(reuse)
    releases = 0
    for server_round in (1, 2):
        for _ in range(3):  # three epochs over examples 0 and 1 per round
            events = privacy.chunk_events([[0, 1]], server_round, labels_leave=True)
            releases += sum(e.steps for e in events if e.kind == "activation")
    assert releases == expected  # the events report releases of the most-released example


def test_the_same_key_gives_the_same_release_in_any_batch_and_padding(padded_batch):
    ids, mask = padded_batch
    client, _ = lora_halves(split=0)
    trainer = ClientHalfTrainer(client, 1e-3, activation=EmbeddingDChi(5.0, 1.0, 7), deterministic=True)
    batch = TokenBatch(ids, mask, torch.zeros(3, dtype=torch.long))
    together = trainer.send([batch], [0], noise_keys=[[11, 22, 33]])[0]
    alone = trainer.send([TokenBatch(ids[2:3, :3], mask[2:3, :3], torch.zeros(1, dtype=torch.long))], [9],
                         noise_keys=[[33]])[0]
    torch.testing.assert_close(alone[0], together[2, :3], rtol=0, atol=0)
    assert torch.equal(together[2, 3:], torch.zeros_like(together[2, 3:]))  # padding carries nothing
    fresh = trainer.send([batch], [0], noise_keys=[[12, 22, 33]])[0]
    assert not torch.equal(fresh[0], together[0]) and torch.equal(fresh[1], together[1])


@pytest.mark.parametrize("overrides,message", [
    ({"split-layer": 2, "act-clip-norm": 1.0, "act-noise-multiplier": 1.0}, "needs a client bottom that does not train"),
    ({"split-layer": 0, "dchi-eta": 5.0, "bottleneck-dim": 8}, "needs a client bottom that does not train"),
    ({"split-layer": 0}, "needs act-noise-multiplier > 0 or dchi-eta > 0"),
])
def test_reuse_is_refused_where_it_would_leak(overrides, message):
    with pytest.raises(ConfigError, match=message):
        RunConfig.from_run_config({"activation-reuse": "run", **overrides})
