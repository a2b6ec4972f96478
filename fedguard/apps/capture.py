"""Evaluation only: record what a client sent, with the ground truth an attack is scored against.

With ``capture-activations = N`` each client writes, under ``<output-dir>/captures/``:

* ``partition-<id>.pt`` — its first N examples as sent: ``hidden`` (list of ``[T_i, H]`` float tensors, padding
  removed, exactly the tensors that left the client: after clipping and noise), and the ground truth
  ``input_ids`` (``[T_i]``), ``labels`` (class id, or ``[T_i]`` token targets) and ``rows`` (row ids in the
  run's training set), plus ``meta`` (model, task, split layer, mechanism settings);
* ``partition-<id>-trained.json`` — every training-set row the client trained on (members, for membership
  inference; under DP-SGD these come from the client's secret Poisson sampling).

This file holds private text in clear: it is for measuring attacks on your own runs, never for production.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import torch

from fedguard.apps.atomic_write import write_bytes_atomic
from fedguard.config import RunConfig
from fedguard.data.batches import TokenBatch

CAPTURE_DIR = "captures"


def capture_path(output_dir: str | Path, partition_id: int) -> Path:
    return Path(output_dir).expanduser() / CAPTURE_DIR / f"partition-{partition_id}.pt"


def trained_rows_path(output_dir: str | Path, partition_id: int) -> Path:
    return Path(output_dir).expanduser() / CAPTURE_DIR / f"partition-{partition_id}-trained.json"


class ActivationCapture:
    """Appends to one client's capture files (see the module docstring)."""

    def __init__(self, config: RunConfig, partition_id: int, rows: list[int]) -> None:
        self.config = config
        self.limit = config.capture_activations
        self.rows = rows  # shard index -> training-set row
        self.path = capture_path(config.output_dir, partition_id)
        self.trained_path = trained_rows_path(config.output_dir, partition_id)

    def record(self, hidden: list[torch.Tensor], batches: list[TokenBatch], indices: list[list[int]],
               server_round: int) -> None:
        """Record a chunk that is about to be sent: its examples (up to the limit) and its training rows."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        trained = set(json.loads(self.trained_path.read_text())) if self.trained_path.exists() else set()
        trained.update(self.rows[i] for batch in indices for i in batch)
        write_bytes_atomic(self.trained_path, json.dumps(sorted(trained)).encode())
        saved = torch.load(self.path, weights_only=False) if self.path.exists() else self._empty()
        for sent, batch, shard_indices in zip(hidden, batches, indices):
            for j, index in enumerate(shard_indices):
                if len(saved["hidden"]) >= self.limit:
                    break
                length = int(batch.attention_mask[j].sum())
                saved["hidden"].append(sent[j, :length].clone())
                saved["input_ids"].append(batch.input_ids[j, :length].clone())
                label = batch.labels[j]
                saved["labels"].append(int(label) if label.dim() == 0 else label[:length].clone())
                saved["rows"].append(self.rows[index])
                saved["round"].append(server_round)
        buffer = io.BytesIO()
        torch.save(saved, buffer)
        write_bytes_atomic(self.path, buffer.getvalue())

    def _empty(self) -> dict:
        c = self.config
        return {"hidden": [], "input_ids": [], "labels": [], "rows": [], "round": [], "meta": {
            "model": c.model, "task": c.task, "split-layer": c.split_layer, "dataset": c.dataset,
            "max-length": c.max_length, "act-clip-norm": c.act_clip_norm,
            "act-noise-multiplier": c.act_noise_multiplier, "label-protection": c.label_protection,
        }}
