"""The server's round loop: sample clients with a Flower strategy, run the split exchanges, aggregate.

Per round:

1. ``strategy.configure_train`` samples clients and builds the ``train`` messages (global client adapter);
2. exchanges: every active client sends a chunk of hidden states; the server trains its half on each batch
   (clients in arrival order, batches in order) and sends back the gradients; clients compute in parallel;
   (U-shaped split: the server forwards each chunk through its middle blocks and sends the top hidden
   states down; once every client has returned d loss / d top, it back-propagates them all, then steps its
   middle adapter — see :class:`~fedguard.training.server_half.MiddleTrainer` — and sends the gradients);
3. the final replies (client adapter + ``num-examples``) are checked and handed to
   ``strategy.aggregate_train``; the result is the next global client adapter;
4. the joined model is evaluated on the held-out split.

A client whose reply is an error, malformed or missing (timeout) is dropped from the round with a logged
reason; the round is aggregated if at least ``min-fit-clients`` valid adapters remain, otherwise the
global adapter is kept unchanged and the run continues.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from flwr.app import ArrayRecord, ConfigRecord, Message
from flwr.serverapp import Grid
from flwr.superlink.grid import InMemoryGrid
from flwr.serverapp.strategy import Strategy

from fedguard.apps.checkpoint import Checkpoint, restore_rng, rng_state
from fedguard.apps.runtime import SplitRuntime
from fedguard.apps.server_privacy import ServerPrivacy
from fedguard.config import RunConfig
from fedguard.data.sources import TextDataset
from fedguard.model.lora import load_trainable_state, trainable_state
from fedguard.protocol import messages as proto
from fedguard.protocol.wire import WIRE_DTYPES
from fedguard.mechanisms.dp_sgd import DPMiddleTrainer, DPServerHalfTrainer
from fedguard.protocol.messages import ActivationBatch, DpStep
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
                               config.dp_server_max_grad_norm)
        else:
            built = trainer(runtime.server, config.learning_rate)
        if config.u_shape:
            self.middle = built
        else:
            self.server = built
        self.simulation = isinstance(grid, InMemoryGrid) or bool(getattr(grid, "simulation", False))
        self.on_batches: Callable[[int, int], None] | None = None  # (batches done, batches planned) per exchange
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
        """Release the server trainer's resources (Opacus hooks under DP-SGD)."""
        self.server_trainer.close()

    def run_round(self, server_round: int) -> RoundRecord:
        started = time.perf_counter()
        timeout = self.config.round_timeout
        self.privacy.begin_round()
        config = ConfigRecord({proto.NUM_LABELS: self.num_labels, proto.SIMULATION: self.simulation})
        messages = list(self.strategy.configure_train(
            server_round, ArrayRecord(torch_state_dict=self.global_adapter), config, self.grid))
        sampled = {m.metadata.dst_node_id for m in messages}
        dropped: dict[str, str] = {}
        refused: dict[str, str] = {}
        done_steps = {node: 0 for node in sampled}
        bytes_up = bytes_down = 0
        client_seconds = server_seconds = 0.0
        losses: list[float] = []
        finals: list[Message] = []
        exchanges = 0
        traffic: dict[str, dict[str, int]] = {}  # node -> payload bytes up / down this round
        pending: dict[int, tuple[list[ActivationBatch], list[int], DpStep | None]] = {}  # U-shape: awaiting d/d top
        while messages:
            for m in messages:
                size = proto.payload_bytes(m.content)
                bytes_down += size
                traffic.setdefault(str(m.metadata.dst_node_id), {"up": 0, "down": 0})["down"] += size
            waiting = {m.metadata.dst_node_id for m in messages}
            # An error reply for a node that went offline comes from the SuperLink, not the node: match replies
            # to the instruction they answer, not to their sender.
            replies = list(self.grid.send_and_receive(messages, timeout=timeout))
            destination = {m.metadata.message_id: m.metadata.dst_node_id for m in messages}  # ids set on send
            exchanges += 1
            messages = []
            slowest = 0.0
            middle_steps: list[list] = []
            for reply in replies:
                node = destination.get(reply.metadata.reply_to_message_id, reply.metadata.src_node_id)
                waiting.discard(node)
                if reply.has_error():
                    dropped[str(node)] = f"client error: {reply.error.reason}"
                    pending.pop(node, None)
                    continue
                size = proto.payload_bytes(reply.content)
                bytes_up += size
                traffic.setdefault(str(node), {"up": 0, "down": 0})["up"] += size
                problem = self.privacy.observe(node, reply.content)  # spending is recorded (on disk) first
                if proto.REFUSAL in reply.content.config_records:
                    reason = str(reply.content.config_records[proto.REFUSAL].get("reason", "no reason given"))
                    refused[str(node)] = reason
                    self.privacy.exclude(node, f"refused: {reason}")
                    continue
                if problem is None and done_steps.get(node, 0) >= self.config.local_steps:
                    problem = self.privacy.check_final(node, reply.content, done_steps[node])
                if problem is not None:
                    dropped[str(node)] = f"privacy record rejected: {problem}"
                    pending.pop(node, None)
                    continue
                if done_steps.get(node, 0) >= self.config.local_steps:
                    finals.append(reply)
                    continue
                try:
                    if node in pending:  # U-shape, second half of a chunk: the client's d loss / d top
                        batches, seeds, dp_step = pending.pop(node)
                        tops = proto.decode_top_gradients(reply.content, [tuple(b.hidden.shape) for b in batches])
                        slowest = max(slowest, tops.client_seconds)
                        t0 = time.perf_counter()
                        results = [self.middle.backward(b, seed, g, dp_step)
                                   for b, seed, g in zip(batches, seeds, tops.gradients)]
                        server_seconds += time.perf_counter() - t0
                        # Under DP-SGD an empty Poisson batch is still a (noise-only) step.
                        middle_steps.extend(grads for b, (_, grads) in zip(batches, results)
                                            if b.hidden.shape[0] or dp_step is not None)
                        messages.append(self._gradient_message(node, [g for g, _ in results], done_steps,
                                                               server_round))
                        continue
                    chunk = proto.decode_activations(reply.content, self.runtime.hidden_size,
                                                     expect_labels=not self.config.u_shape)
                except proto.ProtocolError as err:
                    dropped[str(node)] = f"malformed reply: {err}"
                    continue
                if self.config.dp_enabled and chunk.dp is None:
                    dropped[str(node)] = "malformed reply: a DP-SGD run's chunk carries no DP-SGD parameters"
                    continue
                slowest = max(slowest, chunk.client_seconds)
                t0 = time.perf_counter()
                if self.middle is not None:
                    seeds = [self._middle_seed(server_round, node, exchanges, j) for j in range(len(chunk.batches))]
                    tops_down = [self.middle.forward(b, seed) for b, seed in zip(chunk.batches, seeds)]
                    pending[node] = (chunk.batches, seeds, chunk.dp)
                    server_seconds += time.perf_counter() - t0
                    content = proto.encode_top_hidden(proto.TopHiddenChunk(tops_down), server_round, self.wire_dtype)
                    messages.append(Message(content, dst_node_id=node, message_type=proto.EXCHANGE))
                    continue
                outcomes = [self.server.train_batch(batch, chunk.dp) for batch in chunk.batches]
                server_seconds += time.perf_counter() - t0
                losses.extend(o.loss for o in outcomes if o.examples)
                messages.append(self._gradient_message(node, [o.grad_hidden for o in outcomes], done_steps,
                                                       server_round))
            t0 = time.perf_counter()
            for grads in middle_steps:  # after every backward of this exchange: all saw the same weights
                self.middle.step(grads)
            server_seconds += time.perf_counter() - t0
            for node in waiting:
                dropped[str(node)] = f"no reply within round-timeout={timeout:g}s"
                done_steps.pop(node, None)
                pending.pop(node, None)
            client_seconds += slowest
            if self.on_batches is not None:
                self.on_batches(sum(done_steps.values()), len(sampled) * self.config.local_steps)
        for node, reason in refused.items():
            log.warning("round %d: client %s refused to train: %s", server_round, node, reason)
        for node, reason in dropped.items():
            log.warning("round %d: client %s dropped: %s", server_round, node, reason)
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
        return RoundRecord(
            round=server_round, accuracy=evaluation.accuracy, loss=evaluation.loss, perplexity=evaluation.perplexity,
            bytes_up=bytes_up, bytes_down=bytes_down, bytes_by_client=traffic,
            seconds=time.perf_counter() - started, client_seconds=client_seconds, server_seconds=server_seconds,
            messaging_seconds=max(0.0, train_seconds - client_seconds - server_seconds), eval_seconds=eval_seconds,
            exchanges=exchanges, train_loss=sum(losses) / len(losses) if losses else math.nan,
            clients_sampled=len(sampled), clients_aggregated=len(valid) if aggregated else 0,
            clients_dropped=dropped, aggregated=aggregated, clients_refused=refused, strategy_metrics=aggregation,
            **self.privacy.round_metrics(),
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

    def _gradient_message(self, node: int, gradients: list, done_steps: dict[int, int], server_round: int) -> Message:
        """The gradients of a chunk's hidden states; ``final`` once the node has done its local steps."""
        done_steps[node] += len(gradients)
        final = done_steps[node] >= self.config.local_steps
        content = proto.encode_gradients(proto.GradientChunk(gradients, final), server_round, self.wire_dtype)
        return Message(content, dst_node_id=node, message_type=proto.EXCHANGE)

    def _middle_seed(self, server_round: int, node: int, exchange: int, batch: int) -> int:
        """Dropout seed of one middle-block forward (recomputed identically for its backward)."""
        return (self.config.seed * 1_000_003 + server_round * 100_003 + node % 1_000_033 * 7 + exchange * 31
                + batch) % 2**31

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
