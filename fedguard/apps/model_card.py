"""The model card of a trained adapter: ``README.md`` in the format ``PeftModel.save_pretrained`` writes.

YAML front matter (``base_model``, ``library_name: peft``, ``tags``, ``pipeline_tag``) then the sections of the
Hugging Face model-card template that peft fills (Model Details, Uses, Training Details, Evaluation,
Framework versions), recording how the adapter was trained federatedly and, per adversary, which
differential-privacy guarantee covers it (with δ and the neighbouring relation), or that none does.

Call it after :func:`fedguard.apps.run_output.save_adapters`::

    write_model_card(out / "adapter", config, metrics, base_model=source, num_clients=len(node_ids))

``metrics`` is the run's ``metrics.json`` content; the guarantees are its last round's ε fields and its
top-level ``privacy`` object (see :mod:`fedguard.report.epsilon`).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from fedguard.config import RunConfig
from fedguard.report.epsilon import (
    ADVERSARIES,
    EPSILON_FIELDS,
    last_value,
    privacy_delta,
    privacy_notes,
    server_view_unprotected,
)

__all__ = ["NO_GUARANTEE", "write_model_card"]

NO_GUARANTEE = "no differential-privacy guarantee"
_PIPELINES = {"classification": "text-classification", "causal-lm": "text-generation"}


def write_model_card(adapter_dir: Path, config: RunConfig, metrics: Mapping[str, Any], base_model: str,
                     num_clients: int) -> Path:
    """Write ``adapter_dir/README.md`` (replacing one there) and return its path."""
    adapter_dir = Path(adapter_dir)
    adapter_dir.mkdir(parents=True, exist_ok=True)
    path = adapter_dir / "README.md"
    path.write_text(f"---\n{_front_matter(config, base_model)}---\n\n{_body(config, metrics, base_model, num_clients)}",
                    encoding="utf-8")
    return path


def _front_matter(config: RunConfig, base_model: str) -> str:
    tags = ["fedguard", "federated-learning", "split-learning", "lora", "transformers",
            f"base_model:adapter:{base_model}"]
    if config.private:
        tags.append("differential-privacy")
    data = {"base_model": base_model, "library_name": "peft", "pipeline_tag": _PIPELINES.get(config.task),
            "tags": tags}
    return yaml.safe_dump({k: v for k, v in data.items() if v is not None}, sort_keys=False, allow_unicode=True)


def _body(config: RunConfig, metrics: Mapping[str, Any], base_model: str, num_clients: int) -> str:
    rounds = list(metrics.get("rounds") or [])
    sections = [
        f"# Model Card for a FedGuard LoRA adapter of {base_model}",
        f"A LoRA adapter for `{base_model}` ({config.task}) trained with federated split learning (FedGuard): "
        f"{num_clients} clients kept their data and the bottom {config.split_layer} block(s) of the model; the "
        "server trained the rest. The client and server adapters are merged here into one adapter for the "
        "unsplit model." + (
            f" **This run had a learned {config.bottleneck_dim}-dimensional bottleneck at the cut** "
            "(`bottleneck.safetensors`): the unsplit model with this adapter alone is not the trained model; "
            "load both halves with FedGuard (`fedguard.runtime.runtime_for` with the run's config, then the "
            "halves' adapters)." if config.bottleneck_dim else ""),
        "## Model Details\n\n### Model Description\n\n" + _bullets({
            "Base model": f"`{base_model}`",
            "Adapter": f"LoRA r={config.lora_r}, alpha={config.lora_alpha:g}, dropout={config.lora_dropout:g}, "
                       f"target modules {', '.join(config.lora_target_modules)}",
            "Split": f"after block {config.split_layer}, label protection `{config.label_protection}`",
            "Aggregation strategy": f"`{_strategy_name(config)}`",
        }),
        "## Uses\n\n### Direct Use\n\n" + _usage(config, base_model),
        "## Training Details\n\n### Training Data\n\n"
        f"`{config.dataset}`, split over {num_clients} clients ({config.partitioner} partition); each client's "
        "shard never left it.\n\n### Training Procedure\n\n#### Training Hyperparameters\n\n" + _bullets({
            "Rounds": f"{len(rounds)} completed of {config.num_server_rounds} planned",
            "Clients": f"{num_clients} (fraction sampled per round {config.fraction_train:g}, "
                       f"at least {config.min_fit_clients})",
            "Local steps per round": str(config.local_steps),
            "Batch size": str(config.batch_size),
            "Learning rate": f"{config.learning_rate:g}",
            "Max length": f"{config.max_length} tokens",
            "Seed": str(config.seed),
        }),
        "## Evaluation\n\n### Results\n\n" + _results(metrics),
        "## Privacy\n\n" + _privacy(metrics),
        f"### Framework versions\n\n{_versions()}",
    ]
    return "\n\n".join(sections) + "\n"


def _bullets(items: Mapping[str, str]) -> str:
    return "\n".join(f"- **{key}:** {value}" for key, value in items.items())


def _results(metrics: Mapping[str, Any]) -> str:
    rounds = list(metrics.get("rounds") or [])
    if not rounds:
        return "No round completed."
    last = rounds[-1]
    items = {"Final accuracy": f"{last['accuracy']:.4f} (round {last['round']})"}
    if metrics.get("best_accuracy") is not None:
        items["Best accuracy"] = f"{metrics['best_accuracy']:.4f} (round {metrics.get('best_round')})"
    if last.get("perplexity") is not None:
        items["Final perplexity"] = f"{last['perplexity']:.4f}"
        items["Final accuracy"] += " (next-token accuracy on response tokens)"
    items["Final held-out loss"] = f"{last['loss']:.4f}"
    initial = metrics.get("initial") or {}
    if initial.get("eval_examples"):
        items["Held-out examples"] = str(initial["eval_examples"])
    return _bullets(items)


def _privacy(metrics: Mapping[str, Any]) -> str:
    rounds = list(metrics.get("rounds") or [])
    delta = privacy_delta(metrics)
    notes = privacy_notes(metrics)
    lines = ["ε is a differential-privacy guarantee (smaller is more private) when *certified*; an *estimate* is "
             "an approximation and guarantees nothing. Values are after the last round, for the worst client "
             "unless marked median.", ""]
    lines.append(f"- **δ:** {delta:g}" if delta is not None else "- **δ:** not recorded")
    if "neighbouring" in notes:
        lines.append(f"- **Neighbouring relation:** {notes['neighbouring']}")
    found = False
    for adversary, description in ADVERSARIES.items():
        fields = [f for f in EPSILON_FIELDS if f.adversary == adversary]
        values = [(f, last_value(rounds, f.key)) for f in fields]
        shown = [f"{f.release}, {f.statistic}: ε = {v:.4g} ({_kind(f.guarantee)})" for f, v in values if v is not None]
        if adversary == "server" and shown and server_view_unprotected(rounds):
            shown.insert(0, f"everything it sees together: {NO_GUARANTEE} (part of it reaches the server in clear)")
        found = found or bool(shown)
        if adversary == "adapter" and not shown:
            continue  # legacy fields: only for old runs that have them
        note = f" — {notes[adversary]}" if adversary in notes else ""
        body = "; ".join(shown) if shown else NO_GUARANTEE
        lines.append(f"- **Against {description}:** {body}{note}")
    if not found:
        lines.insert(2, f"This adapter was trained with {NO_GUARANTEE}: nothing bounds what it, or what the "
                        "server saw during training, reveals about the clients' examples.\n")
    return "\n".join(lines)


def _strategy_name(config: RunConfig) -> str:
    from strategies import default_strategy_name

    return default_strategy_name(config) if config.strategy == "auto" else config.strategy


def _kind(guarantee: bool) -> str:
    return "certified" if guarantee else "estimate, not a guarantee"


def _usage(config: RunConfig, base_model: str) -> str:
    auto = "AutoModelForCausalLM" if config.task == "causal-lm" else "AutoModelForSequenceClassification"
    extra = "" if config.task == "causal-lm" else ", num_labels=NUM_LABELS"
    return (f"```python\nfrom peft import PeftModel\nfrom transformers import {auto}\n\n"
            f"base = {auto}.from_pretrained(\"{base_model}\"{extra})\n"
            "model = PeftModel.from_pretrained(base, \"path/to/this/folder\")\n```")


def _versions() -> str:
    import flwr
    import peft

    from fedguard import __version__

    return f"- PEFT {peft.__version__}\n- Flower {flwr.__version__}\n- FedGuard {__version__}"
