"""Device and precision settings: what `device`, `server-device`, `precision` and a GPU request mean, and how
they fail on a machine that cannot honour them."""

from __future__ import annotations

import pytest
import torch

from fedguard.check import check_run, parse_key_values
from fedguard.cli import main
from fedguard.config import ConfigError, RunConfig
from fedguard.model.device import (
    DeviceError,
    autocast,
    batch_to,
    check_gpu_resources,
    check_precision,
    fork_rng,
    resolve_device,
    secret_generator,
    to_wire,
)
from fedguard.protocol.messages import ActivationBatch

no_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the errors of a machine without a GPU")
needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


# -- resolve_device ----------------------------------------------------------------------------------------------

@no_gpu
def test_auto_is_the_cpu_on_a_machine_without_a_gpu():
    assert resolve_device("auto") == torch.device("cpu")


@needs_gpu
def test_auto_is_cuda_on_a_machine_with_a_gpu():
    assert resolve_device("auto").type == "cuda"


def test_cpu_is_always_available():
    assert resolve_device("cpu", "server-device") == torch.device("cpu")


@no_gpu
def test_cuda_without_a_gpu_fails_at_once_naming_the_key_and_what_to_do():
    with pytest.raises(DeviceError) as err:
        resolve_device("cuda", "device")
    message = str(err.value)
    assert "device='cuda' but torch.cuda.is_available() is False on this machine" in message
    assert "CPU-only torch build" in message
    assert "use device='cpu' or 'auto', or install a CUDA build of torch" in message


@no_gpu
def test_a_numbered_gpu_without_a_gpu_names_the_server_key():
    with pytest.raises(DeviceError, match=r"server-device='cuda:1' but torch.cuda.is_available\(\) is False.*"
                                          r"use server-device='cpu' or 'auto'"):
        resolve_device("cuda:1", "server-device")


@needs_gpu
def test_a_gpu_number_beyond_the_visible_ones_says_how_many_there_are():
    count = torch.cuda.device_count()
    with pytest.raises(DeviceError, match=rf"sees {count} GPU\(s\)"):
        resolve_device(f"cuda:{count}", "device")


@pytest.mark.parametrize("setting", ["gpu", "CUDA", "cuda:", "cuda:x", "mps", ""])
def test_an_unknown_setting_lists_the_allowed_values(setting):
    with pytest.raises(DeviceError, match=r"device=.*allowed 'auto' .*'cpu', 'cuda' or 'cuda:N'"):
        resolve_device(setting, "device")


# -- run config ----------------------------------------------------------------------------------------------------

def test_the_defaults_place_each_process_automatically_in_fp32():
    config = RunConfig.from_run_config({})
    assert (config.device, config.server_device, config.precision) == ("auto", "auto", "fp32")


@pytest.mark.parametrize("raw, message", [
    ({"device": "gpu"}, "device='gpu': allowed 'auto'"),
    ({"server-device": "cuda:one"}, "server-device='cuda:one': allowed 'auto'"),
    ({"precision": "fp16"}, "precision='fp16': allowed fp32, bf16"),
])
def test_bad_hardware_settings_are_rejected_with_what_is_allowed(raw, message):
    with pytest.raises(ConfigError, match=message):
        RunConfig.from_run_config(raw)


def test_a_valid_cuda_setting_passes_validation_on_any_machine():
    """The run config is the same on every machine; whether CUDA exists is checked where it is used."""
    assert RunConfig.from_run_config({"device": "cuda:3", "server-device": "cuda", "precision": "bf16"})


# -- GPU request of the federation ----------------------------------------------------------------------------

def test_no_gpu_request_always_passes():
    check_gpu_resources(0, visible=0)
    check_gpu_resources(0.0)


def test_a_gpu_request_without_a_gpu_explains_the_actor_pool_error_in_advance():
    with pytest.raises(DeviceError) as err:
        check_gpu_resources(0.25, visible=0)
    message = str(err.value)
    assert "client-resources-num-gpus=0.25 but no GPU is visible" in message
    assert "ActorPool is empty" in message
    assert "Use client-resources-num-gpus=0" in message


def test_a_request_for_more_gpus_than_the_machine_has_fails_and_fractions_fit():
    with pytest.raises(DeviceError, match=r"client-resources-num-gpus=2 but this machine has 1 GPU\(s\)"):
        check_gpu_resources(2, visible=1)
    check_gpu_resources(1, visible=1)
    check_gpu_resources(0.125, visible=1)


@pytest.mark.parametrize("value", [-0.5, float("nan"), "0.25", True])
def test_a_gpu_request_must_be_a_non_negative_number(value):
    with pytest.raises(DeviceError, match="must be a number >= 0"):
        check_gpu_resources(value, visible=1)


@no_gpu
def test_fedguard_check_reports_a_gpu_request_without_a_gpu(capsys):
    status = main(["check", "--federation-config", "num-supernodes=10 client-resources-num-gpus=0.25"])
    assert status == 2
    assert "ActorPool is empty" in capsys.readouterr().out


def test_fedguard_check_accepts_the_packaged_run_config_on_the_cpu(capsys):
    assert main(["check", "--run-config", "device='cpu' server-device='cpu'"]) == 0
    assert capsys.readouterr().out.startswith("ok: run config valid")


def test_check_run_lists_every_problem_of_the_run():
    assert check_run({"precision": "fp16"}, {}) == [
        "invalid run config: precision='fp16': allowed fp32, bf16 (bf16 = bfloat16 autocast for compute; "
        "adapters and optimiser state stay fp32)"]
    assert check_run({"device": "cpu"}, {"client-resources-num-gpus": 0}) == []


def test_key_values_are_read_as_flwr_run_reads_them():
    assert parse_key_values("client-resources-num-gpus=0.25 num-supernodes=10 device='cuda:0' resume=true") == {
        "client-resources-num-gpus": 0.25, "num-supernodes": 10, "device": "cuda:0", "resume": True}
    with pytest.raises(ValueError, match="expected key=value"):
        parse_key_values("client-resources-num-gpus")


# -- precision, RNG, generators, batches ---------------------------------------------------------------------

def test_fp32_adds_no_autocast_and_bf16_autocasts_matrix_products():
    a, b = torch.randn(4, 4), torch.randn(4, 4)
    with autocast(torch.device("cpu"), "fp32"):
        assert (a @ b).dtype == torch.float32
    with autocast(torch.device("cpu"), "bf16"):
        assert (a @ b).dtype == torch.bfloat16
    with pytest.raises(DeviceError, match="precision='fp16': allowed fp32, bf16"):
        check_precision("fp16")


def test_fork_rng_makes_seeded_dropout_repeatable_and_restores_the_global_state():
    before = torch.random.get_rng_state()
    draws = []
    for _ in range(2):
        with fork_rng(torch.device("cpu")):
            torch.manual_seed(7)
            draws.append(torch.nn.functional.dropout(torch.ones(64), 0.5))
    assert torch.equal(draws[0], draws[1])
    assert torch.equal(torch.random.get_rng_state(), before)


@needs_gpu
def test_fork_rng_covers_the_cuda_generator_of_the_device():
    device = torch.device("cuda")
    before = torch.cuda.get_rng_state()
    draws = []
    for _ in range(2):
        with fork_rng(device):
            torch.manual_seed(7)
            draws.append(torch.nn.functional.dropout(torch.ones(64, device=device), 0.5))
    assert torch.equal(draws[0], draws[1])
    assert torch.equal(torch.cuda.get_rng_state(), before)


def test_secret_generators_live_on_their_device_and_are_not_the_public_seed():
    first, second = secret_generator(torch.device("cpu")), secret_generator(torch.device("cpu"))
    assert first.device.type == "cpu"
    assert first.initial_seed() != second.initial_seed()


def test_batch_to_moves_every_tensor_and_returns_a_batch_already_there_unchanged():
    batch = ActivationBatch(torch.ones(1, 2, 3), torch.ones(1, 2, dtype=torch.long), None)
    assert batch_to(batch, torch.device("cpu")) is batch
    moved = batch_to(batch, torch.device("meta"))
    assert moved.hidden.device.type == moved.attention_mask.device.type == "meta"
    assert moved.labels is None and batch.hidden.device.type == "cpu"


def test_to_wire_gives_float32_on_the_cpu_and_keeps_a_float32_cpu_tensor_as_it_is():
    tensor = torch.randn(2, 3)
    assert to_wire(tensor).data_ptr() == tensor.data_ptr()
    assert to_wire(tensor.to(torch.bfloat16)).dtype == torch.float32
    assert to_wire(torch.ones(2, dtype=torch.long)).dtype == torch.long
