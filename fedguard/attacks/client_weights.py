"""The client bottom as the server-side attacker can rebuild it: base weights, and the run's final client adapter.

The server holds the base model and receives the global client adapter every round (and, in the
bottleneck, the ``cut_down`` map that is part of it), so an attacker in its place can run the client half
exactly as a client does, with the weights of any round. :func:`attacker_client_half` rebuilds that half the
way FedGuard's runtime builds it (task model loaded with torch seeded by the run's ``seed``, split at
``split-layer`` with the run's U shape and bottleneck, LoRA attached with the same seed), so its trainable
tensors have the names of the run's client adapter, and knows two weight sets:

* ``initial``: the adapter every client started round 1 from (LoRA's B = 0, so the base model's function;
  the bottleneck's seeded initial ``cut_down``);
* ``final``: the global client adapter after the run's last completed round, from ``checkpoint.pt``
  (``global_adapter``: exactly the client runtime's trainable tensors) — or, if there is no checkpoint, the
  peft folder ``client_adapter/`` (LoRA and modules saved whole);
* ``round_start[r]``: the global client adapter the server sent at the start of round r, which a capture
  run records (``captures/server-adapter-round-<r>.pt``, ``global_start``): the weights every release of
  round r was computed from, up to the client's own steps within the round.

:meth:`AttackerHalf.use` loads one of them and returns, in words, which one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from fedguard.config import RunConfig
from fedguard.outputs.capture import CAPTURE_DIR
from fedguard.model.loading import ModelSpec, load_task_model, load_tokenizer
from fedguard.model.lora import LoraSettings, attach_lora, load_trainable_state, trainable_state
from fedguard.model.split import family_of, split_model
from fedguard.runtime import seeded

CHECKPOINT_FILE = "checkpoint.pt"  # written by the ServerApp after every round (fedguard.apps.checkpoint)
CLIENT_ADAPTER_DIR = "client_adapter"  # the client half's peft adapter (fedguard.apps.run_output)


@dataclass
class AttackerHalf:
    """A LoRA-wrapped client half (``half``) over ``model`` (the task model: its embedding modules give the
    nearest-neighbour candidates), with the ``initial`` adapter and, if the run left one, the ``final`` one."""

    half: nn.Module
    model: nn.Module
    initial: dict[str, torch.Tensor]
    final: dict[str, torch.Tensor] | None
    final_source: str
    round_start: dict[int, dict[str, torch.Tensor]] = field(default_factory=dict)

    @property
    def trainable(self) -> bool:
        """Whether the client half has any trainable tensor (not at split 0 without a bottleneck)."""
        return bool(self.initial)

    @property
    def final_differs(self) -> bool:
        """Whether the final adapter differs from the initial one (else the base-weights attacks already cover it)."""
        if self.final is None:
            return False
        return any(not torch.equal(self.final[k], self.initial[k]) for k in self.initial)

    def use(self, which: str | int) -> str:
        """Load the ``"initial"`` or ``"final"`` adapter, or (an int r) the one sent at the start of round r, and
        return a description of the weights now in the half. ``final`` falls back to ``initial`` when the run
        left none, a round without a recorded start to ``final``."""
        if isinstance(which, int) and not isinstance(which, bool):
            if which in self.round_start:
                load_trainable_state(self.half, self.round_start[which])
                return f"global client adapter sent at the start of round {which}"
            which = "final"
        if which == "final" and self.final is not None:
            load_trainable_state(self.half, self.final)
            return self.final_source
        if which not in ("initial", "final"):
            raise ValueError(f"weights {which!r}: allowed 'initial', 'final'")
        load_trainable_state(self.half, self.initial)
        if not self.trainable:
            return "base model (the client half has no trainable weights: split-layer 0 without a bottleneck)"
        if which == "final":
            return f"initial client adapter (no final adapter found: {self.final_source})"
        return "initial client adapter (base model; the weights of round 1)"


def _lora(config: RunConfig) -> LoraSettings:
    return LoraSettings(config.lora_r, config.lora_alpha, config.lora_dropout, config.lora_target_modules)


def attacker_client_half(run_dir: Path, config: RunConfig, model_name: str, task: str, num_labels: int,
                         split_layer: int, bottleneck_dim: int = 0) -> AttackerHalf:
    """Rebuild the run's client half (see the module docstring) and find its final adapter in ``run_dir``."""
    spec = ModelSpec(model_name, task, num_labels)
    tokenizer = load_tokenizer(spec)
    with seeded(config.seed):  # the run's new task head, as fedguard.runtime draws it
        model = load_task_model(spec, tokenizer.pad_token_id).eval()
    family = family_of(model)
    extra = {"bottleneck_dim": int(bottleneck_dim), "seed": config.seed} if bottleneck_dim else {}
    client, _ = split_model(model, split_layer, u_shape=config.u_shape, **extra)
    with seeded(config.seed):
        client = attach_lora(client, _lora(config), family)
    initial = trainable_state(client)
    final, source = _final_adapter(Path(run_dir), client, initial)
    return AttackerHalf(client, model, initial, final, source, _round_starts(Path(run_dir), initial))


def _round_starts(run_dir: Path, initial: dict[str, torch.Tensor]) -> dict[int, dict[str, torch.Tensor]]:
    """``{r: adapter}`` from the server's per-round capture files (``global_start``), where they match the half."""
    out = {}
    if not initial:
        return out
    for path in sorted((run_dir / CAPTURE_DIR).glob("server-adapter-round-*.pt")):
        suffix = path.stem.rsplit("-", 1)[-1]
        if not suffix.isdigit():
            continue
        state = torch.load(path, weights_only=False, map_location="cpu").get("global_start") or {}
        if state.keys() == initial.keys() and all(state[k].shape == initial[k].shape for k in initial):
            out[int(suffix)] = {k: v.float() for k, v in state.items()}
    return out


def _final_adapter(run_dir: Path, half: nn.Module,
                   initial: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor] | None, str]:
    if not initial:
        return None, "the client half has no trainable weights"
    checkpoint = run_dir / CHECKPOINT_FILE
    problems = []
    if checkpoint.is_file():
        saved = torch.load(checkpoint, weights_only=False, map_location="cpu")
        state = {k: v.float() for k, v in (saved.get("global_adapter") or {}).items()}
        try:
            load_trainable_state(half, state)
            return state, (f"final global client adapter after round {saved.get('round')} "
                           f"({CHECKPOINT_FILE}: global_adapter)")
        except ValueError as err:
            problems.append(f"{CHECKPOINT_FILE}: {err}")
        finally:
            load_trainable_state(half, initial)
    folder = run_dir / CLIENT_ADAPTER_DIR
    weights = folder / "adapter_model.safetensors"
    if weights.is_file() and hasattr(half, "peft_config"):
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        set_peft_model_state_dict(half, load_file(str(weights)))
        state = trainable_state(half)
        load_trainable_state(half, initial)
        return state, f"final client adapter ({CLIENT_ADAPTER_DIR}/, peft format)"
    problems.append(f"no {CHECKPOINT_FILE} and no {CLIENT_ADAPTER_DIR}/adapter_model.safetensors")
    return None, "; ".join(problems)
