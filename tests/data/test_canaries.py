"""Canaries: regenerated from the run config, appended to the canary partitions' shards only, never counted as
training-set rows, and (classification) kept out of the server's accuracy and the attacker's public text."""

from __future__ import annotations

import json

import pytest
import torch

from fedguard import runtime
from fedguard.outputs.capture import ActivationCapture, trained_rows_path
from fedguard.config import MAX_CANARIES, ConfigError, RunConfig
from fedguard.data.batches import TokenBatch
from fedguard.data.canaries import (
    CANARY_ROW,
    CanaryError,
    canary_copies,
    check_canaries,
    evaluation_rows,
    flipped_label,
    label_flip_canaries,
    secret_canaries,
    secret_records,
)
from fedguard.model.loading import ModelSpec, load_tokenizer


def _config(**keys: object) -> RunConfig:
    return RunConfig.from_run_config(keys)


def test_secret_canaries_are_reproducible_from_the_run_config_and_distinct():
    config = _config(**{"task": "causal-lm", "canaries": 20, "canary-digits": 4, "seed": 3})
    canaries = secret_canaries(config)
    assert canaries == secret_canaries(config)  # the attack regenerates exactly what the clients inserted
    assert len({c.name for c in canaries}) == 20 and all(len(c.code) == 4 and c.code.isdigit() for c in canaries)
    assert [c.code for c in secret_canaries(_config(**{"task": "causal-lm", "canaries": 20, "canary-digits": 4,
                                                       "seed": 4}))] != [c.code for c in canaries]
    first = canaries[0]
    assert first.response() == f"{first.name}'s secret code is {' '.join(first.code)}."
    assert first.response("0042").endswith("is 0 0 4 2.") and first.space_size == 10 ** 4
    assert f"What is {first.name}'s secret code?" in first.prompt and first.prompt.endswith("### Response:\n")


@pytest.mark.parametrize("key,value,message", [
    ("canaries", -1, f"canaries=-1: must be in 0..{MAX_CANARIES}"),
    ("canaries", MAX_CANARIES + 1, "(0 = off)"),
    ("canary-repeats", 0, "canary-repeats=0: must be >= 1"),
    ("canary-clients", 0, "canary-clients=0: must be >= 1"),
    ("canary-digits", 13, "canary-digits=13: must be in 1..12"),
])
def test_bad_canary_keys_are_rejected_with_what_is_allowed(key, value, message):
    with pytest.raises(ConfigError) as err:
        _config(**{key: value})
    assert message in str(err.value)


def test_causal_lm_canary_partitions_end_with_repeats_times_canaries_and_rows_of_minus_one():
    plain = _config(**{"task": "causal-lm"})
    config = _config(**{"task": "causal-lm", "canaries": 3, "canary-repeats": 4, "canary-clients": 2})
    for partition in range(3):
        shard, rows = runtime.client_shard(config, partition, 3), runtime.shard_rows(config, partition, 3)
        base, base_rows = runtime.client_shard(plain, partition, 3), runtime.shard_rows(plain, partition, 3)
        extra = 12 if partition < 2 else 0
        assert len(shard) == len(rows) == len(base) + extra
        assert rows[:len(base_rows)] == base_rows and rows[len(base_rows):] == [CANARY_ROW] * extra
        assert shard.prompt[:len(base)] == base.prompt
    shard = runtime.client_shard(config, 0, 3)
    inserted = shard.subset(list(range(len(shard) - 12, len(shard))))
    records = secret_records(secret_canaries(config))
    assert inserted.response == records.response * 4 and inserted.prompt == records.prompt * 4
    # A SuperNode training on its own file gets no canaries.
    assert runtime.shard_rows(config, 0, 3, "alpaca-libre") == list(range(len(runtime.data_for(config).train)))


def test_label_flip_canaries_are_flipped_dev_rows_kept_out_of_the_evaluation():
    config = _config(**{"canaries": 5, "canary-repeats": 2})
    dev = runtime.data_for(config).dev
    chosen = label_flip_canaries(config, len(dev))
    assert len(chosen.canary_rows) == len(chosen.control_rows) == 5
    assert not set(chosen.canary_rows) & set(chosen.control_rows)
    copies = canary_copies(config, dev, 2)
    assert copies.text == [dev.text[r] for r in chosen.canary_rows] * 2
    assert copies.label == [1 - dev.label[r] for r in chosen.canary_rows] * 2
    assert runtime.client_shard(config, 0, 3).label[-10:] == copies.label
    assert len(runtime.client_shard(config, 1, 3)) == len(runtime.client_shard(_config(), 1, 3))
    kept = evaluation_rows(config, len(dev))
    assert len(kept) == len(dev) - 10 and not set(kept) & (set(chosen.canary_rows) | set(chosen.control_rows))
    assert evaluation_rows(_config(), len(dev)) == list(range(len(dev)))
    assert [flipped_label(label, 3) for label in (0, 1, 2)] == [1, 2, 0]


def test_canary_copies_are_not_recorded_as_trained_rows(tmp_path):
    config = _config(**{"capture-activations": 4, "output-dir": str(tmp_path)})
    capture = ActivationCapture(config, 0, [7, 9, CANARY_ROW, CANARY_ROW])
    batch = TokenBatch(torch.ones(4, 3, dtype=torch.long), torch.ones(4, 3, dtype=torch.long), torch.zeros(4))
    capture.record([torch.zeros(4, 3, 2)], [batch], [[0, 1, 2, 3]], server_round=1)
    assert json.loads(trained_rows_path(tmp_path, 0).read_text()) == [7, 9]
    saved = torch.load(capture.path, weights_only=False)
    assert saved["rows"] == [7, 9, CANARY_ROW, CANARY_ROW]  # captured canaries say they are in no row


def test_impossible_canaries_stop_the_run_before_training_with_what_to_change():
    tokenizer = load_tokenizer(ModelSpec("", "classification"))
    lm = _config(**{"task": "causal-lm", "canaries": 2, "max-length": 32})
    with pytest.raises(CanaryError, match="raise max-length to >= "):
        check_canaries(lm, tokenizer, None)
    check_canaries(_config(**{"task": "causal-lm", "canaries": 2, "max-length": 64}), tokenizer, None)
    too_many = _config(**{"canaries": 200})
    with pytest.raises(CanaryError, match="needs 400 held-out"):
        check_canaries(too_many, tokenizer, runtime.data_for(too_many).dev.subset(list(range(300))))
    with pytest.raises(CanaryError, match="has no dev split"):
        check_canaries(_config(**{"canaries": 2}), tokenizer, None)
