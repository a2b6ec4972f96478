"""The defences at the cut through the real apps: a bottleneck (with noise, the decorrelation penalty, DP-SGD and
the U shape) and d_χ with one noise draw per run, over both transports."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from fedguard.protocol import messages as proto
from tests.apps.loopback import run_server
from tests.apps.test_stream import _tiny_llama_classifier
from tests.apps.tiny_causal_lm import save_tiny_llama


@pytest.mark.parametrize("transport", ["stream", "flower"])
def test_a_bottleneck_with_noise_penalty_and_dp_sgd_trains_and_is_saved(tmp_path, transport):
    model = _tiny_llama_classifier(tmp_path / "tiny")
    grid, metrics = run_server(tmp_path, {
        "model": str(model), "split-layer": 1, "bottleneck-dim": 4, "act-clip-norm": 2.0,
        "act-noise-multiplier": 0.5, "dcor-weight": 0.5, "dp-noise-multiplier": 1.0, "split-transport": transport})
    entry = metrics["rounds"][0]
    assert entry["clients_aggregated"] == 2 and not entry["clients_dropped"]
    assert entry["epsilon_activation"] is not None and entry["epsilon_model_certified"] is not None
    widths = {m.content.array_records[k].to_torch_state_dict()[t].shape[-1]
              for m in grid.received for k in m.content.array_records if k.startswith(proto.ACTIVATIONS)
              for t in m.content.array_records[k].to_torch_state_dict() if t.startswith("hidden")} if \
        transport == "flower" else {4}
    assert widths == {4}  # k numbers per token cross the split
    saved = load_file(str(tmp_path / "run" / "adapter" / "bottleneck.safetensors"))
    assert saved["cut_down.weight"].shape == (4, 32) and saved["cut_up.weight"].shape == (32, 4)
    card = (tmp_path / "run" / "adapter" / "README.md").read_text()
    assert "bottleneck at the cut" in card


def test_a_bottleneck_under_the_u_shape(tmp_path):
    model = save_tiny_llama(tmp_path / "tiny-llama")
    _, metrics = run_server(tmp_path, {"task": "causal-lm", "model": str(model), "split-layer": 1,
                                       "bottleneck-dim": 8, "act-clip-norm": 2.0, "act-noise-multiplier": 0.3},
                            num_nodes=2)
    entry = metrics["rounds"][0]
    assert entry["clients_aggregated"] == 2 and not entry["clients_dropped"]
    assert torch.isfinite(torch.tensor(entry["loss"]))


def test_dchi_drawn_once_per_run_spends_one_release_per_example(tmp_path):
    model = _tiny_llama_classifier(tmp_path / "tiny")
    _, metrics = run_server(tmp_path, {"model": str(model), "split-layer": 0, "dchi-eta": 20.0,
                                       "activation-reuse": "run", "num-server-rounds": 2, "local-steps": 6,
                                       "batch-size": 8})
    once = [r["epsilon_activation"] for r in metrics["rounds"]]
    per_release = 2 * 20.0 * 1.0 * 48  # 2·η·C·max-length
    assert once[-1] == pytest.approx(per_release)  # many epochs over each example, one release counted
