"""Utility under privacy on SST-2: non-private vs private federated split runs, and the cost of DP-SGD.

Runs the FedGuard app twice with `flwr run .` (3 simulated clients, same settings otherwise):

- non-private: the defaults of pyproject.toml;
- private: ``simulations/dp_sgd_sst2.toml`` — whole-model DP-SGD (client adapter and server half) with the
  noise multiplier solved for a *certified* ε = 8 of the released model at δ = 1e-5 over the whole run
  (replace-one neighbours), and clipped + noised activations;

then prints accuracy, ε per release (certified bound and Edgeworth estimate) and wall time side by side, and
times one client step with and without DP-SGD on the same batches in this process (ratio measured in this
run). Usage::

    python simulations/privacy_utility.py [--rounds N] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import tomllib
from pathlib import Path

import torch
import torch.nn.functional as F

from fedguard.apps.local_run import ROOT, flwr_run
from fedguard.runtime import client_shard, runtime_for
from fedguard.config import RunConfig
from fedguard.data.batches import tokenize
from fedguard.training.dp_trainers import DPClientHalfTrainer
from fedguard.mechanisms.sampling import poisson_batch
from fedguard.model.lora import load_trainable_state, trainable_state
from fedguard.training.client_half import ClientHalfTrainer

PRIVATE = Path(__file__).with_name("dp_sgd_sst2.toml")


def _fmt(value: float | None) -> str:
    return "-" if value is None else (f"{value:.3g}" if value < 1000 else f"{value:.3e}")


def step_cost(repeats: int = 12) -> tuple[float, float]:
    """Median seconds of one client step (forward recompute + backward + optimiser) without and with DP-SGD,
    on the same Poisson batches of the default model's client half."""
    config = RunConfig()
    runtime = runtime_for(config, 2)
    shard = client_shard(config, 0, 3)
    start = trainable_state(runtime.client)
    rate = config.batch_size / len(shard)
    batches = [tokenize(runtime.tokenizer, shard, poisson_batch(len(shard), rate, 1, 1, s), config.max_length)
               for s in range(repeats)]
    times: dict[str, list[float]] = {"plain": [], "dp": []}
    for name in ("plain", "dp", "plain", "dp"):  # interleaved, so drift affects both alike
        load_trainable_state(runtime.client, start)
        trainer = (DPClientHalfTrainer(runtime.client, 1e-3, 1.0, 1.0, config.batch_size) if name == "dp"
                   else ClientHalfTrainer(runtime.client, 1e-3))
        try:
            for i, batch in enumerate(batches):
                hidden = trainer.send([batch], [i])[0].requires_grad_(True)
                grad = torch.autograd.grad(F.cross_entropy(hidden.mean(1)[:, :2], batch.labels), hidden)[0]
                t0 = time.perf_counter()
                trainer.apply_gradients([batch], [i], [grad])
                times[name].append(time.perf_counter() - t0)
        finally:
            trainer.close()
    load_trainable_state(runtime.client, start)
    return statistics.median(times["plain"]), statistics.median(times["dp"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=None, help="num-server-rounds for both runs (default: pyproject)")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "privacy_utility")
    parser.add_argument("--reuse", action="store_true",
                        help="print the table from runs already in --out (skip the two flwr runs)")
    args = parser.parse_args()
    private = tomllib.loads(PRIVATE.read_text())
    runs = {"non-private": {}, "private": private}
    results = {}
    for name, overrides in runs.items():
        out = args.out / name
        overrides = {**overrides, "output-dir": str(out)}
        if args.rounds:
            overrides["num-server-rounds"] = args.rounds
        metrics_path = out / "metrics.json"
        if not args.reuse:
            flwr_run(args.out / f"{name}-home", overrides, num_supernodes=3, timeout=3600)
        if not metrics_path.exists():
            raise SystemExit(f"{name} run wrote no {metrics_path}")
        metrics = json.loads(metrics_path.read_text())
        results[name] = (metrics, sum(r["seconds"] for r in metrics["rounds"]))
    plain, dp = step_cost()
    print("\nSST-2, 3 clients, federated split LoRA (accuracy on the 872-sentence dev set); epsilons are the worst"
          " client's, at delta = 1e-5")
    print("model eps: against third parties who see only the released model (whole-model DP-SGD, certified);"
          " server eps: against the server ('-' = no guarantee: something reaches it in clear)")
    print(f"{'run':<12} {'final acc':>9} {'best acc':>9} {'model eps cert':>15} {'model eps est':>14} "
          f"{'server eps cert':>16} {'activation eps':>15} {'rounds s':>8}")
    for name, (metrics, wall) in results.items():
        last = metrics["rounds"][-1]
        print(f"{name:<12} {metrics['final_accuracy']:9.4f} {metrics['best_accuracy']:9.4f} "
              f"{_fmt(last.get('epsilon_model_certified')):>15} {_fmt(last.get('epsilon_model_estimate')):>14} "
              f"{_fmt(last.get('epsilon_server_certified')):>16} {_fmt(last.get('epsilon_activation')):>15} "
              f"{wall:8.0f}")
        if "privacy" in metrics:
            print(f"{'':<12} server: {metrics['privacy']['server']}")
    gap = 100 * (results["non-private"][0]["final_accuracy"] - results["private"][0]["final_accuracy"])
    print(f"accuracy cost of privacy: {gap:.2f} points")
    print(f"client step time: {plain * 1000:.1f} ms without DP-SGD, {dp * 1000:.1f} ms with; ratio {dp / plain:.2f}x")


if __name__ == "__main__":
    main()
