"""What a finished FedGuard run left behind, loaded for the attacks: its config, captures and member rows.

A run started with ``capture-activations = N`` writes, per client, the first N examples it sent (the tensors
exactly as they left the client, with the true tokens) and every training row it trained on (see
:mod:`fedguard.outputs.capture`). The attacks read them from here; nothing in this module trains or attacks.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path

import torch

from fedguard.outputs.capture import CAPTURE_DIR, load_capture_file
from fedguard.config import RunConfig
from fedguard.mechanisms.activations import ActivationMechanism, ActivationPrivacy
from fedguard.mechanisms.choice import choose_activation_mechanism

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

    ``hidden[i]``: ``[T_i, W]`` float tensor exactly as sent the first time (after clipping and noise, padding
    removed; W = hidden size or the bottleneck's k); ``releases[i]``: every captured release of that example,
    the first included (a version-1 capture: the first only), and ``release_rounds[i]`` their rounds;
    ``input_ids[i]``: its true tokens ``[T_i]``; ``rows[i]``: its row in the run's training set;
    ``partitions[i]``: the client that sent it; ``meta``: model, task, split layer, mechanism and cut settings.
    """

    hidden: list[torch.Tensor]
    input_ids: list[torch.Tensor]
    rows: list[int]
    partitions: list[int]
    meta: dict
    releases: list[list[torch.Tensor]] = field(default_factory=list)
    release_rounds: list[list[int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.releases:
            self.releases = [[h] for h in self.hidden]
        if not self.release_rounds:
            self.release_rounds = [[0] * len(r) for r in self.releases]

    def __len__(self) -> int:
        return len(self.hidden)

    @property
    def split_layer(self) -> int:
        return int(self.meta["split-layer"])

    @property
    def activation_privacy(self) -> ActivationPrivacy | None:
        """The Gaussian clip-and-noise mechanism the clients applied (None when they applied none, or d_χ)."""
        mechanism = activation_mechanism(self.meta)
        return mechanism if isinstance(mechanism, ActivationPrivacy) else None

    def mechanism(self, config: RunConfig | None = None) -> ActivationMechanism | None:
        """The mechanism the clients applied to what they sent (:func:`activation_mechanism`)."""
        return activation_mechanism(self.meta, config)

    def release_counts(self) -> list[int]:
        return [len(r) for r in self.releases]

    def subset(self, indices: list[int]) -> Captures:
        pick = lambda items: [items[i] for i in indices]  # noqa: E731
        return Captures(pick(self.hidden), pick(self.input_ids), pick(self.rows), pick(self.partitions), self.meta,
                        pick(self.releases), pick(self.release_rounds))


def activation_mechanism(meta: dict, config: RunConfig | None = None) -> ActivationMechanism | None:
    """The mechanism a client of this run applied to the states it sent, built as the client builds it
    (:func:`fedguard.mechanisms.choice.choose_activation_mechanism`): ``act-clip-norm`` > 0 → Gaussian
    :class:`ActivationPrivacy` (clip C, σ); else ``dchi-eta`` > 0 → :class:`EmbeddingDChi` (η, token clip,
    ``max-length`` tokens); else None (sent in clear). Settings come from the capture's ``meta``, falling back
    to the run config for keys an older capture lacks."""
    def value(key: str, default: object) -> object:
        if key in meta and meta[key] is not None:
            return meta[key]
        return getattr(config, key.replace("-", "_"), default) if config is not None else default

    return choose_activation_mechanism(float(value("act-clip-norm", 0.0) or 0.0),
                                       float(value("act-noise-multiplier", 0.0) or 0.0),
                                       float(value("dchi-eta", 0.0) or 0.0), float(value("dchi-token-clip", 1.0)),
                                       int(value("max-length", 64)))


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
        saved = load_capture_file(path)
        common = set(saved["meta"]) & set(out.meta)
        if out.meta and any(saved["meta"][key] != out.meta[key] for key in common):
            raise RunDirError(f"{path}: capture settings {saved['meta']} differ from another client's {out.meta}")
        out.meta = {**out.meta, **saved["meta"]}
        first = [h.float() for h in saved["hidden"]]
        out.hidden += first
        out.releases += [[h, *(r.float() for r in more)] for h, more in zip(first, saved["repeats"])]
        out.release_rounds += [[int(r), *(int(x) for x in more)]
                               for r, more in zip(saved["round"], saved["repeat_rounds"])]
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
