"""The server's per-client privacy ledger: what each client reported spending, ε per adversary, and who may
still train.

Every activation chunk a client sends carries the privacy events of what it releases (activation releases,
its batches' whole-model DP-SGD steps, the randomised-response labels once); the server records them as they
arrive and writes ``privacy_ledger.json`` before using the chunk, so spending in a round that never finished
(client crash, timeout, killed server) is on disk. A reply whose privacy record is missing or malformed while
a mechanism is configured is rejected, never read as zero spending; a final reply whose round reported fewer
DP-SGD steps than the server drove is rejected as under-counting.

Two adversaries, two guarantees (per client, worst and median, certified at ``dp-delta``; see
docs/threat-model.md):

* ``epsilon_model_certified`` — against third parties and other clients, who see only the released model:
  whole-model DP-SGD, Poisson subsampling amplified, composed over the client's steps (kind ``dp-sgd``,
  replace-one neighbours within the client's shard). ``None`` without DP-SGD.
* ``epsilon_server_certified`` — against the server, which sees every activation, mask, label (unless
  protected) and update: activation mechanism ⊕ label mechanism ⊕ DP-SGD without amplification for the
  steps that contained the most-sampled example (kinds ``activation``, ``label-rr``, ``dp-sgd-server``).
  ``None`` whenever something of an example reaches the server in clear (:func:`server_guarantee_gaps`).

Identity: a client id is bound to the Flower node (authenticated in a deployment) that first reported it in
this run, and a node to its client id; a reply that breaks either binding is rejected.

Budgets: a client whose certified model ε would exceed ``max-epsilon`` after one more full round is not
sampled again; likewise a client whose certified activation ε reached ``max-activation-epsilon``.
"""

from __future__ import annotations

import functools
import logging
import math
import statistics
from pathlib import Path
from typing import Any

from flwr.app import RecordDict

from fedguard.config import RunConfig
from fedguard.privacy import MechanismEvent, PrivacyLedger
from fedguard.privacy.events import REPLACE_ONE
from fedguard.protocol import messages as proto

log = logging.getLogger("fedguard")

MODEL_KINDS = ("dp-sgd",)
SERVER_KINDS = ("activation", "dp-sgd-server", "label-rr")
ACTIVATION_KIND = "activation"
NEIGHBOURING = ("replace one example of a client's shard by another of the same token length (the shard size, "
                "batch sizes and padding masks are visible to the server)")


def server_guarantee_gaps(config: RunConfig) -> list[str]:
    """What of an example reaches the server in clear under ``config`` (empty = the server ε is finite)."""
    gaps = []
    if not config.activation_noise_enabled:
        gaps.append("activations are sent without noise")
    elif config.dchi_importance > 0:
        gaps.append("d_chi noise is allocated by token importance (a token-dependent scale has no epsilon)")
    if config.label_protection == "clear":
        gaps.append("labels are sent in clear")
    if config.u_shape:
        gaps.append("the U-shape's returned gradient d loss / d top hidden has no mechanism")
    if not config.dp_enabled:
        gaps.append("client adapter updates are sent without DP-SGD")
    return gaps


def privacy_summary(config: RunConfig) -> dict[str, Any]:
    """``metrics.json["privacy"]``: δ, the neighbouring relation and what each guarantee covers."""
    gaps = server_guarantee_gaps(config)
    model = ("whole-model DP-SGD (client adapter and server half clipped per example and noised; Poisson "
             "sampling amplifies against whoever does not see the batches)" if config.dp_enabled
             else "no guarantee: DP-SGD is off")
    server = ("activation mechanism + label mechanism + DP-SGD without amplification, for the most-sampled example"
              if not gaps else "no guarantee: " + "; ".join(gaps))
    return {"delta": config.dp_delta, "neighbouring": NEIGHBOURING, "model": model, "server": server}


class ServerPrivacy:
    """Records client privacy events, answers per-client ε per adversary, and filters who may be sampled."""

    def __init__(self, config: RunConfig, out_dir: Path) -> None:
        self.config = config
        path = out_dir / "privacy_ledger.json"
        if config.resume and path.exists():
            self.ledger = PrivacyLedger.load(path, autosave=False)  # everything recorded before the restart
        else:
            if path.exists():  # another run's records: kept aside, never overwritten
                kept = path.with_name(f"privacy_ledger.{int(path.stat().st_mtime)}.json")
                path.replace(kept)
                log.warning("output-dir already held a privacy ledger (resume=false): moved it to %s", kept)
            self.ledger = PrivacyLedger(path, autosave=False)
        self.client_of: dict[int, str] = {}  # node id -> the client id it reported (bound for the run)
        self.node_of: dict[str, int] = {}  # client id -> the node it is bound to
        self.excluded: dict[str, str] = {}  # client id -> why it is no longer sampled
        self.round_spent: dict[str, list[MechanismEvent]] = {}  # client id -> events of the current round
        self.last_model_event: dict[str, MechanismEvent] = {}  # client id -> its latest dp-sgd event (σ, q)
        self._reported_sigma: set[str] = set()

    # -- recording -------------------------------------------------------------------------------
    def begin_round(self) -> None:
        """Forget the previous round's per-round spending (the ledger keeps everything)."""
        self.round_spent = {}

    def observe(self, node_id: int, content: RecordDict) -> str | None:
        """Record the events in a reply; return why the reply must be rejected, or None."""
        if proto.PRIVACY not in content.config_records:
            return "reply carries no privacy record" if self.config.private else None
        try:
            client_id, events = proto.decode_privacy(content)
        except proto.ProtocolError as err:
            return str(err)
        problem = self._bind(node_id, client_id)
        if problem is not None:
            return problem
        for event in events:
            self.ledger.record(client_id, event)
        if events:
            self.ledger.save()  # on disk before the reply is used: a crash later never loses this spending
        self.round_spent.setdefault(client_id, []).extend(events)
        for event in events:
            if event.kind == "dp-sgd":
                self.last_model_event[client_id] = event
                if client_id not in self._reported_sigma:
                    self._reported_sigma.add(client_id)
                    log.info("client %s: whole-model DP-SGD noise multiplier %.4f at sampling rate %.4g",
                             client_id, event.noise_multiplier, event.sample_rate)
        return None

    def _bind(self, node_id: int, client_id: str) -> str | None:
        """Bind ``client_id`` to ``node_id`` for this run; a conflicting reply is refused with the reason."""
        bound_client = self.client_of.get(node_id)
        if bound_client is not None and bound_client != client_id:
            return (f"node {node_id} reported client id {client_id!r} but is bound to {bound_client!r} in this run "
                    "(one node, one ledger)")
        bound_node = self.node_of.get(client_id)
        if bound_node is not None and bound_node != node_id:
            return (f"client id {client_id!r} is already bound to node {bound_node} in this run: two nodes may not "
                    "share a ledger (give each SuperNode its own partition-id or client-id)")
        self.client_of[node_id] = client_id
        self.node_of[client_id] = node_id
        return None

    def check_final(self, node_id: int, content: RecordDict, steps_driven: int) -> str | None:
        """The round's chunks must have reported the DP-SGD steps the server drove (no under-counting)."""
        if not self.config.dp_enabled:
            return None
        client = self.client_of.get(node_id)
        reported = sum(e.steps for e in self.round_spent.get(client, []) if e.kind == "dp-sgd") if client else 0
        if reported < steps_driven:
            return f"reported {reported} DP-SGD steps but trained {steps_driven} batches with the server"
        return None

    def save(self) -> None:
        self.ledger.save()

    # -- sampling --------------------------------------------------------------------------------
    def eligible(self, node_id: int) -> bool:
        client = self.client_of.get(node_id)
        return client is None or client not in self.excluded

    def exclude(self, node_id: int, reason: str) -> None:
        client = self.client_of.get(node_id, str(node_id))
        if client not in self.excluded:
            self.excluded[client] = reason
            log.warning("client %s will not be sampled again: %s", client, reason)

    def update_budgets(self) -> None:
        """Exclude clients whose next full round would exceed a configured budget (from what they actually
        spent, including rounds they never finished)."""
        delta = self.config.dp_delta
        for client in self.ledger.clients():
            if client in self.excluded:
                continue
            last = self.last_model_event.get(client)
            if self.config.max_epsilon > 0 and last is not None:
                prospective = PrivacyLedger()
                full_round = MechanismEvent("dp-sgd", noise_multiplier=last.noise_multiplier,
                                            sample_rate=last.sample_rate, steps=self.config.local_steps,
                                            relation=last.relation)
                for event in self.ledger.events(client, MODEL_KINDS) + [full_round]:
                    prospective.record(client, event)
                epsilon = prospective.epsilon(client, delta, MODEL_KINDS, warn=False).epsilon_certified
                if epsilon > self.config.max_epsilon:
                    self.excluded[client] = (f"one more round would take its certified model epsilon to "
                                             f"{epsilon:.3f} > max-epsilon {self.config.max_epsilon:g}")
                    log.warning("client %s will not be sampled again: %s", client, self.excluded[client])
            if self.config.max_activation_epsilon > 0 and self.ledger.events(client, ACTIVATION_KIND):
                epsilon = self.ledger.epsilon(client, delta, ACTIVATION_KIND, warn=False).epsilon_certified
                if epsilon >= self.config.max_activation_epsilon:
                    self.excluded[client] = (f"certified activation epsilon {epsilon:.3f} reached "
                                             f"max-activation-epsilon {self.config.max_activation_epsilon:g}")
                    log.warning("client %s will not be sampled again: %s", client, self.excluded[client])

    # -- reporting -------------------------------------------------------------------------------
    def round_metrics(self) -> dict[str, Any]:
        """Worst-client (and median) ε per adversary so far, at ``dp-delta``; None = no guarantee."""
        delta = self.config.dp_delta
        metrics: dict[str, Any] = {
            "epsilon_model_certified": None, "epsilon_model_certified_median": None, "epsilon_model_estimate": None,
            "epsilon_server_certified": None, "epsilon_server_certified_median": None,
            "epsilon_activation": None, "epsilon_activation_estimate": None, "epsilon_label": None,
            "privacy_delta": delta,
        }
        model = self._per_client(MODEL_KINDS)
        if model and self.config.dp_enabled:
            metrics["epsilon_model_certified"] = max(e.epsilon_certified for e in model.values())
            metrics["epsilon_model_certified_median"] = statistics.median(e.epsilon_certified for e in model.values())
            metrics["epsilon_model_estimate"] = max(self._logged(k, MODEL_KINDS, e) for k, e in model.items())
        if not server_guarantee_gaps(self.config):
            server = self._per_client(SERVER_KINDS)
            if server:
                metrics["epsilon_server_certified"] = max(e.epsilon_certified for e in server.values())
                metrics["epsilon_server_certified_median"] = statistics.median(
                    e.epsilon_certified for e in server.values())
        activation = self._per_client((ACTIVATION_KIND,))
        if activation:
            metrics["epsilon_activation"] = max(e.epsilon_certified for e in activation.values())
            metrics["epsilon_activation_estimate"] = max(
                self._logged(k, (ACTIVATION_KIND,), e) for k, e in activation.items())
        labels = [sum(e.epsilon * e.steps for e in self.ledger.events(c, "label-rr")) for c in self.ledger.clients()]
        if any(labels):
            metrics["epsilon_label"] = max(labels)
        return metrics

    def _per_client(self, kinds: tuple[str, ...]) -> dict[str, Any]:
        return {c: self.ledger.epsilon(c, self.config.dp_delta, kinds, warn=False)
                for c in self.ledger.clients() if self.ledger.events(c, kinds)}

    def _logged(self, client: str, kinds: tuple[str, ...], estimate) -> float:  # noqa: ANN001
        """The value logged beside the certified bound, per the run config's ``accountant``."""
        if self.config.accountant == "edgeworth":
            return estimate.epsilon_estimate
        if self.config.accountant == "pld":
            return estimate.epsilon_certified
        events = self.ledger.events(client, kinds)
        if any(e.relation == REPLACE_ONE and not e.is_pure and e.sample_rate < 1 for e in events):
            _warn_once("accountant='rdp': Opacus' RDP analysis of the sampled Gaussian is for add/remove "
                       "neighbours only; logging the certified (replace-one) bound instead")
            return estimate.epsilon_certified
        return rdp_epsilon(events, self.config.dp_delta)


def rdp_epsilon(events: list[MechanismEvent], delta: float) -> float:
    """Opacus' RDP bound for a history of Poisson-subsampled Gaussian events under add/remove neighbours
    (an unsampled replace-one event is the Gaussian mechanism with sensitivity 2: noise multiplier σ/2).
    A pure ε-DP event counts as (α, min(ε, αε²/2))-RDP at every order α (it is ε²/2-zCDP; Bun & Steinke 2016),
    ``steps`` times."""
    import numpy as np
    from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent

    orders = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64))
    alphas = np.asarray(orders, dtype=float)
    total = None
    for event in events:
        if event.is_pure:
            rdp = event.steps * np.minimum(event.epsilon, alphas * event.epsilon ** 2 / 2)
        else:
            sigma = event.noise_multiplier / (2 if event.relation == REPLACE_ONE else 1)
            rdp = compute_rdp(q=event.sample_rate, noise_multiplier=sigma, steps=event.steps, orders=orders)
        total = rdp if total is None else total + rdp
    if total is None:
        return 0.0
    epsilon, _ = get_privacy_spent(orders=orders, rdp=total, delta=delta)
    return float(epsilon) if math.isfinite(epsilon) else math.inf




@functools.lru_cache(maxsize=8)
def _warn_once(message: str) -> None:
    log.warning(message)
