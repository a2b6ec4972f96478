"""Each built-in strategy computes the aggregate it promises, checked against an independent computation."""

from __future__ import annotations

import pytest
import torch

from fedguard.config import RunConfig
from fedguard.protocol.messages import FREEZE_LORA_A
from fedguard.testing import adapter_from_shapes, perturbed, run_one_round, tiny_bert_adapter, train_reply
from strategies import build_strategy
from strategies.lora_pairs import lora_pairs

NODES = [1001, 1002, 1003, 1004, 1005]


def scripted_clients(adapters: dict[int, dict[str, torch.Tensor]], examples: dict[int, int]):
    """A fake client per node that replies with a fixed adapter and example count."""
    return lambda message: train_reply(message, adapters[message.metadata.dst_node_id],
                                       examples[message.metadata.dst_node_id])


def random_clients(global_adapter, seed: int = 0, scale: float = 0.3):
    """Independent random adapters (every tensor redrawn) and distinct example counts for NODES."""
    shapes = {k: tuple(v.shape) for k, v in global_adapter.items()}
    adapters = {node: adapter_from_shapes(shapes, seed=seed + node) for node in NODES}
    adapters = {node: {k: scale * v / 0.1 for k, v in a.items()} for node, a in adapters.items()}
    examples = {node: 10 * (i + 1) for i, node in enumerate(NODES)}
    return adapters, examples


def weights(examples):
    total = sum(examples.values())
    return {node: n / total for node, n in examples.items()}


def rel_product_error(new, adapters, w):
    """‖B'A' − Σ w_k B_k A_k‖ / ‖Σ w_k B_k A_k‖ over all LoRA modules."""
    err = ref = 0.0
    for pair in lora_pairs(new):
        target = sum(w[n] * adapters[n][pair.b].double() @ adapters[n][pair.a].double() for n in adapters)
        got = new[pair.b].double() @ new[pair.a].double()
        err += float((got - target).pow(2).sum())
        ref += float(target.pow(2).sum())
    return (err / ref) ** 0.5


@pytest.fixture(scope="module")
def global_adapter():
    return tiny_bert_adapter(lora_r=4)


def test_fedavg_is_the_example_weighted_mean_of_each_tensor(global_adapter):
    adapters, examples = random_clients(global_adapter)
    result = run_one_round(build_strategy(RunConfig(strategy="fedavg")), global_adapter,
                           scripted_clients(adapters, examples), num_nodes=len(NODES))
    w = weights(examples)
    for name in global_adapter:
        expected = sum(w[n] * adapters[n][name].double() for n in NODES)
        assert torch.allclose(result.arrays[name].double(), expected, atol=1e-6), name
    assert result.metrics["clients-aggregated"] == len(NODES)
    assert result.metrics["aggregation-seconds"] >= 0


def test_ffa_lora_freezes_a_and_averages_updates_exactly_where_fedavg_does_not(global_adapter):
    shapes = {k: tuple(v.shape) for k, v in global_adapter.items()}
    # Clients under FFA-LoRA: A as received (the global one), B trained.
    adapters = {n: {k: (global_adapter[k].clone() if ".lora_A." in k else v * 3)
                    for k, v in adapter_from_shapes(shapes, seed=n).items()} for n in NODES}
    examples = {n: 10 * (i + 1) for i, n in enumerate(NODES)}
    ffa = run_one_round(build_strategy(RunConfig(strategy="ffa-lora")), global_adapter,
                        scripted_clients(adapters, examples), num_nodes=len(NODES))
    assert all(m.content.config_records["config"][FREEZE_LORA_A] is True for m in ffa.messages)
    for name in global_adapter:
        if ".lora_A." in name:
            assert torch.equal(ffa.arrays[name], global_adapter[name])
    ffa_error = rel_product_error(ffa.arrays, adapters, weights(examples))
    # Plain FedAvg on free (A, B) pairs: mean(B)·mean(A) is not mean(B·A).
    free, free_examples = random_clients(global_adapter)
    avg = run_one_round(build_strategy(RunConfig(strategy="fedavg")), global_adapter,
                        scripted_clients(free, free_examples), num_nodes=len(NODES))
    fedavg_error = rel_product_error(avg.arrays, free, weights(free_examples))
    assert ffa_error < 1e-5 and fedavg_error > 0.3, (ffa_error, fedavg_error)
    assert not any(m.content.config_records["config"].get(FREEZE_LORA_A, False) for m in avg.messages)


def test_ffa_lora_discards_a_client_changed_a(global_adapter):
    adapters, examples = random_clients(global_adapter)
    result = run_one_round(build_strategy(RunConfig(strategy="ffa-lora")), global_adapter,
                           scripted_clients(adapters, examples), num_nodes=len(NODES))
    assert result.metrics["clients-moved-a"] == len(NODES)
    assert all(torch.equal(result.arrays[k], v) for k, v in global_adapter.items() if ".lora_A." in k)


@pytest.mark.parametrize("rank", [0, 2])
def test_svd_product_is_the_rank_k_truncation_of_the_mean_product(global_adapter, rank):
    adapters, examples = random_clients(global_adapter)
    config = RunConfig(strategy="svd", lora_r=4, strategy_svd_rank=rank)
    result = run_one_round(build_strategy(config), global_adapter, scripted_clients(adapters, examples),
                           num_nodes=len(NODES))
    w, k = weights(examples), rank or 4
    tail = whole = 0.0
    for pair in lora_pairs(global_adapter):
        assert result.arrays[pair.a].shape == global_adapter[pair.a].shape
        assert result.arrays[pair.b].shape == global_adapter[pair.b].shape
        mean = sum(w[n] * adapters[n][pair.b].double() @ adapters[n][pair.a].double() for n in NODES)
        s = torch.linalg.svdvals(mean)
        got = result.arrays[pair.b].double() @ result.arrays[pair.a].double()
        assert torch.linalg.matrix_rank(got, atol=1e-4) <= k
        # Eckart–Young: the best rank-k approximation leaves exactly the tail singular values.
        assert float((got - mean).pow(2).sum()) == pytest.approx(float(s[k:].pow(2).sum()), rel=1e-3, abs=1e-8)
        tail, whole = tail + float(s[k:].pow(2).sum()), whole + float(s.pow(2).sum())
        if k < 4:
            assert torch.count_nonzero(result.arrays[pair.b][:, k:]) == 0
            assert torch.count_nonzero(result.arrays[pair.a][k:]) > 0  # fresh directions stay trainable
    assert 0 < result.metrics["svd-truncation-error"] == pytest.approx((tail / whole) ** 0.5, rel=1e-3)


def test_svd_is_exact_when_clients_agree(global_adapter):
    shapes = {k: tuple(v.shape) for k, v in global_adapter.items()}
    same = adapter_from_shapes(shapes, seed=7)
    adapters = {n: same for n in NODES}
    result = run_one_round(build_strategy(RunConfig(strategy="svd", lora_r=4)), global_adapter,
                           scripted_clients(adapters, {n: 5 for n in NODES}), num_nodes=len(NODES))
    assert result.metrics["svd-truncation-error"] < 1e-6
    for pair in lora_pairs(same):
        assert torch.allclose(result.arrays[pair.b] @ result.arrays[pair.a], same[pair.b] @ same[pair.a], atol=1e-5)


def small_updates(global_adapter):
    adapters = {n: perturbed(global_adapter, 0.01, seed=n) for n in NODES}
    return adapters, {n: 10 * (i + 1) for i, n in enumerate(NODES)}


def test_median_and_trimmed_mean_of_updates_resist_an_outlier(global_adapter):
    adapters, examples = small_updates(global_adapter)
    outlier = NODES[0]
    adapters[outlier] = {k: v + 0.5 for k, v in adapters[outlier].items()}
    deltas = torch.stack([torch.cat([(adapters[n][k] - global_adapter[k]).flatten() for k in sorted(global_adapter)])
                          for n in NODES])
    config = dict(strategy_trim_fraction=0.2)  # 5 clients: one value dropped at each end
    median = run_one_round(build_strategy(RunConfig(strategy="median", **config)), global_adapter,
                           scripted_clients(adapters, examples), num_nodes=len(NODES))
    trimmed = run_one_round(build_strategy(RunConfig(strategy="trimmed-mean", **config)), global_adapter,
                            scripted_clients(adapters, examples), num_nodes=len(NODES))
    expected_median = deltas.median(dim=0).values  # odd K: the middle value
    expected_trimmed = deltas.sort(dim=0).values[1:4].mean(dim=0)
    for result, expected in ((median, expected_median), (trimmed, expected_trimmed)):
        got = torch.cat([(result.arrays[k] - global_adapter[k]).flatten() for k in sorted(global_adapter)])
        assert torch.allclose(got, expected, atol=1e-6)
        assert got.abs().max() < 0.1  # the +0.5 outlier did not pull the aggregate


def test_robust_strategies_clip_each_update_to_the_bound(global_adapter):
    adapters, examples = small_updates(global_adapter)
    names = sorted(global_adapter)
    norms = {n: float(torch.cat([(adapters[n][k] - global_adapter[k]).flatten() for k in names]).norm())
             for n in NODES}
    bound = sorted(norms.values())[2] * 0.5  # every update exceeds it, none by 10x
    for name in ("median", "trimmed-mean"):
        result = run_one_round(build_strategy(RunConfig(strategy=name, strategy_max_update_norm=bound)),
                               global_adapter, scripted_clients(adapters, examples), num_nodes=len(NODES))
        assert result.metrics["clients-clipped"] == len(NODES)
        step = torch.cat([(result.arrays[k] - global_adapter[k]).flatten() for k in names]).norm()
        assert float(step) <= bound * (1 + 1e-6)
