"""A client's own privacy: its secret, its ledger, its budget checks, and the events it reports.

The server is not trusted to stop a client. Each client keeps its own :class:`PrivacyLedger` — in
``Context.state`` in simulation, or in the file named by the node config ``ledger-path`` in a deployment
(written atomically before the reply that spends the privacy leaves) — and refuses a round that would
take its certified ε above its budget (the smaller of the run's ``max-epsilon`` and the node config's
``max-epsilon``; likewise ``max-activation-epsilon``).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context

from fedguard.config import RunConfig
from fedguard.mechanisms.activations import ActivationMechanism, ActivationPrivacy
from fedguard.mechanisms.embedding_dchi import EmbeddingDChi
from fedguard.mechanisms.dp_sgd import dp_sgd_event
from fedguard.mechanisms.labels import label_event
from fedguard.mechanisms.sampling import new_secret
from fedguard.privacy import MechanismEvent, PrivacyLedger, noise_multiplier_for

_SECRET = "fedguard.secret"
_LEDGER = "fedguard.ledger"
_RELEASES = "fedguard.activation-releases"


@functools.lru_cache(maxsize=32)
def solved_noise_multiplier(target_epsilon: float, delta: float, sample_rate: float, steps: int) -> float:
    """σ whose *certified* ε after ``steps`` Poisson-sampled steps at rate q is ``target_epsilon``."""
    return noise_multiplier_for(target_epsilon, delta, sample_rate, steps, method="certified")


class ClientPrivacy:
    """Privacy state and policy of one client for one message."""

    def __init__(self, config: RunConfig, context: Context, shard_size: int) -> None:
        self.config = config
        self.context = context
        node = context.node_config
        self.client_id = str(node.get("client-id", f"partition-{int(node.get('partition-id', 0))}"))
        state = context.state.config_records.get(_SECRET)
        if state is None:
            context.state[_SECRET] = ConfigRecord({"secret": new_secret()})
            state = context.state.config_records[_SECRET]
        self.secret = int(state["secret"])
        self.shard_size = shard_size
        self.sample_rate = min(1.0, config.batch_size / shard_size)
        self.noise_multiplier = 0.0
        if config.dp_noise_multiplier > 0:
            self.noise_multiplier = config.dp_noise_multiplier
        elif config.dp_target_epsilon > 0:
            self.noise_multiplier = solved_noise_multiplier(
                config.dp_target_epsilon, config.dp_delta, self.sample_rate,
                config.num_server_rounds * config.local_steps)
        self.activation: ActivationMechanism | None = None
        if config.act_clip_norm > 0:
            self.activation = ActivationPrivacy(config.act_clip_norm, config.act_noise_multiplier)
        elif config.dchi_eta > 0:
            self.activation = EmbeddingDChi(config.dchi_eta, config.dchi_token_clip, config.max_length)
        self.max_epsilon = _stricter(config.max_epsilon, float(node.get("max-epsilon", 0.0)))
        self.max_activation_epsilon = _stricter(config.max_activation_epsilon,
                                                float(node.get("max-activation-epsilon", 0.0)))
        ledger_path = node.get("ledger-path")
        self.ledger_path = Path(str(ledger_path)) if ledger_path else None
        self.ledger = self._load_ledger()

    # -- ledger ----------------------------------------------------------------------------------
    def _load_ledger(self) -> PrivacyLedger:
        if self.ledger_path is not None:
            if self.ledger_path.exists():
                return PrivacyLedger.load(self.ledger_path)
            return PrivacyLedger(self.ledger_path)
        ledger = PrivacyLedger()
        record = self.context.state.config_records.get(_LEDGER)
        if record is not None:
            for item in json.loads(str(record["json"])).get(self.client_id, []):
                ledger.record(self.client_id, MechanismEvent.from_dict(item))
        return ledger

    def record(self, events: list[MechanismEvent]) -> None:
        """Add ``events`` to the client's own ledger and persist it (before the reply is sent)."""
        for event in events:
            self.ledger.record(self.client_id, event)
        if self.ledger_path is not None:
            self.ledger.save()
        else:
            payload = {self.client_id: [e.to_dict() for e in self.ledger.events(self.client_id)]}
            self.context.state[_LEDGER] = ConfigRecord({"json": json.dumps(payload)})

    # -- events ----------------------------------------------------------------------------------
    def round_events(self, server_round: int, steps: int) -> list[MechanismEvent]:
        """Events spent when the round's adapter is released: DP-SGD steps, and the label RR once."""
        events = []
        if self.noise_multiplier > 0:
            events.append(dp_sgd_event(self.noise_multiplier, self.sample_rate, steps, self.config.dp_max_grad_norm,
                                       server_round))
        if self.config.label_protection == "randomized-response" and not self.ledger.events(self.client_id, "label-rr"):
            events.append(label_event(self.config.label_epsilon))
        return events

    def activation_events(self, indices: list[list[int]], server_round: int) -> list[MechanismEvent]:
        """Count one more release of every example in ``indices``; the event covers the most-released one."""
        counts = self._release_counts()
        before = int(counts.max(initial=0))
        for batch in indices:
            np.add.at(counts, np.asarray(batch, dtype=np.int64), 1)
        self.context.state[_RELEASES] = ArrayRecord(numpy_ndarrays=[counts])
        if self.activation is None:
            return []
        event = self.activation.release_event(int(counts.max(initial=0)) - before, server_round)
        return [event] if event is not None else []

    def _release_counts(self) -> np.ndarray:
        record = self.context.state.array_records.get(_RELEASES)
        if record is None:
            return np.zeros(self.shard_size, dtype=np.int64)
        counts = record.to_numpy_ndarrays()[0].astype(np.int64)
        return counts if counts.shape == (self.shard_size,) else np.zeros(self.shard_size, dtype=np.int64)

    # -- budget ----------------------------------------------------------------------------------
    def refusal(self, plan: list[list[int]], server_round: int) -> str | None:
        """Why this round must not run (its certified ε would exceed the client's budget), or None."""
        delta = self.config.dp_delta
        if self.max_epsilon > 0 and self.noise_multiplier > 0:
            planned = self.round_events(server_round, self.config.local_steps)
            epsilon = _certified(self.ledger.events(self.client_id, "dp-sgd") + planned, "dp-sgd", delta)
            if epsilon > self.max_epsilon:
                return (f"adapter budget: certified epsilon would reach {epsilon:.3f} > max-epsilon "
                        f"{self.max_epsilon:g} (delta={delta:g})")
        if self.max_activation_epsilon > 0 and self.activation is not None:
            counts = self._release_counts()
            for batch in plan:
                np.add.at(counts, np.asarray(batch, dtype=np.int64), 1)
            extra = int(counts.max(initial=0)) - int(self._release_counts().max(initial=0))
            event = self.activation.release_event(extra, server_round)
            history = self.ledger.events(self.client_id, "activation") + ([event] if event else [])
            epsilon = _certified(history, "activation", delta)
            if epsilon > self.max_activation_epsilon:
                return (f"activation budget: certified epsilon would reach {epsilon:.3f} > max-activation-epsilon "
                        f"{self.max_activation_epsilon:g} (delta={delta:g})")
        return None


def _certified(events: list[MechanismEvent], kind: str, delta: float) -> float:
    ledger = PrivacyLedger()
    for event in events:
        ledger.record("c", event)
    if not ledger.clients():
        return 0.0
    return ledger.epsilon("c", delta, kind, warn=False).epsilon_certified


def _stricter(a: float, b: float) -> float:
    """The smaller positive budget (0 = none)."""
    positive = [x for x in (a, b) if x > 0]
    return min(positive) if positive else 0.0
