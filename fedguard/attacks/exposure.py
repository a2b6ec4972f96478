"""``fedguard attack exposure``: the canary attacks against a finished run, as report entries.

The run inserted the canaries (run-config ``canaries``; :mod:`fedguard.data.canaries`); this regenerates them
from its config and measures them on the released model (base model + the run's merged adapter) and, as the
no-training baseline, on the model before fine-tuning (:func:`~fedguard.attacks.membership.load_reference_model`).
Causal LM: entry ``exposure`` (:mod:`fedguard.attacks.canaries`); classification: entry
``label-flip-memorisation``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from torch import nn
from transformers import PreTrainedTokenizerBase

from fedguard.runtime import RunData
from fedguard.attacks.canaries import (
    LEAK_MARGIN_BITS,
    LEAK_P_VALUE,
    candidate_codes,
    canary_exposure,
    exposure_verdict,
    fisher_p_value,
    label_flip_margins,
)
from fedguard.attacks.membership import auc_null_se, load_reference_model, load_trained_model, score_attack
from fedguard.attacks.run_dir import RunDirError
from fedguard.config import RunConfig
from fedguard.data.canaries import label_flip_canaries, secret_canaries
from fedguard.model.loading import ModelSpec, load_tokenizer

EXPOSURE_THREAT = (
    "anyone holding the released model (base model + the run's merged adapter) who knows the format of a secret "
    "in a client's data and ranks every candidate secret by the model's loss (extraction)")
LABEL_FLIP_THREAT = (
    "anyone holding the released model checking whether it memorised individual training examples: inserted "
    "held-out rows with a flipped label against flipped rows it never saw")
LABEL_FLIP_Z = 3.0  # verdict threshold on the z of the margin AUC (canaries vs controls), as for membership
RERUN_WITH_CANARIES = ("re-run with canaries=N, e.g. flwr run . --run-config \"canaries=8 canary-repeats=4\" "
                       "(partitions 0..canary-clients-1 then train on N synthetic secrets)")


def run_exposure(run_dir: Path, config: RunConfig, data: RunData, max_candidates: int = 10_000,
                 seed: int = 0) -> dict[str, dict]:
    """The canary entry of the run (``exposure`` for a causal LM, ``label-flip-memorisation`` for
    classification); :class:`RunDirError` when the run inserted no canaries."""
    if config.canaries == 0:
        raise RunDirError(f"{run_dir}: the run inserted no canaries (canaries=0): {RERUN_WITH_CANARIES}")
    num_labels = data.num_labels if config.task == "classification" else 0
    tokenizer = load_tokenizer(ModelSpec(config.model, config.task, num_labels))
    models: dict[str, Callable[[], nn.Module]] = {
        "trained": lambda: load_trained_model(run_dir, config, num_labels),
        "reference": lambda: load_reference_model(config, num_labels)}
    settings = {"canaries": config.canaries, "canary-repeats": config.canary_repeats,
                "canary-clients": config.canary_clients, "dp-noise-multiplier": config.dp_noise_multiplier,
                "dp-target-epsilon": config.dp_target_epsilon, "seed": seed}
    if config.task == "causal-lm":
        return {"exposure": _secret_exposure(config, tokenizer, models, settings, max_candidates, seed)}
    return {"label-flip-memorisation": _label_flip(config, data, tokenizer, models, settings)}


def _secret_exposure(config: RunConfig, tokenizer: PreTrainedTokenizerBase, models: dict[str, Callable[[], nn.Module]],
                     settings: dict, max_candidates: int, seed: int) -> dict:
    started = time.perf_counter()
    canaries = secret_canaries(config)
    rng = np.random.default_rng(seed)
    candidates = [candidate_codes(canary, max_candidates, rng) for canary in canaries]
    results: dict[str, list] = {}
    for name, load in models.items():
        model = load()
        results[name] = [canary_exposure(model, tokenizer, canary, codes, exhaustive)
                         for canary, (codes, exhaustive) in zip(canaries, candidates)]
        del model
    trained = [e.exposure for e in results["trained"]]
    reference = [e.exposure for e in results["reference"]]
    bits = math.log2(canaries[0].space_size)
    metrics = {
        "mean_exposure": float(np.mean(trained)), "max_exposure": float(np.max(trained)),
        "reference_mean_exposure": float(np.mean(reference)), "reference_max_exposure": float(np.max(reference)),
        "log2_candidates": bits, "p_value": fisher_p_value(trained), "reference_p_value": fisher_p_value(reference),
        "canaries": [{"name": canary.name, "secret": canary.code, "trained": t.to_dict(), "reference": r.to_dict()}
                     for canary, t, r in zip(canaries, results["trained"], results["reference"])],
    }
    methods = sorted({e.method for e in results["trained"] + results["reference"]})
    return {
        "attack": "canary exposure (Carlini et al. 2019): rank of each inserted secret among all candidate codes "
                  "by the released model's loss",
        "threat": EXPOSURE_THREAT,
        "release": "the released model (base model + merged adapter)",
        "settings": {**settings, "canary-digits": config.canary_digits, "candidates": canaries[0].space_size,
                     "max-candidates": max_candidates, "methods": methods,
                     "loss": "summed NLL (nats) of the code's tokens given the prompt and the text before the code",
                     "ties": "count half", "verdict_rule": f"Fisher p < {LEAK_P_VALUE:g} and mean exposure >= "
                                                           f"{LEAK_MARGIN_BITS:g} bits above the base model's"},
        "metrics": metrics,
        "verdict": exposure_verdict(trained, reference, bits),
        "seconds": time.perf_counter() - started,
    }


def _label_flip(config: RunConfig, data: RunData, tokenizer: PreTrainedTokenizerBase,
                models: dict[str, Callable[[], nn.Module]], settings: dict) -> dict:
    started = time.perf_counter()
    if data.dev is None:
        raise RunDirError(f"dataset {config.dataset!r} has no dev split, so the run could not have inserted "
                          "label-flip canaries")
    chosen = label_flip_canaries(config, len(data.dev))
    metrics: dict[str, dict] = {}
    for name, load in models.items():
        model = load()
        (canary_hits, canary_margin), (control_hits, control_margin) = (
            label_flip_margins(model, tokenizer, data.dev, rows, data.num_labels, config.max_length)
            for rows in (chosen.canary_rows, chosen.control_rows))
        del model
        score = score_attack(canary_margin, control_margin)
        metrics[name] = {
            "canary_flip_rate": float(canary_hits.mean()), "control_flip_rate": float(control_hits.mean()),
            "flip_rate_gap": float(canary_hits.mean() - control_hits.mean()),
            "canary_mean_margin": float(canary_margin.mean()), "control_mean_margin": float(control_margin.mean()),
            "margin_auc": score.auc, "margin_z": score.z,
        }
    return {
        "attack": "label-flip canaries: held-out rows inserted with a flipped label, compared with flipped rows "
                  "never inserted (controls)",
        "threat": LABEL_FLIP_THREAT,
        "release": "the released model (base model + merged adapter)",
        "settings": {**settings, "controls": len(chosen.control_rows), "canary_rows": list(chosen.canary_rows),
                     "control_rows": list(chosen.control_rows), "flip": "label + 1 mod classes",
                     "margin": "log p(flipped) - log p(true), nats",
                     "verdict_rule": f"z of the margin AUC (canaries vs controls) > {LABEL_FLIP_Z:g}"},
        "metrics": metrics,
        "verdict": label_flip_verdict(metrics["trained"], config.canaries),
        "seconds": time.perf_counter() - started,
    }


def label_flip_verdict(trained: dict, canaries: int) -> str:
    """``LEAKY`` when the trained model's margin separates canaries from controls with z > :data:`LABEL_FLIP_Z`."""
    summary = (f"predicts the flipped label for {trained['canary_flip_rate']:.0%} of {canaries} canaries vs "
               f"{trained['control_flip_rate']:.0%} of controls (margin AUC {trained['margin_auc']:.2f}, "
               f"z = {trained['margin_z']:.1f})")
    if 0.5 / auc_null_se(canaries, canaries) <= LABEL_FLIP_Z:
        return (f"label-flip memorisation: inconclusive: {canaries} canaries cannot reach z > {LABEL_FLIP_Z:g} "
                f"(use canaries >= 7): {summary}")
    if trained["margin_z"] > LABEL_FLIP_Z:
        return f"label-flip memorisation: LEAKY: the released model learned the inserted flipped labels: {summary}"
    return f"label-flip memorisation: no memorisation detected: {summary}"
