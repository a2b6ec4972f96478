"""LoRA (peft) on each half of a split model, independently.

Only LoRA matrices are trainable on the client half; on the server half the LoRA matrices and the task
head (``classifier`` / ``score``, saved whole through peft's ``modules_to_save``) are trainable. A causal-LM
head shares its weight with the token embeddings and stays frozen.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn

from fedguard.model.bottleneck import CUT_MODULES
from fedguard.model.split import Family

log = logging.getLogger(__name__)

TRAINABLE_HEADS = ("classifier", "score")
TRAINED_WHOLE = TRAINABLE_HEADS + CUT_MODULES  # modules a half trains whole (peft modules_to_save), if it has them


@dataclass(frozen=True)
class LoraSettings:
    """LoRA hyper-parameters shared by both halves.

    ``target_modules`` are module-name suffixes (``("auto",)`` = the architecture's defaults: peft's own
    defaults for the model type where it has them, else the attention's query/value projections found by
    name, see :func:`fedguard.model.split.default_lora_targets`); ``alpha / r`` scales the update ``B @ A``.
    """

    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: tuple[str, ...] = ("auto",)

    def targets_for(self, family: Family) -> tuple[str, ...]:
        """Resolve ``auto`` to the family's default target modules (``ValueError`` if it has none)."""
        if self.target_modules != ("auto",):
            return self.target_modules
        if not family.default_lora_targets:
            raise ValueError(
                f"lora-target-modules='auto': no default LoRA targets for model type {family.name!r} (peft has "
                "none and no attention query/value projection was found by name); name them, e.g. "
                "lora-target-modules=['q_proj', 'v_proj']"
            )
        return family.default_lora_targets


def _matching_modules(module: nn.Module, targets: tuple[str, ...]) -> list[str]:
    return [name for name, _ in module.named_modules() if name and name.split(".")[-1] in targets]


def peft_config(settings: LoraSettings, family: Family, modules_to_save: tuple[str, ...] = ()) -> LoraConfig:
    """The peft ``LoraConfig`` for these settings (also used for the merged whole-model adapter)."""
    return LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=list(settings.targets_for(family)),
        modules_to_save=list(modules_to_save) or None,
        bias="none",
    )


def attach_lora(half: nn.Module, settings: LoraSettings, family: Family) -> nn.Module:
    """Freeze ``half`` and add LoRA adapters to its target modules (and a trainable copy of its head).

    Modules trained whole (the task head, the bottleneck's ``cut_down``/``cut_up``: :data:`TRAINED_WHOLE`) get a
    trainable copy. Returns a ``peft.PeftModel`` wrapping ``half``; if none of the target modules lives in this
    half (e.g. a client half with ``split-layer = 0``), ``half`` itself, frozen except for those modules (with a
    warning when nothing at all is trainable).
    Unknown target names (matching no module of the whole model) are the caller's error to report.
    """
    targets = settings.targets_for(family)
    heads = tuple(name for name in TRAINED_WHOLE if isinstance(getattr(half, name, None), nn.Module))
    if not _matching_modules(half, targets) and not heads:
        for parameter in half.parameters():
            parameter.requires_grad_(False)
        log.warning("no LoRA target module %s in %s: it has no trainable parameters", targets, type(half).__name__)
        return half
    if not _matching_modules(half, targets):
        # peft needs at least one LoRA target; train the head alone.
        for parameter in half.parameters():
            parameter.requires_grad_(False)
        for name in heads:
            for parameter in getattr(half, name).parameters():
                parameter.requires_grad_(True)
        return half
    return get_peft_model(half, peft_config(settings, family, heads))


def check_targets_exist(model: nn.Module, settings: LoraSettings, family: Family) -> None:
    """Raise ``ValueError`` if a LoRA target name matches no module of the whole model."""
    targets = settings.targets_for(family)
    present = {name.split(".")[-1] for name, _ in model.named_modules() if name}
    missing = [t for t in targets if t not in present]
    if missing:
        linear = sorted({name.split(".")[-1] for name, m in model.named_modules()
                         if isinstance(m, nn.Linear) or type(m).__name__ == "Conv1D"})
        raise ValueError(
            f"lora-target-modules {missing} match no module of this {family.name} model; "
            f"its linear modules are: {', '.join(linear)}"
        )


def trainable_state(half: nn.Module) -> dict[str, torch.Tensor]:
    """The trainable tensors of a half (its adapter), by parameter name, detached, on CPU."""
    return {name: p.detach().cpu().clone() for name, p in half.named_parameters() if p.requires_grad}


def load_trainable_state(half: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy adapter tensors into a half in place; names and shapes must match exactly."""
    params = {name: p for name, p in half.named_parameters() if p.requires_grad}
    if set(params) != set(state):
        missing = sorted(set(params) - set(state))[:3]
        extra = sorted(set(state) - set(params))[:3]
        raise ValueError(f"adapter does not match this half: missing {missing}, unexpected {extra}")
    with torch.no_grad():
        for name, tensor in state.items():
            if params[name].shape != tensor.shape:
                raise ValueError(f"adapter tensor {name}: shape {tuple(tensor.shape)}, "
                                 f"expected {tuple(params[name].shape)}")
            params[name].copy_(tensor)


def is_peft(module: nn.Module) -> bool:
    return isinstance(module, PeftModel)


def unwrapped(half: nn.Module) -> nn.Module:
    """The half itself: inside peft's wrapper if :func:`attach_lora` added one (e.g. to call
    :meth:`ClientHalf.head`)."""
    return half.get_base_model() if isinstance(half, PeftModel) else half
