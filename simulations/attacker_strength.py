"""How much a better-provisioned attacker gains: one learned inverter through a finished run's final client
weights, with more public text, a wider window or a bigger network than ``fedguard attack``'s defaults.

The inverter is FedGuard's own (:mod:`fedguard.attacks.inversion`), trained as the report trains
``learned-inversion-final`` (public text through the rebuilt client half with the run's final adapter, then the
run's mechanism), and scored on the same captured examples (a seeded sample of ``--max-examples``). Public text
is the dev split (``--public dev``, as the report) or training rows of the run's data set that were never
captured (``--public train``: in-distribution text an attacker with a large public corpus would have). Prints
one JSON line of metrics. Usage::

    python simulations/attacker_strength.py RUN_DIR --public train --public-examples 4000
    python simulations/attacker_strength.py RUN_DIR --public-examples 800 --window 3 --width 1024 --epochs 12
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from fedguard.attacks import inversion as inv
from fedguard.attacks.client_weights import attacker_client_half
from fedguard.attacks.membership import encode_rows
from fedguard.attacks.report import reconstruction_metrics, sentiment_token_set
from fedguard.attacks.run_dir import load_captures, load_run_config
from fedguard.model.loading import ModelSpec, load_tokenizer
from fedguard.runtime import run_data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--public", choices=("dev", "train"), default="dev")
    parser.add_argument("--public-examples", type=int, default=400)
    parser.add_argument("--window", type=int, default=1)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--max-examples", type=int, default=192)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    started = time.perf_counter()
    config, captures = load_run_config(args.run_dir), load_captures(args.run_dir)
    pick = np.random.default_rng(args.seed).permutation(len(captures))[:args.max_examples]
    captures = captures.subset(sorted(int(i) for i in pick))
    data = run_data(config.task, config.dataset, config.text_column, config.label_column)
    spec = ModelSpec(config.model, config.task, max(data.num_labels, 2) if config.task == "classification" else 0)
    tokenizer = load_tokenizer(spec)
    attacker = attacker_client_half(args.run_dir, config, config.model, config.task, spec.num_labels,
                                    captures.split_layer, int(getattr(config, "bottleneck_dim", 0)))
    weights = attacker.use("final")
    order = np.random.default_rng(args.seed + 1)
    if args.public == "train":
        captured = set(captures.rows)
        public = data.train
        rows = [int(r) for r in order.permutation(len(public)) if int(r) not in captured][:args.public_examples]
    else:
        public = data.dev
        rows = [int(r) for r in order.permutation(len(public))[:args.public_examples]]
    batches = [(b.input_ids, b.attention_mask)
               for b in encode_rows(tokenizer, public, sorted(rows), config.max_length, 32)]
    mechanism = captures.mechanism(config)
    settings = inv.InverterSettings(window=args.window, width=args.width, epochs=args.epochs, seed=args.seed)
    hidden = inv.public_hidden_states(attacker.half, batches, mechanism, settings.views, args.seed,
                                      train=str(getattr(config, "activation_reuse", "none")) == "none")
    inverter = inv.train_learned_inverter(hidden, inv.input_embedding_table(attacker.model), mechanism, settings)
    special = set(tokenizer.all_special_ids)
    metrics = reconstruction_metrics(inverter.predict(captures.hidden), captures.input_ids, tokenizer, special,
                                     sentiment=sentiment_token_set(data, tokenizer, config.dataset, special))
    print(json.dumps({"run": str(args.run_dir), "weights": weights, "public": args.public,
                      "public_examples": len(rows), "window": args.window, "width": args.width,
                      "epochs": args.epochs, "examples": len(captures), "seconds": round(time.perf_counter() - started),
                      **{k: round(v, 4) for k, v in metrics.items() if isinstance(v, float)}}))


if __name__ == "__main__":
    torch.set_num_threads(2)
    main()
