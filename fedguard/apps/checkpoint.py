"""Server checkpoints: after every completed round, everything needed to continue the run.

``<output-dir>/checkpoint.pt`` (written atomically: temp file, fsync, ``os.replace``) holds the last completed
round, the global client adapter, the server half's adapter and optimiser state, ``metrics.json``'s content,
the clients excluded by their budgets, and the RNG states. The privacy ledger is *not* in the checkpoint: it
lives in ``privacy_ledger.json``, rewritten as each reply arrives, so it also holds what was spent in a round
that crashed; a resumed run keeps it as it is (spending is never rolled back to the checkpoint).
"""

from __future__ import annotations

import io
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fedguard.outputs.atomic_write import write_bytes_atomic

CHECKPOINT = "checkpoint.pt"


@dataclass
class Checkpoint:
    """State after round ``round`` (1-based) completed."""

    round: int
    global_adapter: dict[str, torch.Tensor]
    server_adapter: dict[str, torch.Tensor]
    server_optimizer: dict[str, torch.Tensor]
    metrics: dict[str, Any]
    excluded: dict[str, str]
    rng: dict[str, Any]


def save_checkpoint(out: Path, checkpoint: Checkpoint) -> Path:
    """Atomically write ``checkpoint`` to ``out / checkpoint.pt``."""
    buffer = io.BytesIO()
    torch.save(checkpoint.__dict__, buffer)
    path = out / CHECKPOINT
    write_bytes_atomic(path, buffer.getvalue())
    return path


def load_checkpoint(out: Path) -> Checkpoint | None:
    """The checkpoint in ``out``, or None if there is none."""
    path = out / CHECKPOINT
    if not path.exists():
        return None
    return Checkpoint(**torch.load(path, weights_only=False))


def rng_state() -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "python": random.getstate()}


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
