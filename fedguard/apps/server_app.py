"""The FedGuard ServerApp: validates the run config, runs the split rounds, writes the run outputs."""

from __future__ import annotations

import logging
import random
import sys
from pathlib import Path

import torch
from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedguard.apps.run_output import save_adapters, write_json_atomic
from fedguard.apps.runtime import dataset_splits, lora_settings, runtime_for
from fedguard.apps.split_rounds import SplitRoundRunner, as_dict
from fedguard.config import RunConfig
from fedguard.model.loading import resolve_model_source
from strategies import build_strategy

app = ServerApp()
log = logging.getLogger("fedguard")


def _setup_logging() -> None:
    if not log.handlers:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(levelname)s fedguard: %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False


@app.main()
def main(grid: Grid, context: Context) -> None:
    _setup_logging()
    config = RunConfig.from_run_config(context.run_config)
    out = Path(config.output_dir).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    random.seed(config.seed)
    torch.manual_seed(config.seed)
    data = dataset_splits(config.dataset, config.text_column, config.label_column)
    eval_data = data.dev if data.dev is not None else data.train.subset(list(range(min(1000, len(data.train)))))
    if data.dev is None:
        log.warning("dataset has no dev/validation split: evaluating on the first 1000 training rows")
    if config.eval_examples:
        eval_data = eval_data.subset(list(range(min(config.eval_examples, len(eval_data)))))
    runtime = runtime_for(config, data.num_labels)  # raises SplitError for a split-layer out of range
    write_json_atomic(out / "config.json", config.to_dict())
    strategy = build_strategy(config)
    runner = SplitRoundRunner(config, runtime, strategy, grid, eval_data, data.num_labels)
    log.info("output directory: %s", out)
    accuracy, loss = runner.evaluate()
    log.info("round 0 (before training): accuracy %.4f, loss %.4f on %d held-out examples",
             accuracy, loss, len(eval_data))
    metrics: dict = {"initial": {"accuracy": accuracy, "loss": loss, "eval_examples": len(eval_data)}, "rounds": []}
    for server_round in range(1, config.num_server_rounds + 1):
        record = runner.run_round(server_round)
        metrics["rounds"].append(as_dict(record))
        best = max(metrics["rounds"], key=lambda r: r["accuracy"])
        metrics.update(best_accuracy=best["accuracy"], best_round=best["round"], final_accuracy=record.accuracy)
        write_json_atomic(out / "metrics.json", metrics)
        log.info(
            "round %d: accuracy %.4f, loss %.4f | %.1fs (clients %.1fs, server %.1fs, messaging %.1fs, eval %.1fs)"
            " | up %.2f MB, down %.2f MB | %d/%d clients aggregated",
            record.round, record.accuracy, record.loss, record.seconds, record.client_seconds,
            record.server_seconds, record.messaging_seconds, record.eval_seconds, record.bytes_up / 1e6,
            record.bytes_down / 1e6, record.clients_aggregated, record.clients_sampled,
        )
    source, _ = resolve_model_source(config.model)
    save_adapters(out, runtime.client, runtime.server, runtime.family, lora_settings(config), source)
    log.info("adapters and metrics written to %s", out)
    log.info("best accuracy %.4f (round %d); final accuracy %.4f",
             metrics["best_accuracy"], metrics["best_round"], metrics["final_accuracy"])
