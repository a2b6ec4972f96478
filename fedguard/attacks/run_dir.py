"""What a finished FedGuard run left behind, loaded for the attacks: its config, captures and member rows.

A run started with ``capture-activations = N`` writes, per client, the first N examples it sent (the tensors
exactly as they left the client, with the true tokens) and every training row it trained on (see
:mod:`fedguard.outputs.capture`). The attacks read them from here; nothing in this module trains or attacks.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path

import torch

from fedguard.outputs.capture import CAPTURE_DIR
from fedguard.config import RunConfig
from fedguard.mechanisms.activations import ActivationPrivacy

RERUN_HINT = ("re-run with capture-activations=N, e.g. flwr run . --run-config \"capture-activations=64\" "
              "(it records the first N examples each client sends and the rows it trains on)")


class RunDirError(ValueError):
    """The run directory lacks what an attack needs (the message says what to do)."""


def load_run_config(run_dir: Path) -> RunConfig:
    """The run's resolved :class:`RunConfig` from ``config.json`` (keys this FedGuard does not know are
    ignored, so an older or newer run directory still loads)."""
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise RunDirError(f"{run_dir} is not a finished FedGuard run directory: no config.json")
    raw = json.loads(path.read_text())
    known = {f.name.replace("_", "-") for f in fields(RunConfig)}
    return RunConfig.from_run_config({key: value for key, value in raw.items() if key in known})


@dataclass
class Captures:
    """Everything the clients sent that was captured, over all clients (one entry per example).

    ``hidden[i]``: ``[T_i, H]`` float tensor exactly as sent (after clipping and noise, padding removed);
    ``input_ids[i]``: its true tokens ``[T_i]``; ``rows[i]``: its row in the run's training set;
    ``partitions[i]``: the client that sent it; ``meta``: model, task, split layer and mechanism settings.
    """

    hidden: list[torch.Tensor]
    input_ids: list[torch.Tensor]
    rows: list[int]
    partitions: list[int]
    meta: dict

    def __len__(self) -> int:
        return len(self.hidden)

    @property
    def split_layer(self) -> int:
        return int(self.meta["split-layer"])

    @property
    def activation_privacy(self) -> ActivationPrivacy | None:
        """The clip-and-noise mechanism the clients applied (None when activations were sent in clear)."""
        clip = float(self.meta.get("act-clip-norm") or 0.0)
        noise = float(self.meta.get("act-noise-multiplier") or 0.0)
        return ActivationPrivacy(clip, noise) if clip > 0 else None

    def subset(self, indices: list[int]) -> Captures:
        pick = lambda items: [items[i] for i in indices]  # noqa: E731
        return Captures(pick(self.hidden), pick(self.input_ids), pick(self.rows), pick(self.partitions), self.meta)


def _capture_files(run_dir: Path) -> list[tuple[int, Path]]:
    folder = Path(run_dir) / CAPTURE_DIR
    found = []
    for path in sorted(folder.glob("partition-*.pt")):
        suffix = path.stem[len("partition-"):]
        if suffix.isdigit():
            found.append((int(suffix), path))
    return sorted(found)


def load_captures(run_dir: Path) -> Captures:
    """All clients' captured examples, in partition order; :class:`RunDirError` if the run captured none."""
    files = _capture_files(run_dir)
    if not files:
        raise RunDirError(f"{run_dir} has no activation captures ({CAPTURE_DIR}/partition-*.pt): {RERUN_HINT}")
    out = Captures([], [], [], [], {})
    for partition, path in files:
        saved = torch.load(path, weights_only=False, map_location="cpu")
        if out.meta and saved["meta"] != out.meta:
            raise RunDirError(f"{path}: capture settings {saved['meta']} differ from another client's {out.meta}")
        out.meta = dict(saved["meta"])
        out.hidden += [h.float() for h in saved["hidden"]]
        out.input_ids += [ids.long() for ids in saved["input_ids"]]
        out.rows += [int(r) for r in saved["rows"]]
        out.partitions += [partition] * len(saved["hidden"])
    if not out.hidden:
        raise RunDirError(f"{run_dir}: the capture files hold no example: {RERUN_HINT}")
    return out


def load_trained_rows(run_dir: Path) -> set[int]:
    """Training-set rows at least one client trained on (the members); :class:`RunDirError` if unrecorded."""
    folder = Path(run_dir) / CAPTURE_DIR
    paths = sorted(folder.glob("partition-*-trained.json"))
    if not paths:
        raise RunDirError(f"{run_dir} has no record of the rows clients trained on "
                          f"({CAPTURE_DIR}/partition-*-trained.json): {RERUN_HINT}")
    rows: set[int] = set()
    for path in paths:
        rows.update(int(r) for r in json.loads(path.read_text()))
    return rows
