"""The FedGuard ServerApp: validates the run config, runs the split rounds, writes the run outputs."""

from __future__ import annotations

import logging
import random
import sys
from pathlib import Path

import torch
from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedguard.apps.capture import record_server_adapters
from fedguard.apps.checkpoint import load_checkpoint, save_checkpoint
from fedguard.apps.atomic_write import write_json_atomic
from fedguard.apps.run_output import SampleWriter, save_adapters
from fedguard.apps.runtime import data_for, lora_settings, runtime_for
from fedguard.apps.server_privacy import ServerPrivacy
from fedguard.apps.split_rounds import SplitRoundRunner, as_dict
from fedguard.config import RunConfig
from fedguard.data.canaries import check_canaries, evaluation_rows
from fedguard.model.loading import resolve_model_source
from fedguard.model.lora import trainable_state
from strategies import build_strategy
from strategies.privacy_budget import PrivacyBudgetStrategy

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
    if config.task == "causal-lm" and not config.u_shape:
        log.warning("task='causal-lm' with label-protection=%r: the labels are the text itself, so the server "
                    "receives every client's text; use 'u-shape' to keep it on the clients",
                    config.label_protection)
    data = data_for(config)
    if data.dev is not None:  # classification canaries and controls are dev rows with flipped labels: not scored
        eval_data = data.dev.subset(evaluation_rows(config, len(data.dev)))
    else:
        log.warning("dataset has no dev/validation split: evaluating on the first 1000 training rows")
        eval_data = data.train.subset(list(range(min(1000, len(data.train)))))
    if config.eval_examples:
        eval_data = eval_data.subset(list(range(min(config.eval_examples, len(eval_data)))))
    check_dp_target(config, len(data.train), len(list(grid.get_node_ids())))
    runtime = runtime_for(config, data.num_labels)  # raises SplitError for a split-layer out of range
    check_canaries(config, runtime.tokenizer, data.dev)
    write_json_atomic(out / "config.json", config.to_dict())
    privacy = ServerPrivacy(config, out)
    privacy.save()
    strategy = PrivacyBudgetStrategy(build_strategy(config), privacy)
    runner = SplitRoundRunner(config, runtime, strategy, grid, eval_data, data.num_labels, privacy)
    log.info("output directory: %s", out)
    checkpoint = load_checkpoint(out) if config.resume else None
    samples = (SampleWriter(out / "generations.jsonl", runtime, eval_data, keep=checkpoint is not None)
               if config.task == "causal-lm" else None)
    if checkpoint is not None:
        runner.restore(checkpoint)
        metrics = checkpoint.metrics
        log.info("resuming after round %d from %s (privacy ledger kept: %d client(s))", checkpoint.round,
                 out / "checkpoint.pt", len(privacy.ledger.clients()))
    else:
        if config.resume:
            log.warning("resume=true but %s has no checkpoint.pt: starting a new run", out)
        initial = runner.evaluate()
        log.info("round 0 (before training): %s on %d held-out examples", describe_evaluation(initial),
                 len(eval_data))
        metrics = {"initial": {"accuracy": initial.accuracy, "loss": initial.loss, "perplexity": initial.perplexity,
                               "eval_examples": len(eval_data)}, "rounds": []}
        if samples is not None:
            samples.write(0)
    first = checkpoint.round + 1 if checkpoint is not None else 1
    for server_round in range(first, config.num_server_rounds + 1):
        if config.private and runner.eligible_clients() < config.min_fit_clients:
            log.warning("stopping before round %d: fewer than min-fit-clients=%d clients are within their "
                        "privacy budgets (%s)", server_round, config.min_fit_clients, privacy.excluded)
            break
        if config.capture_activations > 0:  # evaluation only: what this round's clients and server start from
            sent, server_start = dict(runner.global_adapter), trainable_state(runtime.server)
        record = runner.run_round(server_round)
        metrics["rounds"].append(as_dict(record))
        best = max(metrics["rounds"], key=lambda r: r["accuracy"])
        metrics.update(best_accuracy=best["accuracy"], best_round=best["round"], final_accuracy=record.accuracy)
        if record.perplexity is not None:
            metrics["final_perplexity"] = record.perplexity
        write_json_atomic(out / "metrics.json", metrics)
        save_checkpoint(out, runner.checkpoint(server_round, metrics))
        if config.capture_activations > 0:  # evaluation only: joined with the clients' captured updates
            record_server_adapters(out, server_round, trainable_state(runtime.server), sent, server_start)
        if samples is not None:
            samples.write(server_round)
        log.info(
            "round %d: %s | %.1fs (clients %.1fs, server %.1fs, messaging %.1fs, eval %.1fs)"
            " | up %.2f MB, down %.2f MB | %d/%d clients aggregated",
            record.round, describe_evaluation(record), record.seconds, record.client_seconds,
            record.server_seconds, record.messaging_seconds, record.eval_seconds, record.bytes_up / 1e6,
            record.bytes_down / 1e6, record.clients_aggregated, record.clients_sampled,
        )
        if config.private:
            log.info("round %d privacy (worst client so far, delta=%g): %s", record.round, config.dp_delta,
                     describe_privacy(record))
    source, _ = resolve_model_source(config.model)
    save_adapters(out, runtime.client, runtime.server, runtime.family, lora_settings(config), source)
    log.info("adapters and metrics written to %s", out)
    if not metrics["rounds"]:
        log.warning("no round ran")
        return
    log.info("best accuracy %.4f (round %d); final accuracy %.4f",
             metrics["best_accuracy"], metrics["best_round"], metrics["final_accuracy"])


def describe_evaluation(result) -> str:  # noqa: ANN001 - an Evaluation or a RoundRecord
    if result.perplexity is not None:
        return (f"held-out loss {result.loss:.4f} per response token, perplexity {result.perplexity:.2f}, "
                f"next-token accuracy {result.accuracy:.4f}")
    return f"accuracy {result.accuracy:.4f}, loss {result.loss:.4f}"


def check_dp_target(config: RunConfig, train_size: int, num_nodes: int) -> None:
    """Fail before training if no noise multiplier reaches ``dp-target-epsilon`` over the planned steps.

    Each client solves its own sigma from its shard size; this checks the typical client (the training set
    split evenly over the connected clients).
    """
    if config.dp_target_epsilon <= 0:
        return
    from fedguard.privacy import noise_multiplier_for

    rate = min(1.0, config.batch_size * max(1, num_nodes) / max(1, train_size))
    steps = config.num_server_rounds * config.local_steps
    try:
        sigma = noise_multiplier_for(config.dp_target_epsilon, config.dp_delta, rate, steps)
    except ValueError as err:
        raise ValueError(f"dp-target-epsilon={config.dp_target_epsilon:g} cannot be reached over {steps} "
                         f"steps at sampling rate ~{rate:.3g}: {err}") from err
    log.info("dp-target-epsilon %g: clients will use a noise multiplier of about %.3f (sampling rate ~%.3g, "
             "%d steps, delta %g)", config.dp_target_epsilon, sigma, rate, steps, config.dp_delta)


def describe_privacy(record) -> str:  # noqa: ANN001 - a RoundRecord
    """One line per release: which epsilon covers it, certified bound first (estimates are not guarantees)."""
    parts = []
    if record.epsilon_adapter_certified is not None:
        parts.append(f"adapter (DP-SGD, example-level add/remove) eps <= {record.epsilon_adapter_certified:.3f} "
                     f"certified, {record.epsilon_adapter_estimate:.3f} logged estimate")
    else:
        parts.append("adapter: no DP-SGD, no guarantee")
    if record.epsilon_activation is not None:
        parts.append(f"activations (local mechanism, replace-one, per example over all its releases) eps <= "
                     f"{record.epsilon_activation:.3f} certified")
    else:
        parts.append("activations: no noise, no guarantee")
    if record.epsilon_label is not None:
        parts.append(f"labels (randomised response) eps = {record.epsilon_label:.3f}")
    else:
        parts.append("labels: sent in clear")
    if record.clients_refused:
        parts.append(f"{len(record.clients_refused)} client(s) refused")
    return "; ".join(parts)
