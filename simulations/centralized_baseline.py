"""Centralized baseline: the same model, LoRA config and number of examples, with no federation and no split.

It reads the same run config as ``flwr run .`` (``pyproject.toml`` plus ``--run-config`` overrides), trains the
unsplit model with LoRA on the whole training set for ``num-server-rounds x clients x local-steps`` batches —
exactly as many examples as the federated run sees — and evaluates on the same held-out split after every
round's worth of examples. With ``--federated PATH/metrics.json`` it prints the federated accuracies beside
its own, so the cost of federation + split is visible in one table. With ``--write-baseline PATH`` it also
writes its rounds as the baseline file ``fedguard report`` draws beside the run (``RUN_DIR/baseline.json`` is
found without ``--baseline``; format in docs/report.md).

    python simulations/centralized_baseline.py --clients 3 --federated runs/latest/metrics.json \
        --write-baseline runs/latest/baseline.json
"""

from __future__ import annotations

import argparse
import json
import time
import tomllib
from pathlib import Path

import torch
import torch.nn.functional as F
from peft import get_peft_model

from fedguard.quiet import quiet_libraries
from fedguard.runtime import lora_settings, model_spec
from fedguard.config import RunConfig
from fedguard.data.batches import round_batches, tokenize
from fedguard.data.sources import load_dataset_splits
from fedguard.model.loading import load_task_model, load_tokenizer
from fedguard.model.lora import TRAINABLE_HEADS, peft_config
from fedguard.model.split import family_of
from fedguard.training.server_half import evaluate_joined

ROOT = Path(__file__).resolve().parents[1]


def _run_config(overrides: list[str]) -> RunConfig:
    raw = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    for item in overrides:
        key, _, value = item.partition("=")
        raw[key.strip()] = tomllib.loads(f"v = {value}")["v"]
    return RunConfig.from_run_config(raw)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=3, help="clients per round in the federated run (3)")
    parser.add_argument("--run-config", action="append", default=[], metavar="KEY=VALUE",
                        help="override a run-config value, as with flwr run (repeatable)")
    parser.add_argument("--federated", type=Path, help="metrics.json of the federated run to compare with")
    parser.add_argument("--write-baseline", type=Path, metavar="PATH",
                        help="also write the rounds as a report baseline file (e.g. runs/latest/baseline.json)")
    args = parser.parse_args()
    quiet_libraries()
    config = _run_config(args.run_config)
    torch.manual_seed(config.seed)
    data = load_dataset_splits(config.dataset, config.text_column, config.label_column)
    eval_data = data.dev if data.dev is not None else data.train
    if config.eval_examples:
        eval_data = eval_data.subset(list(range(min(config.eval_examples, len(eval_data)))))
    spec = model_spec(config, data.num_labels)
    tokenizer = load_tokenizer(spec)
    model = load_task_model(spec, tokenizer.pad_token_id)
    family = family_of(model)
    heads = tuple(h for h in TRAINABLE_HEADS if hasattr(model, h))
    model = get_peft_model(model, peft_config(lora_settings(config), family, heads))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=0.0)
    steps_per_round = args.clients * config.local_steps
    lengths = [len(t.split()) for t in data.train.text] if config.group_by_length else None
    order = sorted(range(len(eval_data)), key=lambda i: len(eval_data.text[i]))
    eval_batches = [tokenize(tokenizer, eval_data, order[i:i + 64], config.max_length) for i in range(0, len(order), 64)]

    def logits_of(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return model(input_ids=input_ids, attention_mask=attention_mask).logits

    rows, losses = [], []
    started = time.perf_counter()
    for server_round in range(1, config.num_server_rounds + 1):
        plan = round_batches(len(data.train), config.batch_size, steps_per_round, config.seed, 0, server_round, lengths)
        model.train()
        for indices in plan:
            batch = tokenize(tokenizer, data.train, indices, config.max_length)
            loss = F.cross_entropy(model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits,
                                   batch.labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        model.eval()
        result = evaluate_joined(logits_of, eval_batches)
        examples = server_round * steps_per_round * config.batch_size
        rows.append((server_round, examples, result.accuracy, time.perf_counter() - started))
        losses.append((result.loss, result.perplexity))
    federated = {}
    if args.federated:
        metrics = json.loads(args.federated.read_text())
        federated = {r["round"]: r["accuracy"] for r in metrics["rounds"]}
    print(f"\nCentralized LoRA baseline vs federated split ({args.clients} clients/round), "
          f"held-out accuracy on {len(eval_data)} examples")
    print(f"{'round':>5} {'examples':>9} {'centralized':>12} {'federated':>10} {'gap (pts)':>10} {'central s':>10}")
    for server_round, examples, accuracy, seconds in rows:
        fed = federated.get(server_round)
        fed_text = f"{fed:10.4f}" if fed is not None else f"{'-':>10}"
        gap = f"{100 * (accuracy - fed):10.2f}" if fed is not None else f"{'-':>10}"
        print(f"{server_round:>5} {examples:>9} {accuracy:12.4f} {fed_text} {gap} {seconds:10.1f}")
    if args.write_baseline:
        rounds = [{"round": r, "accuracy": acc, "loss": loss, **({"perplexity": ppl} if ppl is not None else {})}
                  for (r, _, acc, _), (loss, ppl) in zip(rows, losses)]
        args.write_baseline.parent.mkdir(parents=True, exist_ok=True)
        args.write_baseline.write_text(json.dumps({"label": "centralized LoRA", "rounds": rounds}, indent=1) + "\n")
        print(f"wrote {args.write_baseline}")


if __name__ == "__main__":
    main()
