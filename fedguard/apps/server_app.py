"""The FedGuard ServerApp: validates the run config, runs the split rounds, writes the run outputs."""

from __future__ import annotations

import json
import logging
import random
import sys
from pathlib import Path

import torch
from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedguard.outputs.capture import record_server_adapters
from fedguard.apps.checkpoint import load_checkpoint, save_checkpoint
from fedguard.apps.model_card import write_model_card
from fedguard.apps.progress import RunProgress
from fedguard.outputs.atomic_write import write_json_atomic
from fedguard.apps.run_output import SampleWriter, save_adapters
from fedguard.runtime import data_for, lora_settings, server_runtime
from fedguard.apps.server_privacy import ServerPrivacy, privacy_summary, server_guarantee_gaps
from fedguard.apps.split_rounds import SplitRoundRunner, as_dict
from fedguard.config import ConfigError, RunConfig
from fedguard.data.canaries import check_canaries, evaluation_rows
from fedguard.model.loading import resolve_model_source
from fedguard.model.device import DeviceError
from fedguard.model.split import SplitError
from fedguard.model.lora import trainable_state
from fedguard.tracking import open_trackers
from strategies import build_strategy
from strategies.privacy_budget import PrivacyBudgetStrategy

app = ServerApp()
log = logging.getLogger("fedguard")
USER_ERRORS = (ConfigError, SplitError, DeviceError, FileNotFoundError)  # their message says what to change


def _setup_logging() -> None:
    if not log.handlers:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(levelname)s fedguard: %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run FedGuard. An error that ends the run is logged with its traceback, then summarised in one line at
    the end of the log and in ``metrics.json["error"]`` (``flwr run`` exits 0 either way)."""
    _setup_logging()
    out: Path | None = None
    try:
        config = RunConfig.from_run_config(context.run_config)
        out = Path(config.output_dir).expanduser().resolve()
        out.mkdir(parents=True, exist_ok=True)
        run(grid, config, out)
    except Exception as err:  # noqa: BLE001 - every error ends the run the same way: logged, then summarised
        summary = " ".join(f"{type(err).__name__}: {err}".split())
        if not isinstance(err, USER_ERRORS):  # a configuration or model the user can fix needs no traceback
            log.error("the run failed", exc_info=True)
        if out is not None:
            _record_error(out, summary)
        log.error("FedGuard run FAILED: %s%s", summary, f" (recorded in {out / 'metrics.json'})" if out else "")


def _record_error(out: Path, summary: str) -> None:
    path = out / "metrics.json"
    try:
        metrics = json.loads(path.read_text()) if path.exists() else {"rounds": []}
    except (OSError, json.JSONDecodeError):
        metrics = {"rounds": []}
    metrics["error"] = summary
    write_json_atomic(path, metrics)


def run(grid: Grid, config: RunConfig, out: Path) -> None:
    """The run itself: validate, train ``num-server-rounds`` rounds, write the outputs (raises on error)."""
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
    runtime = server_runtime(config, data.num_labels)  # SplitError (architecture, split-layer), DeviceError
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
    metrics["privacy"] = privacy_summary(config)
    metrics.pop("error", None)  # a resumed run starts clean
    num_clients = len(list(grid.get_node_ids()))
    tracker = open_trackers(config.tracking, out, config.to_dict(), resume=checkpoint is not None)
    progress = RunProgress(config.num_server_rounds)
    runner.on_batches = progress.batches
    try:
        _train_rounds(config, out, runner, runtime, privacy, metrics, samples, tracker, progress,
                      checkpoint.round + 1 if checkpoint is not None else 1)
    except BaseException as err:
        tracker.close(error=" ".join(f"{type(err).__name__}: {err}".split()))
        runner.close()
        raise
    runner.close()
    source, _ = resolve_model_source(config.model)
    save_adapters(out, runtime.client, runtime.server, runtime.family, lora_settings(config), source)
    write_model_card(out / "adapter", config, metrics, source, num_clients)
    tracker.log_artifacts([out / "metrics.json", out / "privacy_ledger.json", out / "adapter"])
    tracker.close()
    log.info("adapters, model card and metrics written to %s", out)
    if not metrics["rounds"]:
        log.warning("no round ran")
        return
    log.info("best accuracy %.4f (round %d); final accuracy %.4f",
             metrics["best_accuracy"], metrics["best_round"], metrics["final_accuracy"])


def _train_rounds(config: RunConfig, out: Path, runner: SplitRoundRunner, runtime, privacy: ServerPrivacy,  # noqa: ANN001
                  metrics: dict, samples: SampleWriter | None, tracker, progress: RunProgress, first: int) -> None:  # noqa: ANN001
    for server_round in range(first, config.num_server_rounds + 1):
        if config.private and runner.eligible_clients() < config.min_fit_clients:
            log.warning("stopping before round %d: fewer than min-fit-clients=%d clients are within their "
                        "privacy budgets (%s)", server_round, config.min_fit_clients, privacy.excluded)
            break
        if config.capture_activations > 0:  # evaluation only: what this round's clients and server start from
            sent, server_start = dict(runner.global_adapter), trainable_state(runtime.server)
        progress.round_started(server_round)
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
        tracker.log_round(server_round, metrics["rounds"][-1])
        progress.round_finished(record)
        log.info("round %d time: clients %.1fs, server %.1fs, messaging %.1fs, eval %.1fs",
                 record.round, record.client_seconds, record.server_seconds, record.messaging_seconds,
                 record.eval_seconds)
        if config.private:
            log.info("round %d privacy (worst client so far, delta=%g): %s", record.round, config.dp_delta,
                     describe_privacy(record, config))


def describe_evaluation(result) -> str:  # noqa: ANN001 - an Evaluation or a RoundRecord
    if result.perplexity is not None:
        return (f"held-out loss {result.loss:.4f} per response token, perplexity {result.perplexity:.2f}, "
                f"next-token accuracy {result.accuracy:.4f}")
    return f"accuracy {result.accuracy:.4f}, loss {result.loss:.4f}"


def check_dp_target(config: RunConfig, train_size: int, num_nodes: int) -> None:
    """Fail before training if no noise multiplier reaches ``dp-target-epsilon`` over the planned steps.

    Each client solves its own σ (certified, replace-one) from its own shard size and reports it with its
    first chunk (logged then); this pre-flight check solves it the same way for a client holding an even
    share of the training set over the connected clients — a client with a smaller shard needs more noise.
    """
    if config.dp_target_epsilon <= 0:
        return
    from fedguard.apps.client_privacy import solved_noise_multiplier

    rate = min(1.0, config.batch_size * max(1, num_nodes) / max(1, train_size))
    steps = config.num_server_rounds * config.local_steps
    try:
        sigma = solved_noise_multiplier(config.dp_target_epsilon, config.dp_delta, rate, steps)
    except ValueError as err:
        raise ValueError(f"dp-target-epsilon={config.dp_target_epsilon:g} cannot be reached over {steps} "
                         f"steps at sampling rate ~{rate:.3g}: {err}") from err
    log.info("dp-target-epsilon %g (certified, replace-one, delta %g): a client with an even share of the data "
             "(sampling rate ~%.3g, %d steps) solves sigma = %.3f; each client reports its own with its first "
             "chunk", config.dp_target_epsilon, config.dp_delta, rate, steps, sigma)


def describe_privacy(record, config: RunConfig) -> str:  # noqa: ANN001 - a RoundRecord
    """Which epsilon holds against which adversary, certified bound first (estimates are not guarantees)."""
    parts = []
    if record.epsilon_model_certified is not None:
        parts.append(f"released model, vs third parties (whole-model DP-SGD, replace-one) eps <= "
                     f"{record.epsilon_model_certified:.3f} certified ({record.epsilon_model_estimate:.3f} "
                     f"{config.accountant} estimate, not a guarantee)")
    else:
        parts.append("released model: no DP-SGD, no guarantee")
    if record.epsilon_server_certified is not None:
        parts.append(f"vs the server (activations + labels + unamplified DP-SGD, most-sampled example) eps <= "
                     f"{record.epsilon_server_certified:.3f} certified")
    else:
        parts.append("vs the server: no guarantee (" + "; ".join(server_guarantee_gaps(config)) + ")")
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
