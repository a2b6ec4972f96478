"""``AdapterStrategy``: a Flower ``FedAvg`` whose aggregation step is "client adapters in, global adapter out".

Everything Flower-generic — node sampling, building the ``train``/``evaluate`` messages, evaluation
aggregation — is Flower's ``FedAvg``. A subclass implements only :meth:`AdapterStrategy.aggregate_adapters`
and, optionally, :meth:`AdapterStrategy.train_config` (extra keys for the clients' train config).

Invariants of :meth:`AdapterStrategy.aggregate_train`:

* the current global adapter is the ``ArrayRecord`` last passed to ``configure_train``;
* replies are validated (:mod:`strategies.validation`) before aggregation; a bad reply is excluded with a
  logged reason; with fewer than ``min-fit-clients`` valid replies it returns ``(None, None)`` (the round is
  skipped, the global adapter kept);
* ``aggregate_adapters`` sees only valid :class:`ClientUpdate` objects and must return tensors with exactly
  the global adapter's names and shapes (checked: a violation is a strategy bug and raises
  :class:`StrategyError`).
"""

from __future__ import annotations

import logging
import time
from abc import abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from fedguard.config import ConfigError, RunConfig
from fedguard.protocol import messages as proto
from strategies.validation import rejection_norm, split_replies

log = logging.getLogger("fedguard.strategies")

MetricValue = int | float | list[int] | list[float]


class StrategyError(RuntimeError):
    """A strategy broke its contract (e.g. returned tensors of the wrong names or shapes)."""


@dataclass(frozen=True)
class ClientUpdate:
    """One valid client reply: its adapter tensors (same names/shapes/dtypes as the global adapter, finite),
    its positive example count and its other reported metrics (``client-seconds``, ``steps`` ...)."""

    node_id: int
    tensors: dict[str, torch.Tensor]
    num_examples: int
    metrics: dict[str, MetricValue] = field(default_factory=dict)


def weighted_mean(updates: Sequence[ClientUpdate], names: Iterable[str] | None = None) -> dict[str, torch.Tensor]:
    """Example-weighted mean of each tensor in ``names`` (default: all) over ``updates`` (computed in float64)."""
    if not updates:
        raise ValueError("weighted_mean needs at least one update")
    names = list(updates[0].tensors) if names is None else list(names)
    total = float(sum(u.num_examples for u in updates))
    out = {}
    for name in names:
        acc = sum(u.tensors[name].double() * (u.num_examples / total) for u in updates)
        out[name] = acc.to(updates[0].tensors[name].dtype)
    return out


class AdapterStrategy(FedAvg):
    """Base class of FedGuard's adapter strategies; constructed as ``Cls(config, options)``.

    ``options`` is the parsed ``strategy-options`` run-config value; keys not listed in ``option_names``
    are rejected with :class:`fedguard.config.ConfigError`.
    """

    option_names: ClassVar[tuple[str, ...]] = ()

    def __init__(self, config: RunConfig, options: Mapping[str, str] | None = None) -> None:
        super().__init__(
            fraction_train=config.fraction_train,
            fraction_evaluate=0.0,
            min_train_nodes=config.min_fit_clients,
            min_evaluate_nodes=0,
            min_available_nodes=config.min_fit_clients,
        )
        options = dict(options or {})
        unknown = sorted(set(options) - set(self.option_names))
        if unknown:
            allowed = ", ".join(self.option_names) or "none"
            raise ConfigError(f"strategy-options {unknown} not understood by {type(self).__name__}; "
                              f"allowed: {allowed}")
        self.config = config
        self.options = options
        self.max_norm = rejection_norm(config)
        self._current_global: dict[str, torch.Tensor] | None = None
        self._round_metrics: dict[str, MetricValue] = {}

    # -- what subclasses implement ---------------------------------------------------------------
    @abstractmethod
    def aggregate_adapters(self, server_round: int, updates: Sequence[ClientUpdate],
                           current_global: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The new global adapter from ``updates`` (at least ``min-fit-clients``, all valid)."""

    def train_config(self, server_round: int) -> dict[str, bool | int | float | str]:
        """Extra entries for the clients' train ``ConfigRecord`` (e.g. ``{FREEZE_LORA_A: True}``)."""
        return {}

    def report(self, key: str, value: MetricValue) -> None:
        """Add ``key`` to this round's returned ``MetricRecord`` (call from ``aggregate_adapters``)."""
        self._round_metrics[key] = value

    @property
    def current_global(self) -> dict[str, torch.Tensor]:
        """The global adapter sent in the last ``configure_train``."""
        if self._current_global is None:
            raise StrategyError(f"{type(self).__name__}.aggregate_train called before configure_train: "
                                "the current global adapter is unknown")
        return self._current_global

    # -- Flower's Strategy interface -------------------------------------------------------------
    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        self._current_global = {k: v.detach().clone() for k, v in arrays.to_torch_state_dict().items()}
        for key, value in self.train_config(server_round).items():
            config[key] = value
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        current = self.current_global
        replies = list(replies)
        valid, rejected = split_replies(replies, current, self.max_norm, server_round)
        if len(valid) < max(1, self.min_train_nodes):
            log.warning("round %d: %s has %d valid client adapter(s) (min-fit-clients=%d): round skipped",
                        server_round, type(self).__name__, len(valid), self.min_train_nodes)
            return None, None
        updates = [_client_update(reply) for reply in valid]
        self._round_metrics = {}
        started = time.perf_counter()
        new = self.aggregate_adapters(server_round, updates, current)
        seconds = time.perf_counter() - started
        new = self._checked(new, current)
        metrics = MetricRecord({
            **_mean_client_metrics(updates),
            "aggregation-seconds": seconds,
            "clients-aggregated": len(updates),
            "clients-rejected": len(rejected),
            **self._round_metrics,
        })
        extra = "".join(f", {k}={v:.4g}" if isinstance(v, float) else f", {k}={v}"
                        for k, v in self._round_metrics.items())
        log.info("round %d: strategy %s aggregated %d adapter(s) in %.4fs (%d rejected)%s",
                 server_round, type(self).__name__, len(updates), seconds, len(rejected), extra)
        return ArrayRecord(torch_state_dict=new), metrics

    def _checked(self, new: Mapping[str, torch.Tensor],
                 current: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if set(new) != set(current):
            missing, extra = sorted(set(current) - set(new))[:2], sorted(set(new) - set(current))[:2]
            raise StrategyError(f"{type(self).__name__}.aggregate_adapters returned different tensor names "
                                f"(missing {missing}, unexpected {extra})")
        out = {}
        for name, tensor in new.items():
            if tuple(tensor.shape) != tuple(current[name].shape):
                raise StrategyError(f"{type(self).__name__}.aggregate_adapters returned {name} with shape "
                                    f"{tuple(tensor.shape)}, expected {tuple(current[name].shape)}")
            if not torch.isfinite(tensor).all():
                raise StrategyError(f"{type(self).__name__}.aggregate_adapters returned NaN/Inf in {name}")
            out[name] = tensor.detach().to(current[name].dtype).contiguous().clone()
        return out

    def summary(self) -> None:
        super().summary()
        log.info("FedGuard adapter strategy %s, options %s", type(self).__name__, self.options or "{}")


def _client_update(reply: Message) -> ClientUpdate:
    content = reply.content
    metrics = dict(content.metric_records[proto.METRICS])
    examples = int(metrics.pop(proto.NUM_EXAMPLES))
    tensors = dict(content.array_records[proto.ADAPTER].to_torch_state_dict())
    return ClientUpdate(reply.metadata.src_node_id, tensors, examples, metrics)


def _mean_client_metrics(updates: Sequence[ClientUpdate]) -> dict[str, float]:
    """Example-weighted mean of the scalar metrics every client reported."""
    total = float(sum(u.num_examples for u in updates))
    keys = set.intersection(*(set(u.metrics) for u in updates))
    out = {}
    for key in sorted(keys):
        values = [u.metrics[key] for u in updates]
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            out[key] = float(sum(v * u.num_examples for v, u in zip(values, updates)) / total)
    return out
