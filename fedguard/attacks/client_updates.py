"""Membership inference against single clients' updates: what the server learns from one client's adapter.

Adversary: the server (or a separate aggregator). Unlike a third party, it sees each client's adapter
*before* aggregation, and knows the global adapter it sent at the start of that round. For each client whose
update was captured (``capture-activations = N``: the client keeps its update of every round; the server
keeps, per round, its half before and after the round and the global adapter it sent), the client's *first*
update is attacked with four scores per example (higher = "member"; ℓ = the example's loss):

* ``loss-threshold``: −ℓ of the joined model ``server-half-after(r) ∘ client-update(r)``;
* ``calibrated``: −(ℓ − ℓ of the base model);
* ``update-difference``: −(ℓ − ℓ of ``server-half-after(r) ∘ global-start(r)``): what the round did to the
  example, the same server half on both sides;
* ``isolated-update-difference``: the same with the server half from *before* the round, which never saw the
  round's data: only the client's update differs, the release client DP-SGD covers. The verdict is taken
  from this one.

The server half after the round was trained on the clients' activations and (returned) gradients of their
labels, with no DP of its own, and it co-adapted with the client's changing adapter during the round; so
the first three also measure what the server half remembers, which client DP-SGD does not protect.

Members: rows that client trained on in that round (``partition-<id>-trained-round-<r>.json``); non-members:
training-set rows **no** client trained on in any round (same distribution). Rows of other clients are
neither. Scores are pooled over clients, each example scored with its own client's models.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fedguard.outputs.capture import CAPTURE_DIR, server_adapter_path, trained_rows_path
from fedguard.runtime import RunData, runtime_for
from fedguard.attacks.membership import (
    AttackScore,
    encode_rows,
    example_losses,
    load_reference_model,
    membership_attacks,
    sample_members,
    score_attack,
)

DIFFERENCE = "update-difference"
ISOLATED = "isolated-update-difference"  # the attack the verdict is taken from
from fedguard.attacks.run_dir import RERUN_HINT, RunDirError, load_trained_rows
from fedguard.config import RunConfig
from fedguard.model.lora import load_trainable_state
from fedguard.training.objectives import example_losses as _example_losses


@dataclass(frozen=True)
class ClientUpdate:
    """One client's captured update: its partition, round, adapter, and the rows it trained on."""

    partition: int
    round: int
    adapter: dict[str, torch.Tensor]
    trained_rows: set[int]


def has_client_updates(run_dir: Path) -> bool:
    """The run captured at least one client update (runs before this capture existed have none)."""
    return any((Path(run_dir) / CAPTURE_DIR).glob("partition-*-update-round-*.pt"))


def load_client_updates(run_dir: Path) -> list[ClientUpdate]:
    """Each client's *first* captured update with its trained rows, in partition order (:class:`RunDirError`
    if none). The first, because the adapter the client started that round from holds nothing of its own data
    yet, so comparing the two isolates what the client's data did."""
    folder = Path(run_dir) / CAPTURE_DIR
    first: dict[int, tuple[int, Path]] = {}
    for path in folder.glob("partition-*-update-round-*.pt"):
        partition, _, server_round = path.name[len("partition-"):-len(".pt")].partition("-update-round-")
        if partition.isdigit() and server_round.isdigit():
            key, value = int(partition), (int(server_round), path)
            first[key] = min(first.get(key, value), value)
    out = []
    for partition, (server_round, path) in sorted(first.items()):
        saved = torch.load(path, weights_only=False, map_location="cpu")
        trained = trained_rows_path(run_dir, partition, server_round)  # the rows of that round only
        rows = {int(r) for r in json.loads(trained.read_text())} if trained.is_file() else set()
        out.append(ClientUpdate(partition, server_round, saved["adapter"], rows))
    if not out:
        raise RunDirError(f"{run_dir} has no captured client updates ({CAPTURE_DIR}/partition-*-update-round-*.pt): "
                          f"{RERUN_HINT}")
    return out


@torch.no_grad()
def _joined_losses(config: RunConfig, data: RunData, client_adapter: dict, server_adapter: dict,
                   rows: list[int]) -> np.ndarray:
    runtime = runtime_for(config, data.num_labels)
    load_trainable_state(runtime.client, client_adapter)
    load_trainable_state(runtime.server, server_adapter)
    runtime.client.eval()
    runtime.server.eval()
    losses = []
    for batch in encode_rows(runtime.tokenizer, data.train, rows, config.max_length):
        logits = runtime.logits(batch.input_ids, batch.attention_mask)
        losses.append(_example_losses(logits.float(), batch.labels).numpy())
    return np.concatenate(losses) if losses else np.zeros(0)


# Loss columns per example: (client adapter, server half) of each joined model, or the base model.
_MODELS = {"update": ("update", "server-after"), "start": ("global-start", "server-after"),
           "isolated-update": ("update", "server-start"), "isolated-start": ("global-start", "server-start")}


def client_update_membership(run_dir: Path, config: RunConfig, data: RunData, max_examples: int,
                             seed: int) -> tuple[dict[str, AttackScore], list[dict], dict]:
    """Pooled attack scores, one summary per client, and the mean losses (see the module docstring).

    ``max_examples`` members per client (and as many non-members), drawn with ``seed``.
    """
    updates = load_client_updates(run_dir)
    everyone = load_trained_rows(run_dir)  # any client, any round
    reference = load_reference_model(config, data.num_labels)
    tokenizer = runtime_for(config, data.num_labels).tokenizer
    pooled: dict[str, list[np.ndarray]] = {}
    per_client = []
    for update in updates:
        path = server_adapter_path(run_dir, update.round)
        if not path.is_file():
            raise RunDirError(f"{path} is missing: the server half of round {update.round} was not captured")
        saved = torch.load(path, weights_only=False, map_location="cpu")
        adapters = {"update": update.adapter, "global-start": saved["global_start"],
                    "server-after": saved["adapter"], "server-start": saved["server_start"]}
        try:
            members, non_members = sample_members(update.trained_rows, len(data.train), max_examples, seed,
                                                  exclude=everyone)
        except ValueError as err:
            per_client.append({"partition": update.partition, "round": update.round, "skipped": str(err)})
            continue
        losses: dict[str, np.ndarray] = {}
        for group, rows in (("m", members), ("n", non_members)):
            losses[f"{group}:reference"] = example_losses(reference, encode_rows(tokenizer, data.train, rows,
                                                                                 config.max_length))
            for name, (client, server) in _MODELS.items():
                losses[f"{group}:{name}"] = _joined_losses(config, data, adapters[client], adapters[server], rows)
        scores = _scores(losses)
        per_client.append({"partition": update.partition, "round": update.round, "members": len(members),
                           **{f"{name}_auc": score.auc for name, score in scores.items()}})
        for key, value in losses.items():
            pooled.setdefault(key, []).append(value)
    if not pooled:
        raise RunDirError(f"{run_dir}: no client update could be attacked: {per_client}")
    losses = {key: np.concatenate(values) for key, values in pooled.items()}
    means = {f"{'members' if key[0] == 'm' else 'non_members'}:{key[2:]}": float(value.mean())
             for key, value in losses.items()}
    return _scores(losses), per_client, means


def _scores(losses: dict[str, np.ndarray]) -> dict[str, AttackScore]:
    """The four attacks from the loss columns (``m:``/``n:`` + model name; higher score = member)."""
    def diff(a: str, b: str, group: str) -> np.ndarray:
        return -(losses[f"{group}:{a}"] - losses[f"{group}:{b}"])

    scores = membership_attacks(losses["m:update"], losses["n:update"], losses["m:reference"], losses["n:reference"])
    scores[DIFFERENCE] = score_attack(diff("update", "start", "m"), diff("update", "start", "n"))
    scores[ISOLATED] = score_attack(diff("isolated-update", "isolated-start", "m"),
                                    diff("isolated-update", "isolated-start", "n"))
    return scores


CLIENT_UPDATE_THREAT = (
    "honest-but-curious server (or a compromised aggregator) that sees each client's adapter before aggregation "
    "and joins it with its own half, deciding whether an example was in that client's data from its loss")


def run_client_update_membership(run_dir: Path, config: RunConfig, data: RunData, max_examples: int,
                                 seed: int) -> dict[str, dict]:
    """The ``client-update-membership`` report entry (settings, pooled and per-client metrics, verdict)."""
    started = time.perf_counter()
    scores, per_client, means = client_update_membership(run_dir, config, data, max_examples, seed)
    score = scores[ISOLATED]
    members = sum(c.get("members", 0) for c in per_client)
    joined = max(scores[k].auc for k in scores if k != ISOLATED)
    if score.z > 3:
        verdict = (f"membership inference on single client updates: LEAKY: the update alone (isolated-update-"
                   f"difference) gives AUC {score.auc:.3f} (chance 0.5 ± {score.auc_null_se:.3f}), TPR "
                   f"{score.tpr_at_fpr:.1%} at {score.fpr:.0%} FPR")
    else:
        verdict = (f"membership inference on single client updates: no membership signal detected from the "
                   f"update alone: isolated-update-difference AUC {score.auc:.3f} is within 3 standard errors "
                   f"({score.auc_null_se:.3f}) of chance with {members} members over {len(per_client)} client(s)")
    verdict += f"; joined with the server half after the round (no DP of its own): best AUC {joined:.3f}"
    return {"client-update-membership": {
        "attack": "membership inference against each client's own update joined with the server half of the same "
                  "round: loss-threshold, calibrated (base model), update-difference (vs the adapter the client "
                  "started the round from, same server half) and isolated-update-difference (the same with the server "
                  "half from before the round); scores pooled over clients; verdict from isolated-update-difference",
        "threat": CLIENT_UPDATE_THREAT,
        "release": "one client's adapter as sent at the end of its first round (before aggregation)",
        "settings": {"clients": len(per_client), "members": members, "members_per_client": max_examples,
                     "non_member_source": "training-set rows no client trained on (same distribution)",
                     "seed": seed, "dp-noise-multiplier": config.dp_noise_multiplier,
                     "dp-target-epsilon": config.dp_target_epsilon},
        "metrics": {**{name: score.to_dict() for name, score in scores.items()}, "mean_loss": means,
                    "per_client": per_client},
        "verdict": verdict,
        "seconds": time.perf_counter() - started,
    }}
