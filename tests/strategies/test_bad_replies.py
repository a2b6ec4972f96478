"""Bad client replies are excluded with a logged reason, by every strategy and by the driver; never a crash."""

from __future__ import annotations

import logging

import pytest
import torch
from flwr.serverapp.strategy import FedAvg, FedProx

from fedguard.apps.split_rounds import SplitRoundRunner
from fedguard.config import RunConfig
from fedguard.testing import BAD_REPLY_KINDS, bad_reply, perturbed, reply_from, run_one_round, tiny_bert_adapter
from strategies import BUILTINS, build_strategy
from strategies.validation import reply_problem

BOUND = dict(strategy_max_update_norm=1.0)  # rejection above 1.0 x 10 (the default factor)

EXPECTED_REASON = {
    "error": "client error", "no-adapter": "no adapter", "wrong-names": "names differ",
    "wrong-shape": "has shape", "wrong-dtype": "has dtype", "nan": "NaN or Inf", "inf": "NaN or Inf",
    "huge-norm": "exceeds the rejection bound", "no-num-examples": "'num-examples' missing",
    "zero-num-examples": "'num-examples' missing",
}


@pytest.fixture(scope="module")
def global_adapter():
    return tiny_bert_adapter()


@pytest.mark.parametrize("kind", BAD_REPLY_KINDS)
def test_each_bad_reply_kind_has_a_reason(global_adapter, kind):
    reason = reply_problem(bad_reply(kind, 7, global_adapter), global_adapter, max_norm=10.0)
    assert reason is not None and EXPECTED_REASON[kind] in reason
    assert reply_problem(reply_from(7, perturbed(global_adapter, 0.01)), global_adapter, max_norm=10.0) is None


@pytest.mark.parametrize("name", list(BUILTINS))
def test_every_builtin_excludes_bad_replies_and_still_aggregates(global_adapter, name, caplog):
    bad = {2000 + i: kind for i, kind in enumerate(BAD_REPLY_KINDS)}
    clean = run_one_round(build_strategy(RunConfig(strategy=name, **BOUND)), global_adapter, num_nodes=3)
    with caplog.at_level(logging.WARNING, logger="fedguard.strategies"):
        dirty = run_one_round(build_strategy(RunConfig(strategy=name, **BOUND)), global_adapter, num_nodes=3,
                              extra_replies=[bad_reply(kind, node, global_adapter) for node, kind in bad.items()])
    assert dirty.metrics["clients-aggregated"] == 3 and dirty.metrics["clients-rejected"] == len(bad)
    for key, tensor in clean.arrays.items():  # the bad replies did not touch the result
        assert torch.allclose(dirty.arrays[key], tensor, atol=1e-6), key
    for node, kind in bad.items():
        assert any(f"client {node} reply rejected" in r.message and EXPECTED_REASON[kind] in r.message
                   for r in caplog.records), (node, kind)


@pytest.mark.parametrize("name", list(BUILTINS))
def test_round_is_skipped_when_too_few_valid_replies_remain(global_adapter, name):
    config = RunConfig(strategy=name, min_fit_clients=2, **BOUND)
    one_good = lambda message: bad_reply("nan", message.metadata.dst_node_id, global_adapter) \
        if message.metadata.dst_node_id != 1001 else reply_from(1001, perturbed(global_adapter, 0.01))
    result = run_one_round(build_strategy(config), global_adapter, one_good, num_nodes=3)
    assert result.arrays is None and result.metrics is None


def test_norm_rejection_uses_bound_times_factor(global_adapter):
    step = perturbed(global_adapter, 0.0)
    name = sorted(step)[0]
    step[name] = step[name] + 5.0 / step[name].numel() ** 0.5  # update norm 5
    reply = reply_from(3, step)
    assert reply_problem(reply, global_adapter, max_norm=None) is None
    for factor, rejected in ((10.0, False), (4.0, True)):
        strategy = build_strategy(RunConfig(strategy_max_update_norm=1.0, strategy_reject_norm_factor=factor))
        result = run_one_round(strategy, global_adapter, num_nodes=2, extra_replies=[reply])
        assert result.metrics["clients-rejected"] == int(rejected)


@pytest.mark.parametrize("flower_strategy", [FedAvg(fraction_evaluate=0.0), FedProx(fraction_evaluate=0.0)])
def test_driver_validates_replies_for_plain_flower_strategies(global_adapter, flower_strategy):
    """The driver's check runs whatever the strategy: plain Flower strategies aggregate clean replies only."""
    runner = SplitRoundRunner.__new__(SplitRoundRunner)  # only the validation state is needed
    runner.global_adapter, runner.config = global_adapter, RunConfig(**BOUND)
    good = [reply_from(n, perturbed(global_adapter, 0.01, seed=n)) for n in (1, 2)]
    bad = [bad_reply(kind, 100 + i, global_adapter) for i, kind in enumerate(BAD_REPLY_KINDS)]
    dropped: dict[str, str] = {}
    valid = runner._valid_finals(bad[:5] + good + bad[5:], dropped, server_round=1)
    assert [m.metadata.src_node_id for m in valid] == [1, 2]
    assert sorted(dropped) == sorted(str(100 + i) for i in range(len(bad)))
    arrays, _ = flower_strategy.aggregate_train(1, valid)
    mean = arrays.to_torch_state_dict()
    for key in global_adapter:
        expected = (good[0].content["arrays"][key].numpy() + good[1].content["arrays"][key].numpy()) / 2
        assert torch.allclose(mean[key], torch.from_numpy(expected), atol=1e-6)
