"""Run the attacks against a finished run directory and write what they found.

:func:`attack_run` runs the chosen attacks and writes ``RUN_DIR/attack_report.json`` (per attack: the
adversary and release it models, its settings, metrics, a few sample reconstructions and a one-line verdict;
attacks run earlier and not re-run are kept) and an ``attacks`` entry in ``RUN_DIR/metrics.json`` (the
metrics and verdicts; read-modify-write, replaced atomically).
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
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
from fedguard.attacks.client_weights import AttackerHalf, attacker_client_half
from fedguard.attacks.metrics import (
    SENTIMENT_MIN_COUNT,
    SENTIMENT_MIN_LOG_ODDS,
    exact_match_rate,
    rouge_l_f1,
    sentiment_tokens,
    text_words,
    token_recovery_rate,
    token_set_f1,
)
from fedguard.attacks.optimisation import (
    BigramPrior,
    OptimisationSettings,
    objective_scale_note,
    optimisation_inversion,
)
from fedguard.attacks.run_dir import Captures, RunDirError, load_captures, load_run_config, load_trained_rows
from fedguard.config import RunConfig
from fedguard.data.canaries import evaluation_rows
from fedguard.mechanisms.embedding_dchi import EmbeddingDChi
from fedguard.model.loading import ModelSpec, load_tokenizer

REPORT_FILE = "attack_report.json"
ATTACKS = ("inversion", "membership", "client-update", "exposure")
SAMPLES = 5

INVERSION_THREAT = (
    "honest-but-curious server reconstructing a client's text from the hidden states it received at the split "
    "(it knows the base model, the client adapter it receives every round, the run config and the mechanism, "
    "and public text, and sees every release of every example; not the client's data, secrets or noise draws)")
MEMBERSHIP_THREAT = (
    "anyone holding the released model (base model + the run's merged adapter) deciding whether an example was "
    "in a client's training data from its loss")


@dataclass(frozen=True)
class AttackOptions:
    """``max_examples``: captured examples attacked (inversion) and members sampled (membership, with as many
    non-members); ``public_examples``: public sentences the learned inverter trains on; ``seed``: all the
    attacker's sampling; ``inverter``: its training settings; ``max_candidates``: candidate secrets scored per
    canary (exposure: all of them when there are at most this many, else a sample of this size);
    ``optimisation``: the optimisation attack's settings (its ``max_examples``: how many of the attacked
    examples it reconstructs, 0 = all)."""

    max_examples: int = 512
    public_examples: int = 400
    seed: int = 0
    inverter: inv.InverterSettings = field(default_factory=inv.InverterSettings)
    max_candidates: int = 10_000
    optimisation: OptimisationSettings = field(default_factory=OptimisationSettings)


# --------------------------------------------------------------------------------------------------------------
# Inversion
# --------------------------------------------------------------------------------------------------------------

BEST_METRICS = ("token_recovery_rate", "content_token_recovery_rate", "content_token_recovery_above_prior",
                "exact_match_rate", "rouge_l_f1", "token_set_f1", "sentiment_token_recovery")
RECONSTRUCTION_ATTACKS = ("nn-inversion", "learned-inversion", "learned-inversion-final", "nn-inversion-averaged",
                          "learned-inversion-averaged", "optimisation-inversion")
SUMMARY = "inversion"  # the report entry holding the best of the reconstruction attacks
SENTIMENT_SAMPLE = 20_000  # labelled training rows the sentiment-bearing tokens are counted on (seeded sample)


def reconstruction_metrics(predicted: Sequence[torch.Tensor], truth: Sequence[torch.Tensor],
                           tokenizer: PreTrainedTokenizerBase, special: set[int], *,
                           prior_rate: float | None = None, sentiment: set[int] | None = None) -> dict:
    """Token recovery (all positions, and content positions without special tokens), sentence-level exact
    match (content positions), ROUGE-L F1 and token-set F1 of the decoded words against the true sentences
    (means over examples); with ``prior_rate`` (the positional prior's content-token recovery) also
    ``content_token_recovery_above_prior``, and with ``sentiment`` (token ids, :func:`sentiment_tokens`)
    ``sentiment_token_recovery``: the recovery of the positions holding a sentiment-bearing token (nan if
    the examples hold none)."""
    rouge, f1 = [], []
    for pred, true in zip(predicted, truth):
        guess = text_words(tokenizer.decode(pred.tolist(), skip_special_tokens=True))
        real = text_words(tokenizer.decode(true.tolist(), skip_special_tokens=True))
        rouge.append(rouge_l_f1(guess, real))
        f1.append(token_set_f1(guess, real))
    content = token_recovery_rate(predicted, truth, ignore=special)
    out = {
        "token_recovery_rate": token_recovery_rate(predicted, truth),
        "content_token_recovery_rate": content,
        "exact_match_rate": exact_match_rate(predicted, truth, ignore=special),
        "rouge_l_f1": float(np.mean(rouge)) if rouge else float("nan"),
        "token_set_f1": float(np.mean(f1)) if f1 else float("nan"),
    }
    if prior_rate is not None:
        out["content_token_recovery_above_prior"] = content - prior_rate
    if sentiment is not None:
        out["sentiment_token_recovery"] = token_recovery_rate(predicted, truth, ignore=special, only=sentiment)
    return out


def best_over_attacks(entries: dict[str, dict], metrics: Sequence[str] = BEST_METRICS) -> dict[str, dict]:
    """For each metric, the largest value over ``entries`` (report entries with ``metrics``) and which attack
    reached it (the first in order on ties): ``{metric: {"value": v, "attack": name}}``. Missing and NaN
    values are skipped; a metric no entry has is left out."""
    best: dict[str, dict] = {}
    for name, entry in entries.items():
        for metric in metrics:
            value = (entry.get("metrics") or {}).get(metric)
            if value is None or not isinstance(value, (int, float)) or math.isnan(value):
                continue
            if metric not in best or value > best[metric]["value"]:
                best[metric] = {"value": float(value), "attack": name}
    return best


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


def _vocabulary_key(tokenizer: PreTrainedTokenizerBase) -> str:
    vocab = json.dumps(sorted(tokenizer.get_vocab().items()), ensure_ascii=True)
    return f"{type(tokenizer).__name__}:{hashlib.sha1(vocab.encode()).hexdigest()}"


_SENTIMENT_CACHE: dict[tuple, frozenset[int]] = {}


def sentiment_token_set(data: RunData, tokenizer: PreTrainedTokenizerBase, dataset: str,
                        special: set[int]) -> frozenset[int] | None:
    """The sentiment-bearing token ids of a classification data set (:func:`sentiment_tokens` on a seeded
    sample of at most :data:`SENTIMENT_SAMPLE` labelled training rows, tokenized without special tokens), or
    None for a causal LM. An evaluation instrument only: it uses labels no attacker has. Cached per data set
    and vocabulary."""
    if data.num_labels == 0 or not hasattr(data.train, "label"):
        return None
    key = (dataset, len(data.train), _vocabulary_key(tokenizer))
    if key not in _SENTIMENT_CACHE:
        rows = np.random.default_rng(0).permutation(len(data.train))[:SENTIMENT_SAMPLE]
        texts = [data.train.text[int(r)] for r in rows]
        encoded = tokenizer(texts, add_special_tokens=False, return_attention_mask=False,
                            return_token_type_ids=False)["input_ids"]
        _SENTIMENT_CACHE[key] = frozenset(sentiment_tokens(encoded, [data.train.label[int(r)] for r in rows],
                                                           ignore=special))
    return _SENTIMENT_CACHE[key]


def _release_summary(captures: Captures) -> dict:
    counts = captures.release_counts()
    return {"examples_with_repeats": sum(c > 1 for c in counts), "mean_releases": float(np.mean(counts)),
            "max_releases": max(counts), "total_releases": sum(counts)}


def run_inversion(run_dir: Path, options: AttackOptions = AttackOptions()) -> dict[str, dict]:
    """The reconstruction attacks on the captured activations, one report entry each, and their summary
    (:data:`SUMMARY`: the best of them per metric, with the verdict on the maximum):

    ``nn-inversion`` (first release; candidates through the bottleneck when there is one),
    ``learned-inversion`` (inverter trained through the initial client half), ``learned-inversion-final``
    (through the half with the run's final client adapter), ``nn-inversion-averaged`` and
    ``learned-inversion-averaged`` (each example's releases averaged first), ``optimisation-inversion``
    (all releases, each with the client adapter its round started from, initialised by the final inverter,
    bigram prior from public text)."""
    run_dir = Path(run_dir)
    config = load_run_config(run_dir)
    captures = load_captures(run_dir)
    if len(captures) > options.max_examples:
        pick = np.random.default_rng(options.seed).permutation(len(captures))[:options.max_examples]
        captures = captures.subset(sorted(int(i) for i in pick))
    model_name, task = captures.meta.get("model", config.model), captures.meta.get("task", config.task)
    dataset = captures.meta.get("dataset", config.dataset)
    data = run_data(task, dataset, config.text_column, config.label_column)
    spec = ModelSpec(model_name, task, max(data.num_labels, 2) if task == "classification" else 0)
    tokenizer = load_tokenizer(spec)
    bottleneck = int(captures.meta.get("bottleneck-dim", getattr(config, "bottleneck_dim", 0)) or 0)
    attacker = attacker_client_half(run_dir, config, model_name, task, spec.num_labels, captures.split_layer,
                                    bottleneck)
    model = attacker.model
    special = set(tokenizer.all_special_ids)
    truth = captures.input_ids
    positions = sum(int(sum(1 for t in ids.tolist() if t not in special)) for ids in truth)
    mechanism = captures.mechanism(config)
    reuse = str(captures.meta.get("activation-reuse", getattr(config, "activation_reuse", "none")) or "none")
    client_dropout = reuse == "none"  # a client whose noise is reused runs its bottom without dropout
    run_settings = {"split-layer": captures.split_layer, "act-clip-norm": captures.meta.get("act-clip-norm"),
                    "act-noise-multiplier": captures.meta.get("act-noise-multiplier"),
                    "mechanism": _mechanism_name(mechanism), "bottleneck-dim": bottleneck,
                    "sent-width": int(captures.hidden[0].shape[-1]) if len(captures) else 0,
                    "examples": len(captures), "positions": sum(len(t) for t in truth),
                    "content-positions": positions, "clients": sorted(set(captures.partitions))}
    vocab = int(inv.input_embedding_table(model).shape[0])
    chance = 1.0 / vocab
    releases = _release_summary(captures)
    averaged = inv.average_releases(captures.releases)

    # Public text (the dev split), the positional prior it gives, and the sentiment-bearing tokens.
    public, rows = _public_text(config, data, options.public_examples, options.seed)
    max_length = int(captures.meta.get("max-length", config.max_length))
    batches = [(b.input_ids, b.attention_mask) for b in encode_rows(tokenizer, public, rows, max_length, 32)]
    public_ids = [ids[j, :n].clone() for ids, mask in batches for j, n in enumerate(mask.sum(1).tolist())]
    sentiment = sentiment_token_set(data, tokenizer, dataset, special)
    prior = inv.positional_prior(public_ids, [len(t) for t in truth])
    baseline = reconstruction_metrics(prior, truth, tokenizer, special, sentiment=sentiment)
    prior_rate = baseline["content_token_recovery_rate"]
    baseline["content_token_recovery_above_prior"] = 0.0
    reference = max(chance, prior_rate) if not math.isnan(prior_rate) else chance

    def score(predicted: Sequence[torch.Tensor], subset: Sequence[int] | None = None) -> dict:
        real = truth if subset is None else [truth[i] for i in subset]
        metrics = reconstruction_metrics(predicted, real, tokenizer, special, prior_rate=prior_rate,
                                         sentiment=sentiment)
        metrics["chance_token_recovery_rate"] = chance
        return metrics

    def entry(attack: str, settings: dict, predicted: Sequence[torch.Tensor], metrics: dict, verdict: str,
              started: float, release: str = "hidden states at the split (after the client's clipping and noise)",
              subset: Sequence[int] | None = None) -> dict:
        real = truth if subset is None else [truth[i] for i in subset]
        return {"attack": attack, "threat": INVERSION_THREAT, "release": release,
                "settings": {**run_settings, **settings}, "metrics": metrics,
                "samples": _samples(predicted, real, tokenizer), "verdict": verdict,
                "seconds": time.perf_counter() - started}

    averaged_release = (f"every captured release of each example, averaged ({releases['examples_with_repeats']} "
                        f"of {len(captures)} examples released more than once, up to {releases['max_releases']} "
                        "times)")
    out: dict[str, dict] = {}

    # (a) nearest neighbour, single release and averaged releases.
    started = time.perf_counter()
    final_weights = attacker.use("final")
    cut = inv.cut_of(attacker.half)
    note = ("" if captures.split_layer == 0 else
            f" (split-layer={captures.split_layer}: compared with layer-0 embeddings, a weak heuristic here)")
    nn_settings = {"metric": "cosine", "vocabulary": vocab, "candidates": "embedding outputs" + (
        " through cut_down as sent at the start of each release's round (final weights where unrecorded)"
        if cut is not None else "")}
    predicted = _nn_by_round(captures.hidden, [rounds[0] for rounds in captures.release_rounds], model, attacker)
    metrics = score(predicted)
    out["nn-inversion"] = entry("nearest-neighbour inversion against the embedding table (cosine similarity)" + note,
                                nn_settings, predicted, metrics,
                                _recovery_verdict("nearest-neighbour inversion", metrics, chance, positions), started)
    attacker.use("final")
    started = time.perf_counter()
    repeated = releases["examples_with_repeats"] > 0  # else the means are the first releases: same answers
    predicted = inv.nearest_neighbour_inversion(averaged, model, project=cut) if repeated else predicted
    metrics = score(predicted)
    averaged_settings = {**nn_settings, "releases": releases}
    if repeated and cut is not None:
        averaged_settings["candidates"] = "embedding outputs through the final cut_down"
    out["nn-inversion-averaged"] = entry(
        "nearest-neighbour inversion of the mean of each example's releases" + note, averaged_settings,
        predicted, metrics,
        _recovery_verdict("nearest-neighbour inversion (averaged releases)", metrics, reference, positions), started,
        averaged_release)

    # (b) learned inversion through the initial (base) client half, and through the final one.
    embedding = inv.input_embedding_table(model)
    started = time.perf_counter()
    initial_weights = attacker.use("initial")
    hidden = inv.public_hidden_states(attacker.half, batches, mechanism, options.inverter.views, options.seed,
                                      train=client_dropout)
    inverter = inv.train_learned_inverter(hidden, embedding, mechanism, options.inverter)
    predicted = inverter.predict(captures.hidden)
    metrics = score(predicted)
    metrics["prior_baseline"] = baseline
    metrics["train_loss_per_epoch"] = hidden.history
    public_settings = {**asdict(options.inverter), "public_examples": len(rows),
                       "public_text": f"held-out (dev) split of {dataset}", "client_dropout": client_dropout}
    out["learned-inversion"] = entry(
        "learned inversion: per-position MLP on split-layer hidden states (noise-aware), trained on public text "
        "passed through the base model's client half", {**public_settings, "attacker_weights": initial_weights},
        predicted, metrics, _recovery_verdict("learned inversion", metrics, reference, positions), started)

    started = time.perf_counter()
    if attacker.final_differs:
        final_weights = attacker.use("final")
        hidden = inv.public_hidden_states(attacker.half, batches, mechanism, options.inverter.views, options.seed,
                                          train=client_dropout)
        final_inverter = inv.train_learned_inverter(hidden, embedding, mechanism, options.inverter)
        history = hidden.history
    else:
        final_inverter, history = inverter, metrics["train_loss_per_epoch"]
        final_weights = (f"{final_weights} (the same function as the initial weights: the initial inverter is "
                         "reused)")
    predicted = final_inverter.predict(captures.hidden)
    metrics = score(predicted)
    metrics["train_loss_per_epoch"] = history
    out["learned-inversion-final"] = entry(
        "learned inversion trained through the defended pipeline with the run's final client weights (public "
        "text -> client half with the final adapter -> the run's mechanism)",
        {**public_settings, "attacker_weights": final_weights}, predicted, metrics,
        _recovery_verdict("learned inversion (final weights)", metrics, reference, positions), started)

    started = time.perf_counter()
    predicted = final_inverter.predict(averaged) if repeated else predicted
    metrics = score(predicted)
    out["learned-inversion-averaged"] = entry(
        "the final-weights learned inverter on the mean of each example's releases",
        {**public_settings, "attacker_weights": final_weights, "releases": releases}, predicted, metrics,
        _recovery_verdict("learned inversion (averaged releases)", metrics, reference, positions), started,
        averaged_release)

    # (c) optimisation attack: all releases, final weights, initialised by the final inverter.
    started = time.perf_counter()
    settings = options.optimisation
    chosen = list(range(len(captures)))
    if 0 < settings.max_examples < len(chosen):
        pick = np.random.default_rng(options.seed + 1).permutation(len(chosen))[:settings.max_examples]
        chosen = sorted(int(i) for i in pick)
    opt_weights = attacker.use("final")
    candidates = (final_inverter.top_candidates([averaged[i] for i in chosen], settings.candidates)
                  if settings.candidates > 0 else None)
    bigram = BigramPrior(public_ids, vocab)
    per_round = attacker.trainable and bool(attacker.round_start)
    keys = ([[r if r in attacker.round_start else "final" for r in captures.release_rounds[i]] for i in chosen]
            if per_round else None)
    result = optimisation_inversion(attacker.half, [captures.releases[i] for i in chosen], mechanism, vocab,
                                    candidates=candidates, prior=bigram,
                                    settings=replace(settings, seed=options.seed), pad_id=tokenizer.pad_token_id,
                                    release_weights=keys, load_weights=attacker.use if per_round else None)
    if per_round:
        opt_weights = (f"per release, the global client adapter the server sent at the start of its round "
                       f"(recorded for rounds {sorted(attacker.round_start)}; else {opt_weights})")
    metrics = score(result.predicted, chosen)
    metrics["objective_initial"] = result.objective_initial
    metrics["objective_final"] = result.objective_final
    metrics["examples_changed"] = result.improved
    opt_positions = sum(int(sum(1 for t in truth[i].tolist() if t not in special)) for i in chosen)
    out["optimisation-inversion"] = entry(
        "optimisation inversion (BiSR/PIA style): relaxed token sequences optimised so that the client half "
        "(each release's round weights, the mechanism's clipping) reproduces every release under the noise "
        "likelihood, plus a bigram prior from public text; initialised by the final-weights learned inverter",
        {**asdict(settings), "seed": options.seed, "attacker_weights": opt_weights,
         "attacked_examples": len(chosen), "likelihood": objective_scale_note(mechanism, settings),
         "prior": f"bigram over token ids of the {len(rows)} public sentences (Witten-Bell-like smoothing)",
         "initialisation": (f"top-{settings.candidates} tokens per position of learned-inversion-final on the "
                            "averaged releases" if settings.candidates > 0 else "uniform over the vocabulary"),
         "releases": releases}, result.predicted, metrics,
        _recovery_verdict("optimisation inversion", metrics, reference, opt_positions), started,
        "every captured release of each example (all used in the likelihood)", chosen)

    out[SUMMARY] = _summary(out, baseline, reference, positions, sentiment, run_settings)
    return out


def _nn_by_round(hidden: Sequence[torch.Tensor], rounds: Sequence[int], model: torch.nn.Module,
                 attacker: AttackerHalf) -> list[torch.Tensor]:
    """Nearest-neighbour inversion; with a bottleneck, each release's candidates go through the ``cut_down`` the
    client had at the start of that release's round (the final one where that is not recorded)."""
    if inv.cut_of(attacker.half) is None:
        return inv.nearest_neighbour_inversion(hidden, model)
    out: list[torch.Tensor | None] = [None] * len(hidden)
    for server_round in sorted(set(rounds)):
        attacker.use(server_round)
        which = [i for i, r in enumerate(rounds) if r == server_round]
        found = inv.nearest_neighbour_inversion([hidden[i] for i in which], model, project=inv.cut_of(attacker.half))
        for i, predicted in zip(which, found):
            out[i] = predicted
    return [p for p in out if p is not None]


def _summary(entries: dict[str, dict], baseline: dict, reference: float, positions: int,
             sentiment: frozenset[int] | None, run_settings: dict) -> dict:
    """The best of the reconstruction attacks: per metric the maximum and who reached it; the verdict on it."""
    attacks = {name: entries[name] for name in RECONSTRUCTION_ATTACKS if name in entries}
    best = best_over_attacks(attacks)
    metrics = {metric: item["value"] for metric, item in best.items()}
    metrics["prior_content_token_recovery_rate"] = baseline["content_token_recovery_rate"]
    if "sentiment_token_recovery" in baseline:
        metrics["prior_sentiment_token_recovery"] = baseline["sentiment_token_recovery"]
    verdict = "no reconstruction attack ran"
    if "content_token_recovery_rate" in best:
        top = {"content_token_recovery_rate": best["content_token_recovery_rate"]["value"],
               "rouge_l_f1": best.get("rouge_l_f1", {}).get("value", float("nan"))}
        verdict = _recovery_verdict(f"best of {len(attacks)} reconstruction attacks "
                                    f"({best['content_token_recovery_rate']['attack']})", top, reference, positions)
        if "sentiment_token_recovery" in best:
            verdict += (f"; sentiment-bearing tokens: {best['sentiment_token_recovery']['value']:.1%} recovered "
                        f"({best['sentiment_token_recovery']['attack']}) vs "
                        f"{baseline.get('sentiment_token_recovery', float('nan')):.1%} by the prior")
    return {
        "attack": "maximum over the reconstruction attacks (" + ", ".join(attacks) + ")",
        "threat": INVERSION_THREAT,
        "release": "hidden states at the split (every captured release)",
        "settings": {**run_settings, "attacks": list(attacks),
                     "sentiment_tokens": None if sentiment is None else len(sentiment),
                     "sentiment_definition": None if sentiment is None else (
                         f"tokens in >= {SENTIMENT_MIN_COUNT} of up to {SENTIMENT_SAMPLE} labelled training rows "
                         f"whose smoothed presence log-odds between a class and the rest is >= "
                         f"{SENTIMENT_MIN_LOG_ODDS:.3f} (ln 4); an evaluation instrument, unknown to the attacker")},
        "metrics": metrics,
        "best": best,
        "prior_baseline": baseline,
        "verdict": verdict,
        "seconds": sum(float(entries[name]["seconds"]) for name in attacks),
    }


def _mechanism_name(mechanism: object) -> str:
    if mechanism is None:
        return "none (sent in clear)"
    if isinstance(mechanism, EmbeddingDChi):
        return f"d_chi (eta {mechanism.eta:g}, token clip {mechanism.token_clip:g})"
    return f"gaussian (clip {mechanism.clip_norm:g}, sigma {mechanism.noise_multiplier:g})"


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
        name: {"metrics": entry["metrics"], "verdict": entry["verdict"], **({"best": entry["best"]} if "best" in entry
                                                                            else {})}
        for name, entry in report["attacks"].items()}})
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
