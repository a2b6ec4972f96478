"""Simulation resources: the federation config FedGuard documents parses in Flower 1.41, and the
per-process caches stay bounded however many simulated SuperNodes a worker serves."""

from __future__ import annotations

import importlib.util
import sys

import pytest
from flwr.common.config import parse_config_args
from flwr.supercore.utils import simulation_config_from_json

from fedguard import runtime
from fedguard.config import RunConfig
from tests.apps.flwr_harness import ROOT


def _scale_module():
    spec = importlib.util.spec_from_file_location("fedguard_scale", ROOT / "simulations" / "scale.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def _parsed(federation_config: str):
    # What `flwr run --federation-config` does with the string (flwr/cli/run/run.py).
    values = {k.replace("-", "_"): v for k, v in parse_config_args([federation_config]).items()}
    return simulation_config_from_json(values)


def test_federation_config_sets_supernodes_cpus_and_fractional_gpus():
    scale = _scale_module()
    config = _parsed(scale.federation_config(1000, 1, 0.25))
    assert config.num_supernodes == 1000
    assert config.client_resources_num_cpus == 1
    assert config.client_resources_num_gpus == 0.25  # four ClientApps share one GPU
    cpu_only = _parsed(scale.federation_config(10, 2))
    assert cpu_only.num_supernodes == 10 and cpu_only.client_resources_num_cpus == 2
    assert not cpu_only.HasField("client_resources_num_gpus")


def test_fractional_cpus_are_refused_as_flower_141_would():
    # Flower 1.41's SimulationConfig.client_resources_num_cpus is an integer field.
    with pytest.raises(TypeError):
        _parsed("num-supernodes=10 client-resources-num-cpus=0.5")
    with pytest.raises(ValueError, match="whole number"):
        _scale_module().federation_config(10, 0.5)


def test_client_caches_are_bounded_not_per_client(tmp_path):
    for cached in (runtime.split_runtime, runtime.dataset_splits, runtime.run_data, runtime.client_shard,
                   runtime.shard_rows, runtime.shard_word_counts):
        assert cached.cache_info().maxsize is not None, f"{cached.__name__} is an unbounded per-process cache"
    data = tmp_path / "train.csv"
    data.write_text("sentence,label\n" + "".join(f"text number {i},{i % 2}\n" for i in range(400)))
    config = RunConfig.from_run_config({"dataset": str(data)})
    runtime.client_shard.cache_clear()
    sizes = [len(runtime.client_shard(config, pid, 200)) for pid in range(200)]  # one worker, 200 clients
    assert sum(sizes) == 400
    assert runtime.client_shard.cache_info().currsize <= runtime.client_shard.cache_info().maxsize <= 16
    runtime.client_shard.cache_clear()
