"""What a run leaves behind in ``output-dir``: ``metrics.json``, ``config.json`` and the adapters.

- ``metrics.json``: ``rounds`` (one entry per round: ``round``, ``accuracy``, ``loss``, ``bytes_up``,
  ``bytes_down``, ``seconds`` and the time split), ``initial`` (the model before training),
  ``best_accuracy``/``best_round``/``final_accuracy``. Rewritten atomically after every round.
- ``config.json``: the resolved run config.
- ``client_adapter/`` and ``server_adapter/``: each half's LoRA adapter in peft format
  (``PeftModel.from_pretrained(half, folder)``), and ``adapter/``: both merged into one adapter for the
  *unsplit* model (``PeftModel.from_pretrained(AutoModelFor...from_pretrained(model), folder)``) — possible
  because the halves keep the whole model's module names.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from peft import PeftModel, get_peft_model_state_dict
from safetensors.torch import save_file
from torch import nn

from fedguard.model.bottleneck import CUT_MODULES
from fedguard.model.lora import LoraSettings, TRAINABLE_HEADS, peft_config
from fedguard.model.split import Family


def save_adapters(out: Path, client: nn.Module, server: nn.Module, family: Family, lora: LoraSettings,
                  base_model: str) -> None:
    """Save both halves' adapters and the merged whole-model adapter under ``out``.

    With a bottleneck at the cut (``bottleneck-dim``), its two maps are in the halves' adapters and, beside the
    merged adapter, in ``adapter/bottleneck.safetensors`` (``cut_down.weight``, ``cut_up.weight``,
    ``cut_up.bias``): the unsplit model has no place for them, so the merged adapter alone is NOT the trained
    model there — load the halves with FedGuard (``fedguard.runtime``) instead.
    """
    merged: dict = {}
    heads: set[str] = set()
    cut: dict = {}
    for name, half in (("client_adapter", client), ("server_adapter", server)):
        if isinstance(half, PeftModel):
            half.save_pretrained(out / name)
            for key, tensor in get_peft_model_state_dict(half).items():
                module = next((m for m in CUT_MODULES if f".{m}." in f".{key}"), None)
                if module is None:
                    merged[key] = tensor
                else:
                    cut[f"{module}.{key.rsplit('.', 1)[-1]}"] = tensor
            heads |= set(half.peft_config["default"].modules_to_save or [])
        else:
            for module in CUT_MODULES:
                for pname, p in getattr(half, module).named_parameters() if getattr(half, module, None) else ():
                    cut[f"{module}.{pname}"] = p
    config = peft_config(lora, family, tuple(h for h in TRAINABLE_HEADS if h in heads))
    config.base_model_name_or_path = base_model
    config.task_type = "SEQ_CLS" if heads else None
    folder = out / "adapter"
    folder.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(str(folder))
    save_file({k: v.detach().contiguous() for k, v in merged.items()}, str(folder / "adapter_model.safetensors"),
              metadata={"format": "pt"})
    if cut:
        save_file({k: v.detach().cpu().contiguous() for k, v in cut.items()}, str(folder / "bottleneck.safetensors"),
                  metadata={"format": "pt"})


class SampleWriter:
    """Causal LM: greedy generations for a few fixed held-out prompts, appended to ``generations.jsonl``
    after every round (one JSON object per prompt: ``round``, ``prompt``, ``reference``, ``generation``),
    so a user can read what the model learned."""

    def __init__(self, path: Path, runtime: Any, eval_data: Any, prompts: int = 3, max_new_tokens: int = 48,
                 keep: bool = False) -> None:
        self.path = path
        self.runtime = runtime
        count = min(prompts, len(eval_data))
        self.prompts = [eval_data.prompt[i] for i in range(count)]
        self.references = [eval_data.response[i] for i in range(count)]
        self.max_new_tokens = max_new_tokens
        if not keep:  # a new run; a resumed one appends
            path.unlink(missing_ok=True)

    def write(self, server_round: int) -> None:
        """Generate with the joined model as it is now (global client adapter loaded by the caller)."""
        from fedguard.training.generation import generate

        texts = generate(self.runtime.task_model, self.runtime.tokenizer, self.prompts, self.max_new_tokens)
        with self.path.open("a", encoding="utf-8") as handle:
            for prompt, reference, text in zip(self.prompts, self.references, texts):
                handle.write(json.dumps({"round": server_round, "prompt": prompt, "reference": reference,
                                         "generation": text}) + "\n")
