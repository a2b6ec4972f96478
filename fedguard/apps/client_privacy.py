"""A client's own privacy: its identity, its secret, its ledger, its budget checks, and the events it reports.

The server is not trusted to stop a client. Each client keeps its own :class:`PrivacyLedger` — in
``Context.state`` in simulation, or in the file named by the node config ``ledger-path`` (written atomically
before the data that spends the privacy leaves) — and refuses a round that would take its certified ε above
its budget (the smaller of the run's ``max-epsilon`` and the node config's ``max-epsilon``; likewise
``max-activation-epsilon``).

Spending is recorded when its effect leaves the client, not when the round ends: every activation chunk
carries (and the on-disk ledger holds, before the chunk is sent) the activation releases of its examples,
the whole-model DP-SGD steps of its batches (once a batch's activations reach the server, the server steps
its half on it and the client's next activations depend on the client's step), and, with the first chunk
that carries labels, the randomised-response labels. A client that crashes, times out or loses its server
mid-round has therefore already recorded everything it released.

Budgets survive restarts only where the ledger and the secret do: with ``ledger-path`` the secret (which
fixes the randomised-response labels and the Poisson batches) is kept beside the ledger
(``<ledger-path>.secret``, mode 0600). Without it both live in ``Context.state``, which is new for every
run: a deployment client with a budget or randomised-response labels and no ``ledger-path`` refuses to
train (a warning in simulation, where the whole run is one process).

Identity: node config ``client-id``, else ``partition-<partition-id>``, else ``node-<Flower node id>`` (a
SuperNode started with its own ``dataset=PATH`` and no partition id), so no two SuperNodes share a ledger
by default. The server binds each client id to the authenticated node that first reported it.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
from pathlib import Path

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context

from fedguard.config import RunConfig
from fedguard.mechanisms.activations import ActivationMechanism
from fedguard.mechanisms.choice import choose_activation_mechanism
from fedguard.mechanisms.dp_sgd import WholeModelDP
from fedguard.mechanisms.labels import label_event
from fedguard.mechanisms.sampling import new_secret
from fedguard.privacy import MechanismEvent, PrivacyLedger, noise_multiplier_for
from fedguard.privacy.events import REPLACE_ONE
from fedguard.protocol.messages import DpStep

log = logging.getLogger("fedguard")

_SECRET = "fedguard.secret"
_LEDGER = "fedguard.ledger"
_RELEASES = "fedguard.activation-releases"
_DRAWN = "fedguard.activation-draw-period"  # activation-reuse: the period of each example's last noise draw
_CALIBRATION_MARGIN = 1e-4  # σ is solved for target·(1 - margin), so rounding never refuses the planned last round


@functools.lru_cache(maxsize=32)
def solved_noise_multiplier(target_epsilon: float, delta: float, sample_rate: float, steps: int) -> float:
    """σ whose *certified* ε (replace-one) after ``steps`` Poisson-sampled steps at rate q is at most
    ``target_epsilon``."""
    return noise_multiplier_for(target_epsilon * (1 - _CALIBRATION_MARGIN), delta, sample_rate, steps,
                                method="certified", relation=REPLACE_ONE)


def client_id_of(context: Context) -> str:
    """The client's stable id: node config ``client-id``, else ``partition-<id>``, else ``node-<node id>``."""
    node = context.node_config
    if node.get("client-id"):
        return str(node["client-id"])
    if "partition-id" in node:
        return f"partition-{int(node['partition-id'])}"
    return f"node-{context.node_id}"


class ClientPrivacy:
    """Privacy state and policy of one client for one message."""

    def __init__(self, config: RunConfig, context: Context, shard_size: int) -> None:
        self.config = config
        self.context = context
        node = context.node_config
        self.client_id = client_id_of(context)
        ledger_path = node.get("ledger-path")
        self.ledger_path = Path(str(ledger_path)).expanduser() if ledger_path else None
        self.secret = self._load_secret()
        self.shard_size = shard_size
        self.sample_rate = min(1.0, config.batch_size / shard_size)
        sigma = config.dp_noise_multiplier
        if config.dp_target_epsilon > 0:
            sigma = solved_noise_multiplier(config.dp_target_epsilon, config.dp_delta, self.sample_rate,
                                            config.num_server_rounds * config.local_steps)
        self.dp = (WholeModelDP(sigma, config.dp_max_grad_norm, config.dp_server_max_grad_norm)
                   if sigma > 0 else None)
        self.expected_batch_size = max(1, round(self.sample_rate * shard_size))
        self.activation: ActivationMechanism | None = choose_activation_mechanism(
            config.act_clip_norm, config.act_noise_multiplier, config.dchi_eta, config.dchi_token_clip,
            config.max_length)
        self.max_epsilon = _stricter(config.max_epsilon, float(node.get("max-epsilon", 0.0)))
        self.max_activation_epsilon = _stricter(config.max_activation_epsilon,
                                                float(node.get("max-activation-epsilon", 0.0)))
        self.ledger = self._load_ledger()

    @property
    def noise_multiplier(self) -> float:
        """σ of whole-model DP-SGD (0 = off)."""
        return self.dp.noise_multiplier if self.dp is not None else 0.0

    @property
    def dp_step(self) -> DpStep | None:
        """What the server needs to noise its half alike for this client's batches (None without DP-SGD)."""
        return None if self.dp is None else DpStep(self.dp.noise_multiplier, float(self.expected_batch_size))

    # -- secret and ledger -------------------------------------------------------------------------
    def _load_secret(self) -> int:
        """The client's secret: beside the on-disk ledger if there is one (created once, mode 0600), else in
        ``Context.state`` (new for every run)."""
        if self.ledger_path is not None:
            path = self.ledger_path.with_name(self.ledger_path.name + ".secret")
            if not path.exists():
                path.parent.mkdir(parents=True, exist_ok=True)
                try:
                    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                    with os.fdopen(fd, "w") as handle:
                        handle.write(str(new_secret()))
                        handle.flush()
                        os.fsync(handle.fileno())
                except FileExistsError:  # another message of this node created it meanwhile
                    pass
            return int(path.read_text().strip())
        state = self.context.state.config_records.get(_SECRET)
        if state is None:
            self.context.state[_SECRET] = ConfigRecord({"secret": new_secret()})
            state = self.context.state.config_records[_SECRET]
        return int(state["secret"])

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
        """Add ``events`` to the client's own ledger and persist it (before what they cover is sent)."""
        if not events:
            return
        for event in events:
            self.ledger.record(self.client_id, event)
        if self.ledger_path is not None:
            self.ledger.save()
        else:
            payload = {self.client_id: [e.to_dict() for e in self.ledger.events(self.client_id)]}
            self.context.state[_LEDGER] = ConfigRecord({"json": json.dumps(payload)})

    # -- events ----------------------------------------------------------------------------------
    def chunk_events(self, indices: list[list[int]], server_round: int, labels_leave: bool) -> list[MechanismEvent]:
        """What leaves with a chunk of batches ``indices`` (shard indices per batch): one more activation
        release of each example (the event covers the most-released one), one whole-model DP-SGD step per
        batch (for the released model: amplified; for the server: the most-sampled example's extra steps,
        unamplified), and the randomised-response labels with the first chunk that carries labels."""
        counts = self._release_counts()
        before = int(counts.max(initial=0))
        if self.config.activation_reuse == "none":
            for batch in indices:
                np.add.at(counts, np.asarray(batch, dtype=np.int64), 1)
        else:  # a resent draw is post-processing: only an example's first release in a period counts
            drawn, period = self._draw_periods(), self._reuse_period(server_round)
            for index in (i for batch in indices for i in batch):
                if drawn[index] != period:
                    drawn[index], counts[index] = period, counts[index] + 1
            self.context.state[_DRAWN] = ArrayRecord(numpy_ndarrays=[drawn])
        self.context.state[_RELEASES] = ArrayRecord(numpy_ndarrays=[counts])
        releases = int(counts.max(initial=0)) - before
        events = []
        if self.activation is not None and self.config.dchi_importance == 0:  # token-dependent noise: no ε
            event = self.activation.release_event(releases, server_round)
            if event is not None:
                events.append(event)
        if self.dp is not None:
            events.append(self.dp.model_event(self.sample_rate, len(indices), server_round))
            if releases:
                events.append(self.dp.server_event(releases, server_round))
        if (labels_leave and self.config.label_protection == "randomized-response"
                and not self.ledger.events(self.client_id, "label-rr")):
            events.append(label_event(self.config.label_epsilon, server_round))
        return events

    def noise_keys(self, indices: list[list[int]], server_round: int) -> list[list[int]] | None:
        """``activation-reuse``: one secret 63-bit key per example of each batch (shard indices ``indices``),
        the same for every release of an example within a period (the run, or the round), so its noise is
        drawn once per period; None without reuse (fresh noise for every release)."""
        if self.config.activation_reuse == "none":
            return None
        period = self._reuse_period(server_round)
        return [[_noise_key(self.secret, index, period) for index in batch] for batch in indices]

    def _reuse_period(self, server_round: int) -> int:
        return 0 if self.config.activation_reuse == "run" else server_round

    def _draw_periods(self) -> np.ndarray:
        record = self.context.state.array_records.get(_DRAWN)
        drawn = None if record is None else record.to_numpy_ndarrays()[0].astype(np.int64)
        return drawn if drawn is not None and drawn.shape == (self.shard_size,) else np.full(self.shard_size, -1)

    def _release_counts(self) -> np.ndarray:
        record = self.context.state.array_records.get(_RELEASES)
        if record is None:
            return np.zeros(self.shard_size, dtype=np.int64)
        counts = record.to_numpy_ndarrays()[0].astype(np.int64)
        return counts if counts.shape == (self.shard_size,) else np.zeros(self.shard_size, dtype=np.int64)

    # -- budget ----------------------------------------------------------------------------------
    def deployment_problem(self, simulation: bool) -> str | None:
        """Why this client must not train without an on-disk ledger (None if it may). In a deployment a
        budget or randomised-response labels need ``ledger-path``: otherwise the budget and the secret that
        fixes the RR labels restart with every run. In simulation only a warning."""
        if self.ledger_path is not None:
            return None
        needs = [name for name, on in (("max-epsilon", self.max_epsilon > 0),
                                        ("max-activation-epsilon", self.max_activation_epsilon > 0),
                                        ("label-protection='randomized-response'",
                                         self.config.label_protection == "randomized-response")) if on]
        if not needs:
            return None
        message = (f"{', '.join(needs)} needs the node config ledger-path=FILE (the client's own privacy ledger "
                   "and secret on disk); without it the budget and the randomised-response draws restart with "
                   "every run")
        if simulation:
            _warn_once(f"client {self.client_id}: {message} (simulation: continuing, one run is one process)")
            return None
        return message

    def refusal(self, plan: list[list[int]], server_round: int, simulation: bool = True) -> str | None:
        """Why this round must not run (no on-disk ledger in a deployment, or its certified ε would exceed
        the client's budget), or None."""
        problem = self.deployment_problem(simulation)
        if problem is not None:
            return problem
        delta = self.config.dp_delta
        if self.max_epsilon > 0 and self.dp is not None:
            planned = [self.dp.model_event(self.sample_rate, self.config.local_steps, server_round)]
            epsilon = _certified(self.ledger.events(self.client_id, "dp-sgd") + planned, delta)
            if epsilon > self.max_epsilon:
                return (f"model budget: certified epsilon (released model, replace-one) would reach {epsilon:.3f} "
                        f"> max-epsilon {self.max_epsilon:g} (delta={delta:g})")
        if self.max_activation_epsilon > 0 and self.activation is not None:
            counts = self._release_counts()
            for batch in plan:
                np.add.at(counts, np.asarray(batch, dtype=np.int64), 1)
            extra = int(counts.max(initial=0)) - int(self._release_counts().max(initial=0))
            event = self.activation.release_event(extra, server_round)
            history = self.ledger.events(self.client_id, "activation") + ([event] if event else [])
            epsilon = _certified(history, delta)
            if epsilon > self.max_activation_epsilon:
                return (f"activation budget: certified epsilon would reach {epsilon:.3f} > max-activation-epsilon "
                        f"{self.max_activation_epsilon:g} (delta={delta:g})")
        return None


def _noise_key(secret: int, index: int, period: int) -> int:
    """A 63-bit generator seed only the client can compute: BLAKE2b of (secret, example, period)."""
    digest = hashlib.blake2b(f"{secret}:{index}:{period}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


def _certified(events: list[MechanismEvent], delta: float) -> float:
    ledger = PrivacyLedger()
    for event in events:
        ledger.record("c", event)
    if not ledger.clients():
        return 0.0
    return ledger.epsilon("c", delta, warn=False).epsilon_certified


def _stricter(a: float, b: float) -> float:
    """The smaller positive budget (0 = none)."""
    positive = [x for x in (a, b) if x > 0]
    return min(positive) if positive else 0.0


@functools.lru_cache(maxsize=64)
def _warn_once(message: str) -> None:
    log.warning(message)
