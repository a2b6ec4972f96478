"""The server's round loop: sample clients with a Flower strategy, drive their sessions, aggregate, evaluate.

Per round:

1. ``strategy.configure_train`` samples clients and builds the ``train`` messages (global client adapter);
2. one :class:`~fedguard.apps.server_session.ServerSession` per sampled client is driven to its end by the
   run's :mod:`transport <fedguard.apps.transports>` (``split-transport``: the data-plane stream, or a Flower
   message per exchange): each session trains the server half on its client's batches in arrival order and
   answers with the gradients (U-shape: top hidden states first), recording privacy spending as it arrives;
3. the final replies (client adapter + ``num-examples``) are checked and handed to
   ``strategy.aggregate_train``; the result is the next global client adapter;
4. the joined model is evaluated on the held-out split.

A client whose reply is an error, malformed or missing (timeout), or whose data-plane connection fails, is
dropped from the round with a logged reason; the round is aggregated if at least ``min-fit-clients`` valid
adapters remain, otherwise the global adapter is kept unchanged and the run continues.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from flwr.app import ArrayRecord, ConfigRecord, Message
from flwr.serverapp import Grid
from flwr.superlink.grid import InMemoryGrid
from flwr.serverapp.strategy import Strategy

from fedguard.apps.checkpoint import Checkpoint, restore_rng, rng_state
from fedguard.runtime import SplitRuntime
from fedguard.apps.server_privacy import ServerPrivacy
from fedguard.apps.server_session import ServerSession
from fedguard.apps.transports import SplitTransport, build_transport
from fedguard.config import RunConfig
from fedguard.data.sources import TextDataset
from fedguard.model.lora import load_trainable_state, trainable_state
from fedguard.protocol import messages as proto
from fedguard.protocol.wire import WIRE_DTYPES
from fedguard.training.dp_trainers import DPMiddleTrainer, DPServerHalfTrainer
from fedguard.training import optimizer_state
from fedguard.training.server_half import Evaluation, MiddleTrainer, ServerHalfTrainer, evaluate_joined
from strategies.privacy_budget import EligibleGrid
from strategies.validation import rejection_norm, split_replies

log = logging.getLogger("fedguard")


@dataclass
class RoundRecord:
    """One ``rounds`` entry of ``metrics.json``. Seconds are wall-clock; bytes are tensor payload bytes."""

    round: int
    accuracy: float  # classification accuracy; next-token accuracy on response tokens for a causal LM
    loss: float
    bytes_up: int
    bytes_down: int
    seconds: float
    client_seconds: float  # critical path: per exchange the slowest client's compute, summed
    server_seconds: float  # server-half training
    messaging_seconds: float  # the rest of the training wall time: waiting on the network/engine
    eval_seconds: float
    exchanges: int
    train_loss: float  # NaN in the U-shaped split: the loss never leaves the clients
    clients_sampled: int
    clients_aggregated: int
    clients_dropped: dict[str, str] = field(default_factory=dict)
    aggregated: bool = True
    # Privacy (worst client so far, at dp-delta; None = no guarantee; see fedguard.apps.server_privacy).
    epsilon_model_certified: float | None = None  # the released model, against third parties (DP-SGD)
    epsilon_model_certified_median: float | None = None
    epsilon_model_estimate: float | None = None  # the same by `accountant`: an estimate, not a guarantee
    epsilon_server_certified: float | None = None  # against the server; None when anything reaches it in clear
    epsilon_server_certified_median: float | None = None
    epsilon_activation: float | None = None
    epsilon_activation_estimate: float | None = None
    epsilon_label: float | None = None
    privacy_delta: float | None = None
    clients_refused: dict[str, str] = field(default_factory=dict)
    strategy_metrics: dict[str, object] = field(default_factory=dict)  # what the strategy's aggregate_train returned
    perplexity: float | None = None  # causal LM: exp(held-out loss per response token)
    bytes_by_client: dict[str, dict[str, int]] = field(default_factory=dict)  # node -> {"up", "down"} bytes
    transport: str = "flower"  # split-transport that carried the round's exchanges


class SplitRoundRunner:
    """Drives split-LoRA rounds over a Flower ``Grid`` with a Flower ``Strategy`` for sampling/aggregation."""

    def __init__(self, config: RunConfig, runtime: SplitRuntime, strategy: Strategy, grid: Grid,
                 eval_data: TextDataset, num_labels: int, privacy: ServerPrivacy) -> None:
        self.config = config
        self.runtime = runtime
        self.strategy = strategy
        self.grid = grid
        self.eval_data = eval_data
        self.num_labels = num_labels
        self.privacy = privacy
        # The server half trains itself (plain split) or only its middle blocks (U-shape): one trainer each;
        # under DP-SGD every server step is clipped per example and noised too (whole-model DP-SGD).
        self.server: ServerHalfTrainer | None = None
        self.middle: MiddleTrainer | None = None
        trainer = MiddleTrainer if config.u_shape else ServerHalfTrainer
        if config.dp_enabled:
            dp_trainer = DPMiddleTrainer if config.u_shape else DPServerHalfTrainer
            built = dp_trainer(runtime.server, config.learning_rate, config.dp_max_grad_norm,
                               config.dp_server_max_grad_norm, precision=config.precision)
        else:
            built = trainer(runtime.server, config.learning_rate, precision=config.precision)
        if config.u_shape:
            self.middle = built
        else:
            self.server = built
        self.simulation = isinstance(grid, InMemoryGrid) or bool(getattr(grid, "simulation", False))
        self.on_batches: Callable[[int, int], None] | None = None  # (batches done, batches planned) per exchange
        self._lock = threading.Lock()  # one server half: sessions take turns, batches in arrival order
        self.transport: SplitTransport = build_transport(grid, config, max(runtime.hidden_size, runtime.cut_width),
                                                          self.simulation)
        self.global_adapter = trainable_state(runtime.client)
        self.eval_batches = runtime.eval_batches(eval_data, config.max_length)
        self.wire_dtype = WIRE_DTYPES[config.activation_dtype]

    # -- evaluation ------------------------------------------------------------------------------
    def evaluate(self) -> Evaluation:
        """The joined model (global client adapter + the server's adapter) on the held-out examples."""
        load_trainable_state(self.runtime.client, self.global_adapter)
        self.runtime.client.eval()
        self.runtime.server.eval()
        return evaluate_joined(self.runtime.logits, self.eval_batches)

    # -- one round -------------------------------------------------------------------------------
    def eligible_clients(self) -> int:
        """Connected clients that may still be sampled (not excluded by a privacy budget)."""
        return len(EligibleGrid(self.grid, self.privacy).get_node_ids())

    def close(self) -> None:
        """Release the transport (data-plane socket) and the server trainer's resources (Opacus hooks)."""
        self.transport.close()
        self.server_trainer.close()

    def run_round(self, server_round: int) -> RoundRecord:
        """Sample, drive every sampled client's session over the transport, aggregate the valid finals, evaluate."""
        started = time.perf_counter()
        self.privacy.begin_round()
        config = ConfigRecord({proto.NUM_LABELS: self.num_labels, proto.SIMULATION: self.simulation})
        messages = list(self.strategy.configure_train(
            server_round, ArrayRecord(torch_state_dict=self.global_adapter), config, self.grid))
        sessions = {m.metadata.dst_node_id: ServerSession(
            m.metadata.dst_node_id, server_round, self.config, self.server_trainer, self.runtime.cut_width,
            self.privacy, self.wire_dtype, self._lock, defer_middle_steps=self.transport.name == "flower")
            for m in messages}
        result = self.transport.run(messages, sessions, self.on_batches)
        dropped = {str(n): s.dropped_reason for n, s in sessions.items() if s.dropped_reason is not None}
        refused = {str(n): s.refused for n, s in sessions.items() if s.refused is not None}
        for node, reason in refused.items():
            log.warning("round %d: client %s refused to train: %s", server_round, node, reason)
        for node, reason in dropped.items():
            log.warning("round %d: client %s dropped: %s", server_round, node, reason)
        finals = [s.final_message for s in sessions.values() if s.final_message is not None]
        valid = self._valid_finals(finals, dropped, server_round)
        aggregated = len(valid) >= self.config.min_fit_clients
        aggregation: dict[str, object] = {}
        if aggregated:
            arrays, strategy_metrics = self.strategy.aggregate_train(server_round, valid)
            if strategy_metrics is not None:
                aggregation = {k: v for k, v in strategy_metrics.items() if isinstance(v, (int, float, list))}
            if arrays is not None:
                self.global_adapter = {k: v.clone() for k, v in arrays.to_torch_state_dict().items()}
        else:
            log.warning("round %d: only %d valid client adapter(s), min-fit-clients=%d: global adapter kept",
                        server_round, len(valid), self.config.min_fit_clients)
        train_seconds = time.perf_counter() - started
        if not aggregated:  # otherwise the strategy's privacy wrapper did it
            self.privacy.update_budgets()
        t0 = time.perf_counter()
        evaluation = self.evaluate()
        eval_seconds = time.perf_counter() - t0
        stats = [s.stats for s in sessions.values()]
        server_seconds = sum(st.server_seconds for st in stats)
        # Waiting: what neither the server's (serial) compute nor the slowest client's own compute with the server
        # work on its batches explains.
        critical = max([server_seconds] + [st.client_seconds + st.server_seconds for st in stats]
                       if self.transport.name == "stream" else [result.client_seconds + server_seconds])
        losses = [loss for st in stats for loss in st.losses]
        return RoundRecord(
            round=server_round, accuracy=evaluation.accuracy, loss=evaluation.loss, perplexity=evaluation.perplexity,
            bytes_up=sum(st.bytes_up for st in stats), bytes_down=sum(st.bytes_down for st in stats),
            bytes_by_client={str(n): {"up": s.stats.bytes_up, "down": s.stats.bytes_down} for n, s in sessions.items()},
            seconds=time.perf_counter() - started, client_seconds=result.client_seconds, server_seconds=server_seconds,
            messaging_seconds=max(0.0, train_seconds - critical), eval_seconds=eval_seconds,
            exchanges=result.exchanges, train_loss=sum(losses) / len(losses) if losses else math.nan,
            clients_sampled=len(sessions), clients_aggregated=len(valid) if aggregated else 0,
            clients_dropped=dropped, aggregated=aggregated, clients_refused=refused, strategy_metrics=aggregation,
            transport=self.transport.name, **self.privacy.round_metrics(),
        )

    # -- checkpoints -------------------------------------------------------------------------------
    @property
    def server_trainer(self) -> ServerHalfTrainer | MiddleTrainer:
        return self.middle if self.middle is not None else self.server  # exactly one is set

    def checkpoint(self, server_round: int, metrics: dict) -> Checkpoint:
        """The state after ``server_round`` completed (see :mod:`fedguard.apps.checkpoint`)."""
        optimizer = self.server_trainer.optimizer
        return Checkpoint(server_round, {k: v.clone() for k, v in self.global_adapter.items()},
                          trainable_state(self.runtime.server),
                          optimizer_state.flatten(optimizer) if optimizer is not None else {},
                          metrics, dict(self.privacy.excluded), rng_state())

    def restore(self, checkpoint: Checkpoint) -> None:
        """Continue from ``checkpoint`` (same model, split and LoRA settings; checked by tensor names)."""
        load_trainable_state(self.runtime.client, checkpoint.global_adapter)
        self.global_adapter = {k: v.clone() for k, v in checkpoint.global_adapter.items()}
        load_trainable_state(self.runtime.server, checkpoint.server_adapter)
        optimizer = self.server_trainer.optimizer
        if optimizer is not None and checkpoint.server_optimizer:
            optimizer_state.restore(optimizer, checkpoint.server_optimizer)
        self.privacy.excluded.update(checkpoint.excluded)
        restore_rng(checkpoint.rng)

    def _valid_finals(self, finals: list[Message], dropped: dict[str, str], server_round: int) -> list[Message]:
        """Replies that pass :func:`strategies.validation.reply_problem` against the current global adapter
        (names, shapes, dtype, finite, positive integer ``num-examples``, update norm within
        ``strategy-max-update-norm × strategy-reject-norm-factor``); the others are dropped with the reason
        logged. Runs for every strategy, plain Flower ones included."""
        valid, rejected = split_replies(finals, self.global_adapter, rejection_norm(self.config), server_round)
        dropped.update(rejected)
        return valid


def as_dict(record: RoundRecord) -> dict:
    return asdict(record)
