"""Run the attacks against a finished run directory and write what they found.

:func:`attack_run` runs the chosen attacks and writes ``RUN_DIR/attack_report.json`` (per attack: the
adversary and release it models, its settings, metrics, a few sample reconstructions and a one-line verdict;
attacks run earlier and not re-run are kept) and an ``attacks`` entry in ``RUN_DIR/metrics.json`` (the
metrics and verdicts; read-modify-write, replaced atomically).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from fedguard import __version__
from fedguard.outputs.atomic_write import write_json_atomic
from fedguard.runtime import Examples, RunData, run_data
from fedguard.attacks import inversion as inv
from fedguard.attacks.client_updates import has_client_updates, run_client_update_membership
from fedguard.attacks.exposure import run_exposure
from fedguard.attacks.membership import (
    encode_rows,
    example_losses,
    load_reference_model,
    load_trained_model,
    membership_attacks,
    sample_members,
)
from fedguard.attacks.metrics import rouge_l_f1, text_words, token_recovery_rate, token_set_f1
from fedguard.attacks.run_dir import RunDirError, load_captures, load_run_config, load_trained_rows
from fedguard.config import RunConfig
from fedguard.data.canaries import evaluation_rows
from fedguard.model.loading import ModelSpec, load_task_model, load_tokenizer
from fedguard.model.split import split_model

REPORT_FILE = "attack_report.json"
ATTACKS = ("inversion", "membership", "client-update", "exposure")
SAMPLES = 5

INVERSION_THREAT = (
    "honest-but-curious server reconstructing a client's text from the hidden states it received at the split "
    "(it knows the base model and the run config, not the client's data, secrets or noise)")
MEMBERSHIP_THREAT = (
    "anyone holding the released model (base model + the run's merged adapter) deciding whether an example was "
    "in a client's training data from its loss")


@dataclass(frozen=True)
class AttackOptions:
    """``max_examples``: captured examples attacked (inversion) and members sampled (membership, with as many
    non-members); ``public_examples``: public sentences the learned inverter trains on; ``seed``: all the
    attacker's sampling; ``inverter``: its training settings; ``max_candidates``: candidate secrets scored per
    canary (exposure: all of them when there are at most this many, else a sample of this size)."""

    max_examples: int = 512
    public_examples: int = 400
    seed: int = 0
    inverter: inv.InverterSettings = field(default_factory=inv.InverterSettings)
    max_candidates: int = 10_000


# --------------------------------------------------------------------------------------------------------------
# Inversion
# --------------------------------------------------------------------------------------------------------------

def reconstruction_metrics(predicted: Sequence[torch.Tensor], truth: Sequence[torch.Tensor],
                           tokenizer: PreTrainedTokenizerBase, special: set[int]) -> dict:
    """Token recovery (all positions, and content positions without special tokens), and ROUGE-L F1 and
    token-set F1 of the decoded words against the true sentences (means over examples)."""
    rouge, f1 = [], []
    for pred, true in zip(predicted, truth):
        guess = text_words(tokenizer.decode(pred.tolist(), skip_special_tokens=True))
        real = text_words(tokenizer.decode(true.tolist(), skip_special_tokens=True))
        rouge.append(rouge_l_f1(guess, real))
        f1.append(token_set_f1(guess, real))
    return {
        "token_recovery_rate": token_recovery_rate(predicted, truth),
        "content_token_recovery_rate": token_recovery_rate(predicted, truth, ignore=special),
        "rouge_l_f1": float(np.mean(rouge)),
        "token_set_f1": float(np.mean(f1)),
    }


def _recovery_verdict(name: str, metrics: dict, baseline: float, positions: int) -> str:
    rate = metrics["content_token_recovery_rate"]
    if math.isnan(rate):
        return f"{name}: no content token to score"
    margin = max(0.05, 3 * math.sqrt(max(baseline * (1 - baseline), 1e-4) / max(positions, 1)))
    if rate >= baseline + margin:
        level = "severe" if rate >= 0.5 else "leaks"
        return (f"{name}: LEAKY ({level}): recovers {rate:.1%} of content tokens (ROUGE-L F1 "
                f"{metrics['rouge_l_f1']:.2f}) vs {baseline:.1%} without looking at the activations")
    return (f"{name}: no leakage detected: recovers {rate:.1%} of content tokens vs {baseline:.1%} without "
            "looking at the activations")


def _public_text(config: RunConfig, data: RunData, count: int, seed: int) -> tuple[Examples, list[int]]:
    if data.dev is None or len(data.dev) == 0:
        raise RunDirError(f"dataset {config.dataset!r} has no held-out split to serve as the attacker's public "
                          "text (the learned inverter must never train on a client's shard)")
    allowed = np.asarray(evaluation_rows(config, len(data.dev)))  # not the label-flip canaries, nor their controls
    rows = allowed[np.random.default_rng(seed).permutation(len(allowed))[:count]]
    return data.dev, sorted(int(r) for r in rows)


def run_inversion(run_dir: Path, options: AttackOptions = AttackOptions()) -> dict[str, dict]:
    """Nearest-neighbour and learned inversion of the captured activations; one report entry each."""
    run_dir = Path(run_dir)
    config = load_run_config(run_dir)
    captures = load_captures(run_dir)
    if len(captures) > options.max_examples:
        pick = np.random.default_rng(options.seed).permutation(len(captures))[:options.max_examples]
        captures = captures.subset(sorted(int(i) for i in pick))
    model_name, task = captures.meta.get("model", config.model), captures.meta.get("task", config.task)
    data = run_data(task, captures.meta.get("dataset", config.dataset), config.text_column, config.label_column)
    spec = ModelSpec(model_name, task, max(data.num_labels, 2) if task == "classification" else 0)
    tokenizer = load_tokenizer(spec)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = load_task_model(spec, tokenizer.pad_token_id).eval()
    special = set(tokenizer.all_special_ids)
    truth = captures.input_ids
    positions = sum(int(sum(1 for t in ids.tolist() if t not in special)) for ids in truth)
    privacy = captures.activation_privacy
    run_settings = {"split-layer": captures.split_layer, "act-clip-norm": captures.meta.get("act-clip-norm"),
                    "act-noise-multiplier": captures.meta.get("act-noise-multiplier"),
                    "examples": len(captures), "positions": sum(len(t) for t in truth),
                    "content-positions": positions, "clients": sorted(set(captures.partitions))}
    vocab = int(inv.input_embedding_table(model).shape[0])
    chance = 1.0 / vocab
    out: dict[str, dict] = {}

    started = time.perf_counter()
    predicted = inv.nearest_neighbour_inversion(captures.hidden, model)
    metrics = reconstruction_metrics(predicted, truth, tokenizer, special)
    metrics["chance_token_recovery_rate"] = chance
    note = ("" if captures.split_layer == 0 else
            f" (split-layer={captures.split_layer}: compared with layer-0 embeddings, a weak heuristic here)")
    out["nn-inversion"] = {
        "attack": "nearest-neighbour inversion against the embedding table (cosine similarity)" + note,
        "threat": INVERSION_THREAT,
        "release": "hidden states at the split (after the client's clipping and noise)",
        "settings": {**run_settings, "metric": "cosine", "vocabulary": vocab},
        "metrics": metrics,
        "samples": _samples(predicted, truth, tokenizer),
        "verdict": _recovery_verdict("nearest-neighbour inversion", metrics, chance, positions),
        "seconds": time.perf_counter() - started,
    }

    started = time.perf_counter()
    public, rows = _public_text(config, data, options.public_examples, options.seed)
    max_length = int(captures.meta.get("max-length", config.max_length))
    batches = [(b.input_ids, b.attention_mask) for b in encode_rows(tokenizer, public, rows, max_length, 32)]
    client, _ = split_model(model, captures.split_layer)
    hidden = inv.public_hidden_states(client, batches, privacy, options.inverter.views, options.seed)
    inverter = inv.train_learned_inverter(hidden, inv.input_embedding_table(model), privacy, options.inverter)
    predicted = inverter.predict(captures.hidden)
    metrics = reconstruction_metrics(predicted, truth, tokenizer, special)
    prior = inv.positional_prior(hidden.input_ids, [len(t) for t in truth])
    baseline = reconstruction_metrics(prior, truth, tokenizer, special)
    metrics["prior_baseline"] = baseline
    metrics["chance_token_recovery_rate"] = chance
    metrics["train_loss_per_epoch"] = hidden.history
    out["learned-inversion"] = {
        "attack": "learned inversion: per-position MLP on split-layer hidden states (noise-aware), trained on "
                  "public text passed through the base model's client half",
        "threat": INVERSION_THREAT,
        "release": "hidden states at the split (after the client's clipping and noise)",
        "settings": {**run_settings, **asdict(options.inverter), "public_examples": len(rows),
                     "public_text": f"held-out (dev) split of {captures.meta.get('dataset', config.dataset)}",
                     "attacker_weights": "base model (the client adapter at round 1; later rounds drift from it)"},
        "metrics": metrics,
        "samples": _samples(predicted, truth, tokenizer),
        "verdict": _recovery_verdict("learned inversion", metrics,
                                     max(chance, baseline["content_token_recovery_rate"]), positions),
        "seconds": time.perf_counter() - started,
    }
    return out


def _samples(predicted: Sequence[torch.Tensor], truth: Sequence[torch.Tensor],
             tokenizer: PreTrainedTokenizerBase) -> list[dict]:
    return [{"true": tokenizer.decode(t.tolist(), skip_special_tokens=True),
             "reconstructed": tokenizer.decode(p.tolist(), skip_special_tokens=True)}
            for p, t in list(zip(predicted, truth))[:SAMPLES]]


# --------------------------------------------------------------------------------------------------------------
# Membership inference
# --------------------------------------------------------------------------------------------------------------

def run_membership(run_dir: Path, options: AttackOptions = AttackOptions()) -> dict[str, dict]:
    """Loss-threshold and calibrated membership inference against the released (merged) model."""
    run_dir = Path(run_dir)
    started = time.perf_counter()
    config = load_run_config(run_dir)
    trained = load_trained_rows(run_dir)
    data = run_data(config.task, config.dataset, config.text_column, config.label_column)
    members, non_members = sample_members(trained, len(data.train), options.max_examples, options.seed)
    num_labels = data.num_labels if config.task == "classification" else 0
    tokenizer = load_tokenizer(ModelSpec(config.model, config.task, num_labels))
    losses = {}
    for name, model in (("trained", load_trained_model(run_dir, config, num_labels)),
                        ("reference", load_reference_model(config, num_labels))):
        losses[name] = [example_losses(model, encode_rows(tokenizer, data.train, rows, config.max_length))
                        for rows in (members, non_members)]
        del model
    scores = membership_attacks(losses["trained"][0], losses["trained"][1], losses["reference"][0],
                                losses["reference"][1])
    metrics = {name: score.to_dict() for name, score in scores.items()}
    metrics["mean_loss"] = {"members": float(losses["trained"][0].mean()),
                            "non_members": float(losses["trained"][1].mean()),
                            "members_reference": float(losses["reference"][0].mean()),
                            "non_members_reference": float(losses["reference"][1].mean())}
    best_name, best = max(scores.items(), key=lambda item: item[1].auc)
    if best.z > 3:
        verdict = (f"membership inference: LEAKY: {best_name} attack AUC {best.auc:.3f} "
                   f"(chance 0.5 ± {best.auc_null_se:.3f}), TPR {best.tpr_at_fpr:.1%} at {best.fpr:.0%} FPR")
    else:
        verdict = (f"membership inference: no membership signal detected: best AUC {best.auc:.3f} is within "
                   f"3 standard errors ({best.auc_null_se:.3f}) of chance with {len(members)} members")
    return {"membership": {
        "attack": "loss-threshold (score = -loss) and calibrated (score = -(loss - reference loss); reference = "
                  "the model before fine-tuning) membership inference",
        "threat": MEMBERSHIP_THREAT,
        "release": "the merged adapter (adapter/) on the base model: the joined model after the last round",
        "settings": {"members": len(members), "non_members": len(non_members), "trained_rows": len(trained),
                     "non_member_source": "training-set rows no client trained on (same distribution)",
                     "loss": "class cross-entropy" if config.task == "classification"
                     else "mean response-token cross-entropy", "seed": options.seed,
                     "dp-noise-multiplier": config.dp_noise_multiplier,
                     "dp-target-epsilon": config.dp_target_epsilon},
        "metrics": metrics,
        "verdict": verdict,
        "seconds": time.perf_counter() - started,
    }}


# --------------------------------------------------------------------------------------------------------------
# Both, and the files
# --------------------------------------------------------------------------------------------------------------

def attack_run(run_dir: Path, which: str = "all", options: AttackOptions = AttackOptions()) -> dict:
    """Run ``which`` (one of :data:`ATTACKS`, or ``all``: every attack the run has the captures for) against
    ``run_dir``, write
    ``attack_report.json`` and the ``attacks`` entry of ``metrics.json``, and return the report."""
    run_dir = Path(run_dir).expanduser()
    if which not in (*ATTACKS, "all"):
        raise ValueError(f"attack {which!r}: allowed {', '.join(ATTACKS)}, all")
    config = load_run_config(run_dir)
    results: dict[str, dict] = {}
    if which in ("inversion", "all"):
        results.update(run_inversion(run_dir, options))
    if which in ("membership", "all"):
        results.update(run_membership(run_dir, options))
    if which == "client-update" or (which == "all" and has_client_updates(run_dir)):
        data = run_data(config.task, config.dataset, config.text_column, config.label_column)
        results.update(run_client_update_membership(run_dir, config, data, options.max_examples, options.seed))
    if which == "exposure" or (which == "all" and config.canaries > 0):
        data = run_data(config.task, config.dataset, config.text_column, config.label_column)
        results.update(run_exposure(run_dir, config, data, options.max_candidates, options.seed))
    path = run_dir / REPORT_FILE
    report = json.loads(path.read_text()) if path.is_file() else {}
    report.update({
        "run_dir": str(run_dir.resolve()),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "fedguard_version": __version__,
        "run": {key: config.to_dict()[key] for key in (
            "model", "task", "split-layer", "label-protection", "act-clip-norm", "act-noise-multiplier",
            "dp-noise-multiplier", "dp-target-epsilon", "dp-max-grad-norm", "num-server-rounds", "local-steps",
            "batch-size", "seed", "canaries", "canary-repeats")},
    })
    report.setdefault("attacks", {}).update(results)
    write_json_atomic(path, _finite(report))
    metrics_path = run_dir / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
    metrics["attacks"] = _finite({"report": REPORT_FILE, **{
        name: {"metrics": entry["metrics"], "verdict": entry["verdict"]} for name, entry in report["attacks"].items()}})
    write_json_atomic(metrics_path, metrics)
    return report


def _finite(value: object) -> object:
    """JSON has no NaN: write it as null."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
