"""``ffa-lora``: every LoRA A frozen at its shared initial value, only B trained and averaged (FFA-LoRA).

With A identical on every client, mean_k(B_k) · A = mean_k(B_k · A): averaging B is the exact average of the
clients' LoRA updates. The train config carries ``lora-freeze-a = True`` so clients keep A as received; the
global A is the one drawn from the run seed at the start and never changes. Under DP-SGD the noise then
enters one linear factor only.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import torch

from fedguard.protocol.messages import FREEZE_LORA_A
from strategies.base import AdapterStrategy, ClientUpdate, weighted_mean
from strategies.lora_pairs import is_lora_a

log = logging.getLogger("fedguard.strategies")


class FfaLora(AdapterStrategy):
    """Clients train B only; the new global is (global A, example-weighted mean of everything else)."""

    def train_config(self, server_round: int) -> dict[str, bool | int | float | str]:
        return {FREEZE_LORA_A: True}

    def aggregate_adapters(self, server_round: int, updates: Sequence[ClientUpdate],
                           current_global: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        frozen = [name for name in current_global if is_lora_a(name)]
        moved = [u.node_id for u in updates
                 if any(not torch.equal(u.tensors[name], current_global[name]) for name in frozen)]
        if moved:
            log.warning("round %d: client(s) %s changed a frozen LoRA A (they ignore %r); their A is discarded",
                        server_round, moved, FREEZE_LORA_A)
        self.report("clients-moved-a", len(moved))
        new = weighted_mean(updates, [name for name in current_global if not is_lora_a(name)])
        new.update({name: current_global[name].clone() for name in frozen})
        return new
