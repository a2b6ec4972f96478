"""One sampled client's round on the server: a state machine that does not know how messages travel.

:meth:`ServerSession.handle` takes what the client sent (a Flower ``RecordDict``, from a Flower reply or a
data-plane frame) and returns what goes back, or ``None`` when the client's part of the round is over:

* an activation chunk -> the server records its privacy events (before using it), checks it, trains its half on
  each batch in order and answers with the gradients (``final`` once ``local-steps`` batches were driven);
  U-shape: forwards it through the middle blocks and answers with the top hidden states;
* U-shape, d loss / d top -> back-propagates through the middle, answers with the gradients; the middle step is
  taken at once (``defer_middle_steps=False``: the data plane, which holds the server lock from the forward to
  the backward so both see the same weights) or collected in :attr:`deferred` for the caller to apply after
  every client of the exchange was back-propagated (the Flower transport, where clients move in lock-step);
* the final reply (adapter + ``num-examples``) or a refusal -> recorded; ``None``.

A malformed message, a privacy record that cannot be trusted, or an error ends the session with the reason in
:attr:`dropped`. All server-side work of a session runs under ``lock`` (one server half, batches in arrival
order; the privacy ledger is shared), so sessions may be driven from several threads.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field

from flwr.app import Message, RecordDict

from fedguard.apps.server_privacy import ServerPrivacy
from fedguard.config import RunConfig
from fedguard.protocol import messages as proto
from fedguard.protocol.messages import ActivationBatch, DpStep
from fedguard.training.server_half import MiddleTrainer, ServerHalfTrainer


@dataclass
class SessionStats:
    """What one session cost: payload bytes, compute seconds (client-reported and server), exchanges."""

    bytes_up: int = 0
    bytes_down: int = 0
    client_seconds: float = 0.0
    last_client_seconds: float = 0.0  # of the latest upward message
    server_seconds: float = 0.0
    exchanges: int = 0
    losses: list[float] = field(default_factory=list)


class ServerSession:
    """The server's side of one client's round (see the module docstring)."""

    def __init__(self, node: int, server_round: int, config: RunConfig, trainer: ServerHalfTrainer | MiddleTrainer,
                 cut_width: int, privacy: ServerPrivacy, wire_dtype, lock: threading.Lock,  # noqa: ANN001
                 defer_middle_steps: bool) -> None:
        self.node, self.server_round, self.config, self.cut_width = node, server_round, config, cut_width
        self.trainer, self.privacy, self.wire_dtype = trainer, privacy, wire_dtype
        self.lock, self.defer_middle_steps = lock, defer_middle_steps
        self.u_shape = isinstance(trainer, MiddleTrainer)
        self.done_steps = 0
        self.stats = SessionStats()
        self.final: RecordDict | None = None
        self.final_message: Message | None = None  # the Flower reply that carried the final adapter
        self.refused: str | None = None
        self.dropped_reason: str | None = None
        self.deferred: list[list] = []  # U-shape middle gradients to apply after the exchange (Flower transport)
        self._pending: tuple[list[ActivationBatch], list[int], DpStep | None, list[tuple[int, ...]]] | None = None
        self._owner: int | None = None  # the thread that holds ``lock`` for this session

    @property
    def over(self) -> bool:
        """The client's part of the round is over (final adapter, refusal, or dropped)."""
        return self.final is not None or self.refused is not None or self.dropped_reason is not None

    # -- driving ---------------------------------------------------------------------------------
    def handle(self, content: RecordDict) -> RecordDict | None:
        """What goes back to the client for ``content``, or None when its part of the round is over."""
        if self.over:
            return None
        if self._owner != threading.get_ident():
            self.lock.acquire()
            self._owner = threading.get_ident()
        try:
            reply = self._handle(content)
        except BaseException:
            self._release()
            raise
        # U-shape on the data plane: keep the lock from the middle forward to its backward (same weights).
        if not (reply is not None and self._pending is not None and not self.defer_middle_steps):
            self._release()
        if reply is not None:
            self.stats.bytes_down += proto.payload_bytes(reply)
        return reply

    @property
    def stream_done(self) -> bool:
        """The last gradients were sent: only the final reply (over Flower) is still to come."""
        return self.over or (self.done_steps >= self.config.local_steps and self._pending is None)

    def handle_reply(self, reply: Message) -> RecordDict | None:
        """:meth:`handle` for a Flower reply; keeps the reply that carries the final adapter (for the strategy)."""
        if reply.has_error():
            self.dropped(f"client error: {reply.error.reason}")
            return None
        down = self.handle(reply.content)
        if self.final is not None and self.final_message is None and self.dropped_reason is None:
            self.final_message = reply
        return down

    def dropped(self, reason: str) -> None:
        """End the session: its connection or message failed (``reason`` goes to ``clients_dropped``)."""
        if self.dropped_reason is None and self.final is None and self.refused is None:
            self.dropped_reason = reason
        self._pending = None
        self._release()

    def _release(self) -> None:
        """Release ``lock`` if this thread holds it for this session (never another thread's hold)."""
        if self._owner is not None and self._owner == threading.get_ident():
            self._owner = None
            self.lock.release()

    def _handle(self, content: RecordDict) -> RecordDict | None:
        self.stats.bytes_up += proto.payload_bytes(content)
        self.stats.exchanges += 1
        self.stats.last_client_seconds = 0.0
        problem = self.privacy.observe(self.node, content)  # spending is recorded (on disk) first
        if proto.REFUSAL in content.config_records:
            self.refused = str(content.config_records[proto.REFUSAL].get("reason", "no reason given"))
            self.privacy.exclude(self.node, f"refused: {self.refused}")
            return None
        if problem is None and self.done_steps >= self.config.local_steps:
            problem = self.privacy.check_final(self.node, content, self.done_steps)
        if problem is not None:
            self.dropped_reason = f"privacy record rejected: {problem}"
            return None
        if self.done_steps >= self.config.local_steps:
            self.final = content
            return None
        try:
            if self._pending is not None:
                return self._top_gradients(content)
            return self._activations(content)
        except proto.ProtocolError as err:
            self.dropped_reason = f"malformed reply: {err}"
            self._pending = None
            return None

    def _activations(self, content: RecordDict) -> RecordDict | None:
        chunk = proto.decode_activations(content, self.cut_width, expect_labels=not self.u_shape)
        if self.config.dp_enabled and chunk.dp is None:
            raise proto.ProtocolError("a DP-SGD run's chunk carries no DP-SGD parameters")
        self._client_time(chunk.client_seconds)
        started = time.perf_counter()
        try:
            if self.u_shape:
                seeds = [self._middle_seed(j) for j in range(len(chunk.batches))]
                tops = [self.trainer.forward(b, seed) for b, seed in zip(chunk.batches, seeds)]
                self._pending = (chunk.batches, seeds, chunk.dp, [tuple(t.shape) for t in tops])
                return proto.encode_top_hidden(proto.TopHiddenChunk(tops), self.server_round, self.wire_dtype)
            outcomes = [self.trainer.train_batch(batch, chunk.dp) for batch in chunk.batches]
            self.stats.losses.extend(o.loss for o in outcomes if o.examples)
            return self._gradients([o.grad_hidden for o in outcomes])
        finally:
            self.stats.server_seconds += time.perf_counter() - started

    def _top_gradients(self, content: RecordDict) -> RecordDict:
        batches, seeds, dp_step, top_shapes = self._pending  # d loss / d top: the tops' shapes (hidden size)
        self._pending = None
        tops = proto.decode_top_gradients(content, top_shapes)
        self._client_time(tops.client_seconds)
        started = time.perf_counter()
        results = [self.trainer.backward(b, seed, g, dp_step) for b, seed, g in zip(batches, seeds, tops.gradients)]
        # Under DP-SGD an empty Poisson batch is still a (noise-only) step.
        steps = [grads for b, (_, grads) in zip(batches, results) if b.hidden.shape[0] or dp_step is not None]
        if self.defer_middle_steps:
            self.deferred.extend(steps)
        else:
            for grads in steps:
                self.trainer.step(grads)
        self.stats.server_seconds += time.perf_counter() - started
        return self._gradients([g for g, _ in results])

    def _gradients(self, gradients: list) -> RecordDict:
        """The gradients of a chunk's hidden states; ``final`` once the client has done its local steps."""
        self.done_steps += len(gradients)
        final = self.done_steps >= self.config.local_steps
        return proto.encode_gradients(proto.GradientChunk(gradients, final), self.server_round, self.wire_dtype)

    def _client_time(self, seconds: float) -> None:
        seconds = seconds if math.isfinite(seconds) and seconds >= 0 else 0.0
        self.stats.client_seconds += seconds
        self.stats.last_client_seconds = seconds

    def _middle_seed(self, batch: int) -> int:
        """Dropout seed of one middle-block forward (recomputed identically for its backward)."""
        return (self.config.seed * 1_000_003 + self.server_round * 100_003 + self.node % 1_000_033 * 7
                + self.stats.exchanges * 31 + batch) % 2**31
