"""The FedGuard ClientApp: the client's half of split-LoRA training, one Flower message at a time.

Everything a client must remember between the messages of a round (its adapter, Adam moments, which batch
comes next, its secret, its privacy ledger) is kept in ``Context.state`` (the ledger optionally on disk),
so the same code runs in simulation (many virtual clients per worker process) and in a deployment
(possibly a fresh process per message).
"""

from __future__ import annotations

import time

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

from fedguard.apps.client_privacy import ClientPrivacy
from fedguard.outputs.capture import ActivationCapture, record_client_update
from fedguard.runtime import client_runtime, client_shard, shard_rows, shard_word_counts, token_noise_scales
from fedguard.config import RunConfig
from fedguard.data.batches import TokenBatch, round_batches
from fedguard.training.dp_trainers import DPClientHalfTrainer
from fedguard.mechanisms.labels import randomized_labels
from fedguard.mechanisms.sampling import poisson_batch
from fedguard.model.lora import load_trainable_state, trainable_state
from fedguard.apps.transports import max_batch
from fedguard.dataplane import frames
from fedguard.dataplane.client import DataPlaneClient
from fedguard.protocol import messages as proto
from fedguard.protocol.wire import WIRE_DTYPES, ActivationCodec
from fedguard.training import optimizer_state
from fedguard.training.client_half import ClientHalfTrainer

app = ClientApp()

_ADAPTER = "fedguard.adapter"
_OPTIMIZER = "fedguard.optimizer"
_PROGRESS = "fedguard.progress"
_TOPS = "fedguard.top-hidden"  # U-shape: the server's top hidden states of the current chunk


class _ClientSession:
    """One client's view of the current round, rebuilt from the message and ``Context.state``."""

    def __init__(self, context: Context, num_labels: int, freeze_lora_a: bool = False) -> None:
        self.context = context
        self.config = RunConfig.from_run_config(context.run_config)
        self.num_labels = num_labels
        self.runtime = client_runtime(self.config, num_labels)  # the client half only, on run-config `device`
        node = context.node_config
        self.partition_id = int(node.get("partition-id", 0))
        self.num_partitions = int(node.get("num-partitions", 1))
        local = node.get("dataset")
        self.local_dataset = str(local) if local else None
        self.shard = client_shard(self.config, self.partition_id, self.num_partitions, self.local_dataset)
        self.privacy = ClientPrivacy(self.config, context, len(self.shard))
        self.wire_dtype = WIRE_DTYPES[self.config.activation_dtype]
        self.codec = ActivationCodec(self.config.activation_compression, self.config.activation_topk, self.wire_dtype)
        defences = {"precision": self.config.precision, "decorrelation": self.config.dcor_weight,
                    "deterministic": self.config.activation_reuse != "none",
                    "token_noise_scale": token_noise_scales(self.config, num_labels)}
        if self.privacy.dp is not None:  # whole-model DP-SGD: the client part, noise std σ·C (σ·C/C_c × C_c)
            self.trainer: ClientHalfTrainer = DPClientHalfTrainer(
                self.runtime.client, self.config.learning_rate, self.privacy.dp.client_noise_multiplier,
                self.config.dp_max_grad_norm, self.privacy.expected_batch_size, freeze_lora_a,
                self.privacy.activation, **defences)
        else:
            self.trainer = ClientHalfTrainer(self.runtime.client, self.config.learning_rate, freeze_lora_a,
                                             self.privacy.activation, **defences)
        self.lengths = shard_word_counts(self.shard) if self.config.group_by_length else None

    def plan(self, server_round: int) -> list[list[int]]:
        """The round's batches (shard indices). Under DP-SGD: Poisson sampling with the client's secret (the
        server must not know who was sampled); otherwise reproducible from the run's ``seed``."""
        if self.privacy.dp is not None:
            return [poisson_batch(len(self.shard), self.privacy.sample_rate, self.privacy.secret, server_round, step)
                    for step in range(self.config.local_steps)]
        return round_batches(len(self.shard), self.config.batch_size, self.config.local_steps,
                             self.config.seed, self.partition_id, server_round, self.lengths)

    def chunk(self, server_round: int, start: int) -> tuple[list[TokenBatch], list[int], list[list[int]]]:
        plan = self.plan(server_round)
        stop = min(start + self.config.exchange_batches, self.config.local_steps)
        batches, seeds = [], []
        for step in range(start, stop):
            batch = self.runtime.encode(self.shard, plan[step], self.config.max_length)
            if self.config.label_protection == "randomized-response":
                batch.labels[:] = torch.tensor(randomized_labels(
                    batch.labels.tolist(), plan[step], self.num_labels, self.config.label_epsilon,
                    self.privacy.secret), dtype=batch.labels.dtype)
            batches.append(batch)
            base = self.privacy.secret if self.privacy.dp is not None else self.config.seed * 1_000_003
            seeds.append((base + self.partition_id * 10_007 + server_round * 100_003 + step) % 2**31)
        return batches, seeds, plan[start:stop]

    def save(self, progress: dict) -> None:
        state = self.context.state
        state[_ADAPTER] = ArrayRecord(torch_state_dict=trainable_state(self.runtime.client))
        if self.trainer.optimizer is not None:
            state[_OPTIMIZER] = ArrayRecord(torch_state_dict=optimizer_state.flatten(self.trainer.optimizer))
        state[_PROGRESS] = ConfigRecord(progress)

    def restore(self) -> dict:
        state = self.context.state
        if _PROGRESS not in state.config_records:
            raise proto.ProtocolError("gradients arrived but this client has no round in progress")
        load_trainable_state(self.runtime.client, dict(state.array_records[_ADAPTER].to_torch_state_dict()))
        if self.trainer.optimizer is not None and _OPTIMIZER in state.array_records:
            optimizer_state.restore(self.trainer.optimizer, dict(state.array_records[_OPTIMIZER].to_torch_state_dict()))
        return dict(state.config_records[_PROGRESS])

    def send_chunk(self, server_round: int, start: int, started: float, progress: dict) -> RecordDict:
        """Flower transport: the next chunk's message; the round's progress is saved in ``Context.state`` (the
        next message may reach a fresh process)."""
        content, batches, _ = self.build_chunk(server_round, start, started, on_recorded=lambda: self.save(
            {**progress, "round": server_round, "chunk-start": start, "chunk-size": min(
                self.config.exchange_batches, self.config.local_steps - start)}))
        return content

    def build_chunk(self, server_round: int, start: int, started: float, keep_graph: bool = False,
                    on_recorded=None) -> tuple[RecordDict, list[TokenBatch], list[int]]:  # noqa: ANN001
        """The chunk of batches from step ``start``: hidden states (clipped, noised, encoded), its privacy record
        (already on the client's ledger) and, for the server, its DP-SGD parameters. ``on_recorded`` runs once
        the spending is recorded, before anything is returned for sending."""
        batches, seeds, indices = self.chunk(server_round, start)
        hidden = self.trainer.send(batches, seeds, keep_graph=keep_graph,
                                   noise_keys=self.privacy.noise_keys(indices, server_round))
        if self.config.capture_activations > 0:
            rows = shard_rows(self.config, self.partition_id, self.num_partitions, self.local_dataset)
            sent = [self.codec.roundtrip(h) for h in hidden]  # what the server decodes, not what was computed
            ActivationCapture(self.config, self.partition_id, rows).record(sent, batches, indices, server_round)
        labels_leave = not self.config.u_shape
        # Everything this chunk releases (activations, its batches' DP-SGD steps, RR labels) is on the
        # client's ledger before it leaves, and travels with it to the server's ledger.
        events = self.privacy.chunk_events(indices, server_round, labels_leave)
        self.privacy.record(events)
        if on_recorded is not None:
            on_recorded()
        chunk = proto.ActivationChunk(
            [proto.ActivationBatch(h, b.attention_mask, b.labels if labels_leave else None)
             for h, b in zip(hidden, batches)],
            client_seconds=time.perf_counter() - started, dp=self.privacy.dp_step,
        )
        content = proto.encode_activations(chunk, self.codec)
        content[proto.PRIVACY] = proto.encode_privacy(self.privacy.client_id, events)
        return content, batches, seeds

    def final_reply(self, server_round: int, examples: int, started: float, steps: int) -> RecordDict:
        """The round's last reply: the adapter, ``num-examples`` (a Poisson round that drew no example still
        reports 1) and an empty privacy record (every step the adapter contains was recorded with its chunk)."""
        update = trainable_state(self.runtime.client)
        if self.config.capture_activations > 0:
            record_client_update(self.config.output_dir, self.partition_id, server_round, update)
        content = proto.encode_final_reply(update, max(1, examples), {
            "client-seconds": time.perf_counter() - started, "steps": steps})
        content[proto.PRIVACY] = proto.encode_privacy(self.privacy.client_id, [])
        return content

    def shapes(self, batches: list[TokenBatch], width: int) -> list[tuple[int, int, int]]:
        """``[batch, seq, width]`` per batch: ``width`` is the cut's (gradients) or the hidden size (U-shape tops)."""
        return [(b.input_ids.shape[0], b.input_ids.shape[1], width) for b in batches]

    def stream_round(self, server_round: int, plane: ConfigRecord) -> RecordDict:
        """Stream transport: the whole round over one data-plane connection, one chunk per exchange, the
        adapter and optimiser in memory and (one batch per chunk) each batch's autograd graph kept from the up
        leg to the down leg, so nothing is recomputed. Returns the final reply for Flower."""
        limits = frames.limits_for(max_batch(self.config), self.config.max_length,
                                   max(self.runtime.hidden_size, self.runtime.cut_width))
        node_id = int(self.context.node_id)
        keep = self.config.exchange_batches == 1
        examples, start = 0, 0
        round_started = mark = time.perf_counter()
        with DataPlaneClient(str(plane[proto.DATA_PLANE_ADDRESS]), str(plane[proto.DATA_PLANE_FINGERPRINT]),
                             str(plane[proto.DATA_PLANE_TICKET]), node_id, limits,
                             self.config.round_timeout) as link:
            while start < self.config.local_steps:
                up, batches, seeds = self.build_chunk(server_round, start, mark, keep_graph=keep)
                down = link.exchange(up)
                tops = None
                if self.config.u_shape:
                    mark = time.perf_counter()
                    tops = proto.decode_top_hidden(down, self.shapes(batches, self.runtime.hidden_size)).hidden
                    grads_up = self.trainer.top_gradients(batches, seeds, tops)
                    reply = proto.encode_top_gradients(
                        proto.TopGradientChunk(grads_up, time.perf_counter() - mark), self.wire_dtype)
                    reply[proto.PRIVACY] = proto.encode_privacy(self.privacy.client_id, [])
                    down = link.exchange(reply)
                grads = proto.decode_gradients(down, self.shapes(batches, self.runtime.cut_width))
                mark = time.perf_counter()
                self.trainer.apply_gradients(batches, seeds, grads.gradients, tops)
                examples += sum(int(b.labels.shape[0]) for b in batches)
                start += len(batches)
                if grads.final:
                    break
        return self.final_reply(server_round, examples, round_started, start)


@app.train()
def start_round(msg: Message, context: Context) -> Message:
    """Round start: take the global client adapter, check the budget, send the first chunk (or refuse)."""
    started = time.perf_counter()
    config = msg.content.config_records.get("config", ConfigRecord())
    server_round = int(config.get("server-round", 0))
    num_labels = int(config.get(proto.NUM_LABELS, 2))
    freeze_a = bool(config.get(proto.FREEZE_LORA_A, False))
    simulation = bool(config.get(proto.SIMULATION, True))
    session = _ClientSession(context, num_labels, freeze_a)
    try:
        reason = session.privacy.refusal(session.plan(server_round), server_round, simulation)
        if reason is not None:
            return Message(proto.encode_refusal(session.privacy.client_id, reason), reply_to=msg)
        if proto.ADAPTER not in msg.content.array_records:
            raise proto.ProtocolError("train message carries no client adapter ('arrays')")
        load_trainable_state(session.runtime.client,
                             dict(msg.content.array_records[proto.ADAPTER].to_torch_state_dict()))
        if _OPTIMIZER in context.state.array_records:
            del context.state[_OPTIMIZER]
        if proto.DATA_PLANE_TICKET in config:  # stream transport: the whole round inside this one message
            return Message(session.stream_round(server_round, config), reply_to=msg)
        progress = {proto.NUM_LABELS: num_labels, "examples": 0, proto.FREEZE_LORA_A: freeze_a}
        return Message(session.send_chunk(server_round, 0, started, progress), reply_to=msg)
    finally:
        session.trainer.close()


@app.train("exchange")
def exchange(msg: Message, context: Context) -> Message:
    """Gradients for the last chunk: back-propagate, step, then send the next chunk or the final adapter.
    U-shape: top hidden states for the last chunk: apply the head and loss, send d loss / d top back."""
    started = time.perf_counter()
    state = context.state
    saved = state.config_records.get(_PROGRESS, ConfigRecord())
    session = _ClientSession(context, int(saved.get(proto.NUM_LABELS, 2)), bool(saved.get(proto.FREEZE_LORA_A, False)))
    try:
        progress = session.restore()
        server_round, start = int(progress["round"]), int(progress["chunk-start"])
        batches, seeds, _ = session.chunk(server_round, start)
        top_shapes = session.shapes(batches, session.runtime.hidden_size)
        if proto.TOP_HIDDEN in msg.content.array_records:
            if not session.config.u_shape:
                raise proto.ProtocolError("top hidden states arrived, but this run does not use the U-shaped split")
            tops = proto.decode_top_hidden(msg.content, top_shapes).hidden
            state[_TOPS] = ArrayRecord(torch_state_dict={str(i): t for i, t in enumerate(tops)})
            grads_up = session.trainer.top_gradients(batches, seeds, tops)
            content = proto.encode_top_gradients(proto.TopGradientChunk(grads_up, time.perf_counter() - started),
                                                 session.wire_dtype)
            content[proto.PRIVACY] = proto.encode_privacy(session.privacy.client_id, [])
            return Message(content, reply_to=msg)
        grads = proto.decode_gradients(msg.content, session.shapes(batches, session.runtime.cut_width))
        tops = None
        if session.config.u_shape:
            if _TOPS not in state.array_records:
                raise proto.ProtocolError("gradients arrived before the top hidden states of this chunk (U-shape)")
            saved_tops = state.array_records[_TOPS].to_torch_state_dict()
            tops = [saved_tops[str(i)] for i in range(len(batches))]
            del state[_TOPS]
        session.trainer.apply_gradients(batches, seeds, grads.gradients, tops)
        progress["examples"] = int(progress["examples"]) + sum(int(b.labels.shape[0]) for b in batches)
        next_start = start + len(batches)
        if not (grads.final or next_start >= session.config.local_steps):
            return Message(session.send_chunk(server_round, next_start, started, progress), reply_to=msg)
        content = session.final_reply(server_round, int(progress["examples"]), started, next_start)
        for key in (_PROGRESS, _OPTIMIZER, _ADAPTER):
            if key in state:
                del state[key]
        return Message(content, reply_to=msg)
    finally:
        session.trainer.close()
