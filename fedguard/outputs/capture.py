"""Evaluation only: record what a client sent, with the ground truth an attack is scored against.

With ``capture-activations = N`` each client writes, under ``<output-dir>/captures/``:

* ``partition-<id>.pt`` — its first N *distinct* examples as sent (format :data:`CAPTURE_VERSION`):
  ``hidden`` (list of ``[T_i, W]`` float tensors, padding removed, exactly the tensors that left the client:
  after clipping and noise; W = the hidden size, or ``bottleneck-dim``), and the ground truth ``input_ids``
  (``[T_i]``), ``labels`` (class id, or ``[T_i]`` token targets) and ``rows`` (row ids in the run's training
  set; -1 for a canary copy, which is in no row), ``round`` (the round of that first release) and
  ``shard_index`` (the example's index in the client's shard: the key of its releases); then every *later*
  release of the same example (other epochs, rounds) in ``repeats[i]`` (list of ``[T_i, W]`` tensors, in
  the order sent) with their rounds in ``repeat_rounds[i]``; ``version`` and ``meta`` (model, task, split
  layer, mechanism and cut settings). A version-1 file (no ``version``, ``repeats`` or ``shard_index``: only
  the first release of each example) still loads, as one release per example, and a resumed run appends to
  it without repeats for the examples it already holds;
* ``partition-<id>-update-round-<r>.pt`` — the client adapter of its final reply in round r (``round``,
  ``adapter``): the update the server receives, for membership inference against a single client's update;
* ``partition-<id>-trained.json`` (and ``partition-<id>-trained-round-<r>.json`` per round) — every
  training-set row the client trained on (members, for membership
  inference; under DP-SGD these come from the client's secret Poisson sampling). Canary copies are not
  training-set rows and are not listed.

The server writes ``server-adapter-round-<r>.pt``: its half's adapter before and after round r and the global
client adapter it sent at the start of round r, so a client's update can be joined with a server half and
compared with the adapter it started from.

These files hold private text in clear: it is for measuring attacks on your own runs, never for production.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import torch

from fedguard.outputs.atomic_write import write_bytes_atomic
from fedguard.config import RunConfig
from fedguard.data.batches import TokenBatch
from fedguard.data.canaries import CANARY_ROW

CAPTURE_DIR = "captures"


def capture_path(output_dir: str | Path, partition_id: int) -> Path:
    return Path(output_dir).expanduser() / CAPTURE_DIR / f"partition-{partition_id}.pt"


def trained_rows_path(output_dir: str | Path, partition_id: int, server_round: int | None = None) -> Path:
    """All rows the client trained on, or (``server_round`` given) those of that round only."""
    suffix = "" if server_round is None else f"-round-{server_round}"
    return Path(output_dir).expanduser() / CAPTURE_DIR / f"partition-{partition_id}-trained{suffix}.json"


CAPTURE_VERSION = 2  # 1: first release of each example only; 2: + every later release of those examples


class ActivationCapture:
    """Appends to one client's capture files (see the module docstring)."""

    def __init__(self, config: RunConfig, partition_id: int, rows: list[int]) -> None:
        self.config = config
        self.limit = config.capture_activations
        self.rows = rows  # shard index -> training-set row (CANARY_ROW for a canary copy)
        self.path = capture_path(config.output_dir, partition_id)
        self.partition_id = partition_id
        self.trained_path = trained_rows_path(config.output_dir, partition_id)

    def record(self, hidden: list[torch.Tensor], batches: list[TokenBatch], indices: list[list[int]],
               server_round: int) -> None:
        """Record a chunk that is about to be sent: its training rows, the examples it releases for the first
        time (while fewer than the limit are held), and every further release of an example already held
        (keyed by shard index)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        used = [self.rows[i] for batch in indices for i in batch if self.rows[i] != CANARY_ROW]
        for path in (self.trained_path, trained_rows_path(self.config.output_dir, self.partition_id, server_round)):
            trained = set(json.loads(path.read_text())) if path.exists() else set()
            write_bytes_atomic(path, json.dumps(sorted(trained.union(used))).encode())
        saved = _upgraded(torch.load(self.path, weights_only=False)) if self.path.exists() else self._empty()
        held = {index: i for i, index in enumerate(saved["shard_index"]) if index >= 0}
        changed = False
        for sent, batch, shard_indices in zip(hidden, batches, indices):
            for j, index in enumerate(shard_indices):
                length = int(batch.attention_mask[j].sum())
                release = sent[j, :length].detach().clone()
                if index in held:
                    saved["repeats"][held[index]].append(release)
                    saved["repeat_rounds"][held[index]].append(server_round)
                    changed = True
                    continue
                if len(saved["hidden"]) >= self.limit:
                    continue
                held[index] = len(saved["hidden"])
                saved["hidden"].append(release)
                saved["input_ids"].append(batch.input_ids[j, :length].clone())
                label = batch.labels[j]
                saved["labels"].append(int(label) if label.dim() == 0 else label[:length].clone())
                saved["rows"].append(self.rows[index])
                saved["round"].append(server_round)
                saved["shard_index"].append(int(index))
                saved["repeats"].append([])
                saved["repeat_rounds"].append([])
                changed = True
        if not changed and self.path.exists():
            return
        buffer = io.BytesIO()
        torch.save(saved, buffer)
        write_bytes_atomic(self.path, buffer.getvalue())

    def _empty(self) -> dict:
        c = self.config
        return {"version": CAPTURE_VERSION, "hidden": [], "input_ids": [], "labels": [], "rows": [], "round": [],
                "shard_index": [], "repeats": [], "repeat_rounds": [], "meta": {
                    "model": c.model, "task": c.task, "split-layer": c.split_layer, "dataset": c.dataset,
                    "max-length": c.max_length, "act-clip-norm": c.act_clip_norm,
                    "act-noise-multiplier": c.act_noise_multiplier, "label-protection": c.label_protection,
                    "dchi-eta": c.dchi_eta, "dchi-token-clip": c.dchi_token_clip,
                    "bottleneck-dim": getattr(c, "bottleneck_dim", 0),
                    "activation-reuse": getattr(c, "activation_reuse", "none"),
                }}


def _upgraded(saved: dict) -> dict:
    """A capture file's content in the current format: a version-1 file (first releases only, no shard
    indices) gets empty repeats and unknown (-1) shard indices, so none of its examples gains repeats."""
    count = len(saved["hidden"])
    saved.setdefault("shard_index", [-1] * count)
    saved.setdefault("repeats", [[] for _ in range(count)])
    saved.setdefault("repeat_rounds", [[] for _ in range(count)])
    saved.setdefault("round", [0] * count)
    saved["version"] = CAPTURE_VERSION
    return saved


def load_capture_file(path: str | Path) -> dict:
    """One client's capture file in the current format (a version-1 file upgraded: see :func:`_upgraded`)."""
    return _upgraded(torch.load(Path(path), weights_only=False, map_location="cpu"))


def update_path(output_dir: str | Path, partition_id: int, server_round: int) -> Path:
    return Path(output_dir).expanduser() / CAPTURE_DIR / f"partition-{partition_id}-update-round-{server_round}.pt"


def server_adapter_path(output_dir: str | Path, server_round: int) -> Path:
    return Path(output_dir).expanduser() / CAPTURE_DIR / f"server-adapter-round-{server_round}.pt"


def _save_tensors(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    write_bytes_atomic(path, buffer.getvalue())


def record_client_update(output_dir: str | Path, partition_id: int, server_round: int,
                         adapter: dict[str, torch.Tensor]) -> None:
    """Keep the adapter a client is about to send as its round-``server_round`` update."""
    _save_tensors(update_path(output_dir, partition_id, server_round),
                  {"round": server_round, "adapter": {k: v.detach().clone() for k, v in adapter.items()}})


def record_server_adapters(output_dir: str | Path, server_round: int, server_half: dict[str, torch.Tensor],
                           global_start: dict[str, torch.Tensor], server_start: dict[str, torch.Tensor]) -> None:
    """Keep, for ``server_round``: the server half's adapter after it (``adapter``) and before it
    (``server_start``), and the global client adapter the round's clients started from (``global_start``)."""
    copy = lambda tensors: {k: v.detach().clone() for k, v in tensors.items()}  # noqa: E731
    _save_tensors(server_adapter_path(output_dir, server_round), {
        "round": server_round, "adapter": copy(server_half), "global_start": copy(global_start),
        "server_start": copy(server_start)})
