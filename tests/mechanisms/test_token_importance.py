"""SAP's contributing-token allocation: the sentiment-bearing tokens get less d_χ noise, and no ε is claimed."""

from __future__ import annotations

import pytest
import torch

from fedguard.apps.server_privacy import server_guarantee_gaps
from fedguard.config import ConfigError, RunConfig
from fedguard.data.batches import TokenBatch
from fedguard.mechanisms.embedding_dchi import EmbeddingDChi
from fedguard.mechanisms.token_importance import important_tokens, noise_scales
from fedguard.model.loading import ModelSpec, load_tokenizer
from fedguard.training.client_half import ClientHalfTrainer
from tests.training.lora_halves import lora_halves


def test_tokens_with_strong_label_log_odds_are_important_and_neutral_ones_are_not():
    tokenizer = load_tokenizer(ModelSpec("", "classification"))
    texts = ["a great film"] * 10 + ["a awful film"] * 10 + ["the film"] * 10
    labels = [1] * 10 + [0] * 10 + [0] * 5 + [1] * 5
    important = important_tokens(texts, labels, tokenizer, threshold=1.0, min_count=5)
    ids = lambda word: tokenizer(word, add_special_tokens=False)["input_ids"]
    assert set(ids("great")) <= important and set(ids("awful")) <= important
    assert not (set(ids("film")) | set(ids("the"))) & important


def test_noise_scales_shrink_only_the_important_tokens():
    scales = noise_scales({3, 5}, 8, boost=3.0)
    assert scales.tolist() == [1, 1, 1, 0.25, 1, 0.25, 1, 1]
    with pytest.raises(ValueError, match="dchi-importance=-1"):
        noise_scales(set(), 8, boost=-1.0)


def test_the_trainer_scales_each_positions_noise_by_its_tokens_entry(padded_batch):
    ids, mask = padded_batch
    client, _ = lora_halves(split=0)
    scales = torch.ones(97)  # the tiny models' vocabulary
    scales[ids[0, 0]] = 0.0  # no noise at all on that token
    trainer = ClientHalfTrainer(client, 1e-3, activation=EmbeddingDChi(1.0, 1.0, 7), deterministic=True,
                                token_noise_scale=scales)
    batch = TokenBatch(ids, mask, torch.zeros(3, dtype=torch.long))
    sent = trainer.send([batch], [0], noise_keys=[[1, 2, 3]])[0]
    clean = trainer.forward(batch, 0).detach()
    exact = (ids == ids[0, 0]) & mask.bool()
    torch.testing.assert_close(sent[exact], clean[exact])
    assert not torch.allclose(sent[~exact & mask.bool()], clean[~exact & mask.bool()])


def test_the_allocation_claims_no_activation_epsilon():
    config = RunConfig(split_layer=0, dchi_eta=50.0, dchi_importance=2.0)
    assert any("token importance" in gap for gap in server_guarantee_gaps(config))
    with pytest.raises(ConfigError, match="needs dchi-eta > 0"):
        RunConfig.from_run_config({"dchi-importance": 1.0})
    with pytest.raises(ConfigError, match="max-activation-epsilon cannot be enforced"):
        RunConfig.from_run_config({"split-layer": 0, "dchi-eta": 5.0, "dchi-importance": 1.0,
                                   "max-activation-epsilon": 10.0})
