"""Strategies are chosen by name, dotted path or entry point; bad choices fail before training."""

from __future__ import annotations

import sys
import textwrap

import pytest
from flwr.serverapp.strategy import FedProx

from fedguard.config import ConfigError, RunConfig
from fedguard.protocol.messages import FREEZE_LORA_A
from fedguard.testing import run_one_round, tiny_bert_adapter
from strategies import (
    BUILTINS,
    AdapterStrategy,
    UnknownStrategyError,
    available_strategies,
    build_strategy,
    default_strategy_name,
)
from strategies.ffa_lora import FfaLora


def test_builtin_names_build_adapter_strategies_with_the_run_sampling():
    for name in BUILTINS:
        strategy = build_strategy(RunConfig(strategy=name, fraction_train=0.25, min_fit_clients=3))
        assert isinstance(strategy, AdapterStrategy)
        assert strategy.fraction_train == 0.25 and strategy.min_train_nodes == 3
    assert set(BUILTINS) == {"fedavg", "ffa-lora", "svd", "median", "trimmed-mean"}
    assert available_strategies()[:len(BUILTINS)] == list(BUILTINS)


def test_auto_follows_default_strategy_name():
    assert default_strategy_name(RunConfig()) == "fedavg"
    assert default_strategy_name(RunConfig(dp_noise_multiplier=1.0)) == "ffa-lora"
    assert default_strategy_name(RunConfig(dp_target_epsilon=8.0)) == "ffa-lora"
    assert type(build_strategy(RunConfig(strategy="auto"))).__name__ == "FedAvgAdapters"


def test_unknown_name_fails_listing_the_available_ones():
    with pytest.raises(UnknownStrategyError) as err:
        build_strategy(RunConfig(strategy="fedavgg"))
    message = str(err.value)
    assert "strategy='fedavgg' is unknown" in message
    for name in BUILTINS:
        assert name in message
    assert isinstance(err.value, ConfigError)


@pytest.mark.parametrize("path,reason", [
    ("no_such_module_xyz:Thing", "cannot load"),
    ("strategies.fedavg:NoSuchClass", "cannot load"),
    ("strategies.fedavg:", "must look like"),
    ("fedguard.protocol.messages:TRAIN", "not callable"),
])
def test_bad_dotted_paths_fail_with_the_reason(path, reason):
    with pytest.raises(UnknownStrategyError, match=reason):
        build_strategy(RunConfig(strategy=path))


@pytest.fixture
def plugin_module(tmp_path, monkeypatch):
    (tmp_path / "fg_dotted_plugin.py").write_text(textwrap.dedent('''
        from flwr.serverapp.strategy import FedProx

        def fedprox(config, options):
            """A plain Flower strategy as a FedGuard plugin."""
            return FedProx(fraction_train=config.fraction_train, fraction_evaluate=0.0,
                           min_train_nodes=config.min_fit_clients, proximal_mu=float(options.get("mu", "0.1")))

        def not_a_strategy(config, options):
            return object()
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "fg_dotted_plugin"
    sys.modules.pop("fg_dotted_plugin", None)


def test_dotted_path_factory_gets_config_and_parsed_options(plugin_module):
    config = RunConfig(strategy=f"{plugin_module}:fedprox", strategy_options="mu=0.5")
    strategy = build_strategy(config)
    assert isinstance(strategy, FedProx) and strategy.proximal_mu == 0.5
    result = run_one_round(strategy, tiny_bert_adapter(), num_nodes=2)  # a plain Flower strategy runs too
    assert result.arrays is not None and set(result.arrays) == set(tiny_bert_adapter())


def test_factory_must_return_a_flower_strategy(plugin_module):
    with pytest.raises(UnknownStrategyError, match="not a flwr.serverapp.strategy.Strategy"):
        build_strategy(RunConfig(strategy=f"{plugin_module}:not_a_strategy"))


def test_builtins_reject_options_they_do_not_understand():
    with pytest.raises(ConfigError, match=r"\['mu'\] not understood by FfaLora; allowed: none"):
        build_strategy(RunConfig(strategy="ffa-lora", strategy_options="mu=1"))
    assert FfaLora(RunConfig(), {}).train_config(1) == {FREEZE_LORA_A: True}


@pytest.mark.parametrize("key,value,message", [
    ("strategy", "", "strategy: must be a strategy name"),
    ("strategy-options", "a=1,b", "strategy-options entry 'b': expected key=value"),
    ("strategy-options", "a=1,a=2", "key 'a' given twice"),
    ("strategy-max-update-norm", -1.0, "strategy-max-update-norm=-1.0: must be >= 0"),
    ("strategy-reject-norm-factor", 0.5, "strategy-reject-norm-factor=0.5: must be >= 1"),
    ("strategy-trim-fraction", 0.5, "strategy-trim-fraction=0.5: must be in [0, 0.5)"),
    ("strategy-svd-rank", 9, "strategy-svd-rank=9: must be in [0, lora-r=8]"),
])
def test_strategy_keys_are_validated_with_the_config(key, value, message):
    with pytest.raises(ConfigError) as err:
        RunConfig.from_run_config({key: value})
    assert message in str(err.value)


def test_strategy_options_parse_into_strings():
    from fedguard.config import parse_strategy_options
    assert parse_strategy_options(" lr = 0.5 , path=/tmp/x=y ,") == {"lr": "0.5", "path": "/tmp/x=y"}
    assert parse_strategy_options("") == {}
