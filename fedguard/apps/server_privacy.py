"""The server's per-client privacy ledger: what each client reported spending, and who may still train.

Every reply a client sends carries the privacy events it applied since its previous reply (activation
releases with each chunk; DP-SGD steps and the label RR with the final adapter). The server records them
as they arrive — activations already received count as spent even if the client fails later — and
writes ``privacy_ledger.json`` into the run directory as soon as a reply carrying events arrives (and once at
the start, so a run without mechanisms leaves an empty ledger). A reply whose privacy record is
missing or malformed while a mechanism is configured is rejected, never read as zero spending; a final
reply that reports fewer DP-SGD steps than the server drove is rejected as under-counting.

Budgets: a client whose *certified* adapter ε (DP-SGD, at ``dp-delta``) would exceed ``max-epsilon`` after
one more round like its last is not sampled again; likewise ``max-activation-epsilon``.
"""

from __future__ import annotations

import logging
import math
import statistics
from pathlib import Path
from typing import Any

from flwr.app import RecordDict

from fedguard.config import RunConfig
from fedguard.privacy import MechanismEvent, PrivacyLedger
from fedguard.protocol import messages as proto

log = logging.getLogger("fedguard")

ADAPTER_KINDS = ("dp-sgd",)
ACTIVATION_KIND = "activation"


class ServerPrivacy:
    """Records client privacy events, answers per-client ε, and filters who may be sampled."""

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
        self.client_of: dict[int, str] = {}  # node id -> the client id it reports
        self.excluded: dict[str, str] = {}  # client id -> why it is no longer sampled
        self.last_round: dict[str, list[MechanismEvent]] = {}

    # -- recording -------------------------------------------------------------------------------
    def observe(self, node_id: int, content: RecordDict) -> str | None:
        """Record the events in a reply; return why the reply must be rejected, or None."""
        if proto.PRIVACY not in content.config_records:
            return "reply carries no privacy record" if self.config.private else None
        try:
            client_id, events = proto.decode_privacy(content)
        except proto.ProtocolError as err:
            return str(err)
        self.client_of[node_id] = client_id
        for event in events:
            self.ledger.record(client_id, event)
        if events:
            self.ledger.save()  # on disk before the reply is used: a crash later never loses this spending
        if any(e.kind == "dp-sgd" for e in events):
            self.last_round[client_id] = [e for e in events if e.kind == "dp-sgd"]
        return None

    def check_final(self, node_id: int, content: RecordDict, steps_driven: int) -> str | None:
        """A final reply must report the DP-SGD steps the server drove (no under-counting)."""
        if not self.config.dp_enabled:
            return None
        try:
            _, events = proto.decode_privacy(content)
        except proto.ProtocolError as err:
            return str(err)
        reported = sum(e.steps for e in events if e.kind == "dp-sgd")
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
        """Exclude clients whose next round (like their last) would exceed a configured budget."""
        delta = self.config.dp_delta
        for client in self.ledger.clients():
            if client in self.excluded:
                continue
            if self.config.max_epsilon > 0 and client in self.last_round:
                prospective = PrivacyLedger()
                for event in self.ledger.events(client, ADAPTER_KINDS) + self.last_round[client]:
                    prospective.record(client, event)
                epsilon = prospective.epsilon(client, delta, ADAPTER_KINDS, warn=False).epsilon_certified
                if epsilon > self.config.max_epsilon:
                    self.excluded[client] = (f"one more round would take its certified adapter epsilon to "
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
        """Worst-client (and median) ε so far, at ``dp-delta``; None where no mechanism protects a release."""
        delta = self.config.dp_delta
        metrics: dict[str, Any] = {
            "epsilon_adapter_estimate": None, "epsilon_adapter_certified": None,
            "epsilon_adapter_certified_median": None, "epsilon_activation": None,
            "epsilon_activation_estimate": None, "epsilon_label": None, "privacy_delta": delta,
        }
        adapter = self._per_client(ADAPTER_KINDS)
        if adapter:
            metrics["epsilon_adapter_certified"] = max(e.epsilon_certified for e in adapter.values())
            metrics["epsilon_adapter_estimate"] = max(self._logged(k, ADAPTER_KINDS, e) for k, e in adapter.items())
            metrics["epsilon_adapter_certified_median"] = statistics.median(e.epsilon_certified for e in adapter.values())
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
        return rdp_epsilon(self.ledger.events(client, kinds), self.config.dp_delta)


def rdp_epsilon(events: list[MechanismEvent], delta: float) -> float:
    """Opacus' RDP bound for a history of Poisson-subsampled Gaussian events (add/remove neighbours)."""
    from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent

    orders = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64))
    total = None
    for event in events:
        if event.is_pure:
            continue
        rdp = compute_rdp(q=event.sample_rate, noise_multiplier=event.noise_multiplier, steps=event.steps,
                          orders=orders)
        total = rdp if total is None else total + rdp
    if total is None:
        return 0.0
    epsilon, _ = get_privacy_spent(orders=orders, rdp=total, delta=delta)
    return float(epsilon) if math.isfinite(epsilon) else math.inf


