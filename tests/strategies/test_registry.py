"""Strategies are chosen by name, dotted path or entry point; bad choices fail before training."""

from __future__ import annotations

import sys
import textwrap

import pytest
from flwr.serverapp.strategy import FedAvg, FedProx

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
from strategies.registry import option_kwargs


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


@pytest.fixture
def class_plugins(tmp_path, monkeypatch):
    """A module with plain Flower strategy classes (and one non-strategy) to name by dotted path."""
    (tmp_path / "fg_class_plugin.py").write_text(textwrap.dedent('''
        from flwr.serverapp.strategy import FedAvg

        class MyFedAvg(FedAvg):
            """A plain Flower FedAvg subclass: keyword arguments only, as Flower's own strategies."""
            def __init__(self, server_momentum: float = 0.0, **kwargs):
                super().__init__(**kwargs)
                self.server_momentum = server_momentum

        class StrictMu(FedAvg):
            """Rejects a bad value of its own option."""
            def __init__(self, mu: float = 0.1, fraction_train: float = 1.0):
                if mu < 0:
                    raise ValueError(f"mu must be >= 0, got {mu}")
                super().__init__(fraction_train=fraction_train)
                self.mu = mu

        class NotAStrategy:
            def __init__(self, **kwargs):
                pass
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "fg_class_plugin"
    sys.modules.pop("fg_class_plugin", None)


def test_flower_strategy_class_gets_the_options_as_keyword_arguments(class_plugins):
    config = RunConfig(strategy=f"{class_plugins}:MyFedAvg", fraction_train=0.25, min_fit_clients=4,
                       strategy_options="fraction-train=1.0,min-train-nodes=2,server_momentum=0.9")
    strategy = build_strategy(config)
    assert type(strategy).__name__ == "MyFedAvg" and isinstance(strategy, FedAvg)
    assert strategy.fraction_train == 1.0 and isinstance(strategy.fraction_train, float)
    assert strategy.min_train_nodes == 2 and isinstance(strategy.min_train_nodes, int)
    assert strategy.server_momentum == 0.9
    result = run_one_round(strategy, tiny_bert_adapter(), num_nodes=2)
    assert result.arrays is not None and set(result.arrays) == set(tiny_bert_adapter())


def test_flower_strategy_class_takes_the_run_sampling_unless_options_set_it():
    strategy = build_strategy(RunConfig(strategy="flwr.serverapp.strategy:FedProx", fraction_train=0.5,
                                        min_fit_clients=3, strategy_options="proximal-mu=0.25"))
    assert isinstance(strategy, FedProx) and strategy.proximal_mu == 0.25
    assert (strategy.fraction_train, strategy.min_train_nodes, strategy.min_available_nodes) == (0.5, 3, 3)


def test_option_values_are_converted_where_they_parse():
    assert option_kwargs({"a-b": "true", "c": "False", "n": "3", "x": "1e-3", "s": "median"}) == {
        "a_b": True, "c": False, "n": 3, "x": 0.001, "s": "median"}
    assert type(option_kwargs({"n": "3"})["n"]) is int


def test_a_class_that_is_not_a_strategy_is_refused_before_training(class_plugins):
    with pytest.raises(UnknownStrategyError) as err:
        build_strategy(RunConfig(strategy=f"{class_plugins}:NotAStrategy"))
    assert f"{class_plugins}:NotAStrategy" in str(err.value)
    assert "not a flwr.serverapp.strategy.Strategy subclass" in str(err.value)


def test_an_option_the_constructor_does_not_take_is_named_with_the_accepted_ones(class_plugins):
    with pytest.raises(UnknownStrategyError) as err:
        build_strategy(RunConfig(strategy=f"{class_plugins}:StrictMu", strategy_options="proximal-mu=1"))
    message = str(err.value)
    assert f"{class_plugins}:StrictMu" in message and "'proximal-mu'" in message
    assert "mu, fraction_train" in message


def test_a_constructor_that_rejects_an_option_value_is_reported_with_the_plugin(class_plugins):
    with pytest.raises(UnknownStrategyError) as err:
        build_strategy(RunConfig(strategy=f"{class_plugins}:StrictMu", strategy_options="mu=-1"))
    message = str(err.value)
    assert f"{class_plugins}:StrictMu" in message and "'mu': -1" in message and "mu must be >= 0" in message


def test_adapter_strategy_classes_by_dotted_path_still_get_config_and_options():
    strategy = build_strategy(RunConfig(strategy="strategies.svd:SvdLora", fraction_train=0.5))
    assert isinstance(strategy, AdapterStrategy) and strategy.fraction_train == 0.5
