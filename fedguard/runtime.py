"""Per-process caches of what is expensive to build: the split model with LoRA, the data, a client's shard.

A simulation worker process serves many virtual clients one after another, so these caches are keyed by
exactly what they hold (model, split, LoRA settings; data set and partition) and never by client. Anything
that differs per client — its adapter weights, optimiser moments, round progress — lives in the Flower
``Context.state`` and is loaded into the cached model before each use.

Each process loads only what it runs, where it runs it:

* :func:`client_runtime` (ClientApp): the client half only — embeddings and blocks ``0..split-layer-1``
  (plus the final norm and head in the U-shaped split) with the client adapter, on run-config ``device``.
  Only those blocks are read from the checkpoint (a model built with ``split-layer`` blocks); the server's
  blocks are never loaded (a ``.gguf`` file is the exception: loaded whole, then the server's part is
  dropped). Without the U shape the head is loaded and dropped right after the split.
* :func:`server_runtime` (ServerApp): the whole model, split, with both adapters (the server evaluates the
  joined model), on run-config ``server-device``.
* :func:`runtime_for`: the whole model on the CPU in fp32 (tools, tests and the attack harness).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import gc
from collections.abc import Iterator
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from fedguard.quiet import quiet_libraries
from fedguard.config import RunConfig
from fedguard.data.batches import TokenBatch, tokenize
from fedguard.data.canaries import CANARY_ROW, canary_copies, receives_canaries
from fedguard.data.instructions import InstructionDataset, load_instruction_splits, tokenize_instructions
from fedguard.data.partition import PartitionScheme, partition_indices
from fedguard.data.sources import DatasetSplits, TextDataset, load_dataset_splits
from fedguard.mechanisms.token_importance import important_tokens, noise_scales
from fedguard.model.device import autocast, resolve_device
from fedguard.model.loading import ModelSpec, can_load_first_blocks, load_first_blocks, load_task_model, load_tokenizer
from fedguard.model.lora import LoraSettings, attach_lora, check_targets_exist, unwrapped
from fedguard.model.split import Family, family_of, num_blocks, split_model

Examples = TextDataset | InstructionDataset


@dataclass
class ClientRuntime:
    """What a ClientApp process needs: the client half with its LoRA adapter, on ``device``.

    ``client`` has the same module and parameter names as :attr:`SplitRuntime.client` (so its adapter is the
    whole runtime's client adapter, name for name, and merges with the server's). ``task_model`` is the
    model as loaded for the client *without the server's part* — blocks ``split-layer..N-1`` were never
    loaded (or, from a GGUF file, removed after loading) and, without the U shape, the final norm/pooler and
    the task head are removed — so it holds only the client half's weights; it cannot run as a whole model
    (its config is the checkpoint's, ``N`` blocks). ``num_blocks`` and ``family.num_blocks`` are the whole
    model's count.
    """

    tokenizer: PreTrainedTokenizerBase
    family: Family
    client: nn.Module
    hidden_size: int
    num_blocks: int
    task_model: nn.Module
    task: str
    u_shape: bool
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    precision: str = "fp32"

    @property
    def cut_width(self) -> int:
        """Width of what crosses the split per token: ``bottleneck-dim`` if set, else :attr:`hidden_size`."""
        return unwrapped(self.client).cut_width

    def encode(self, data: Examples, indices: list[int], max_length: int) -> TokenBatch:
        """Tokenize examples ``indices`` of ``data`` for this task (labels ``[B]`` or ``[B, T]``), on CPU."""
        return _encode(self.tokenizer, self.task, data, indices, max_length)


@dataclass
class SplitRuntime(ClientRuntime):
    """The loaded model cut in two, each half wrapped with its LoRA adapter.

    ``u_shape``: the client half also holds the head (:meth:`ClientHalf.head`) and the server half is the
    middle blocks only. ``task_model`` is the whole model; the halves are views over it, so with both
    adapters loaded it is the joined model (used to generate text). Every tensor of the model lives on
    ``device``; ``precision`` (``fp32`` | ``bf16``) is what trainers and :meth:`logits` compute in.
    """

    server: nn.Module = field(kw_only=True)

    def logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The joined model's logits: ``server(client(x))``, or ``client.head(server(client(x)))`` (U-shape).

        Inputs may be on any device; the logits are on :attr:`device`, float32 in ``fp32`` (bfloat16
        possible in ``bf16``)."""
        input_ids, attention_mask = input_ids.to(self.device), attention_mask.to(self.device)
        with autocast(self.device, self.precision):
            hidden = self.server(self.client(input_ids, attention_mask), attention_mask)
            return unwrapped(self.client).head(hidden, attention_mask) if self.u_shape else hidden

    def eval_batches(self, data: Examples, max_length: int, batch_size: int = 64) -> list[TokenBatch]:
        """``data`` in batches of similar length (less padding; the metrics do not depend on the order)."""
        order = np.argsort([len(text) for text in data.text], kind="stable").tolist()
        return [self.encode(data, order[i:i + batch_size], max_length) for i in range(0, len(order), batch_size)]


def _encode(tokenizer: PreTrainedTokenizerBase, task: str, data: Examples, indices: list[int],
            max_length: int) -> TokenBatch:
    if task == "causal-lm":
        return tokenize_instructions(tokenizer, data, indices, max_length)
    return tokenize(tokenizer, data, indices, max_length)


def lora_settings(config: RunConfig) -> LoraSettings:
    return LoraSettings(config.lora_r, config.lora_alpha, config.lora_dropout, config.lora_target_modules)


def model_spec(config: RunConfig, num_labels: int) -> ModelSpec:
    return ModelSpec(config.model, config.task, num_labels)


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run the body with torch's CPU generator seeded with ``seed``, and restore the caller's state after it:
    what a run draws at set-up (a new task head, LoRA's initial A matrices) depends on its seed only."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


@functools.lru_cache(maxsize=2)
def split_runtime(spec: ModelSpec, split_layer: int, lora: LoraSettings, seed: int,
                  u_shape: bool = False, device: str = "cpu", precision: str = "fp32",
                  bottleneck_dim: int = 0) -> SplitRuntime:
    """Load, split and LoRA-wrap the whole model, then place it on ``device`` (a resolved torch device
    string: ``cpu``, ``cuda``, ``cuda:N``). A new task head and LoRA's initial A matrices are drawn with ``seed``
    (on the CPU, before placement, so they do not depend on the device)."""
    quiet_libraries()
    tokenizer = load_tokenizer(spec)
    with seeded(seed):  # a new task head is drawn from the run's seed, as in client_split_runtime
        model = load_task_model(spec, tokenizer.pad_token_id)
    family = family_of(model)
    check_targets_exist(model, lora, family)
    client, server = split_model(model, split_layer, u_shape=u_shape, bottleneck_dim=bottleneck_dim, seed=seed)
    with seeded(seed):
        client = attach_lora(client, lora, family)
        server = attach_lora(server, lora, family)
    place(torch.device(device), model, client, server)
    return SplitRuntime(tokenizer, family, client, model.config.hidden_size, num_blocks(model), model, spec.task,
                        u_shape, torch.device(device), precision, server=server)


@functools.lru_cache(maxsize=2)
def client_split_runtime(spec: ModelSpec, split_layer: int, lora: LoraSettings, seed: int, u_shape: bool = False,
                         device: str = "cpu", precision: str = "fp32", bottleneck_dim: int = 0) -> ClientRuntime:
    """Load the client half only, LoRA-wrap it (same ``seed``, so the same initial adapter as
    :func:`split_runtime`'s) and place it on ``device``.

    The model is built with its first ``split_layer`` blocks only by
    :func:`fedguard.model.loading.load_first_blocks` (at least one: a ``split-layer = 0`` client runs none;
    all of them for a ``split_layer`` past the last, which :func:`split_model` then rejects), which reads
    only their tensors from the checkpoint: the server's blocks are never in this process's memory. Then,
    as for the whole model, it is split at ``split_layer``, and without the U shape the final norm/pooler
    and head it does not run (loaded: they are small, except a causal LM's untied ``lm_head``) are dropped
    (:func:`drop_server_part`). The client half has the whole model's module names, weights and outputs
    (and, seeded alike, the same new classification head); ``num_blocks`` and ``family.num_blocks`` are the
    whole model's count.

    A ``.gguf`` checkpoint cannot be read in part (transformers dequantises the file whole): it is loaded
    whole, split, and the server's part is dropped before the adapter is attached, so this process's peak
    memory is the whole model's.
    """
    quiet_libraries()
    tokenizer = load_tokenizer(spec)
    with seeded(seed):  # a U-shaped client's new head: the same draws as split_runtime's
        if can_load_first_blocks(spec) and split_layer >= 0:  # out of range: split_model raises SplitError below
            first = load_first_blocks(spec, split_layer, tokenizer.pad_token_id)
            model, total = first.model, first.num_blocks
        else:
            first, model = None, load_task_model(spec, tokenizer.pad_token_id)
            total = num_blocks(model)
    family = family_of(model)  # of the model as loaded: its num_blocks is what the block list holds
    check_targets_exist(model, lora, family)
    client, _ = split_model(model, split_layer, u_shape=u_shape,  # the server view is dropped at once
                            bottleneck_dim=bottleneck_dim, seed=seed)
    drop_server_part(model, family, split_layer, u_shape)
    if first is None:
        release_freed_memory()  # the server's blocks are unreachable now: give their memory back
    else:
        first.restore_config()  # the checkpoint's config again, as the blocks of a whole load see it
    with seeded(seed):
        client = attach_lora(client, lora, family)
    place(torch.device(device), model, client)
    family = replace(family, num_blocks=total)  # the whole model's Family, as split_runtime's
    return ClientRuntime(tokenizer, family, client, model.config.hidden_size, total, model, spec.task, u_shape,
                         torch.device(device), precision)


def drop_server_part(model: nn.Module, family: Family, split_layer: int, u_shape: bool) -> None:
    """Remove from ``model`` what only the server runs: blocks ``split_layer..N-1`` (if it was loaded with
    them) and, without the U shape, the modules after the blocks (final norm, pooler) and the task head.
    Names of what is kept do not change.

    Safe after :func:`split_model`: the client half's views hold their own block lists and stand-ins, so it
    never reaches what is removed here (a causal LM's head tied to the token embeddings keeps the shared
    weight alive through the embeddings).
    """
    base = getattr(model, family.base)
    blocks = base.get_submodule(family.blocks)
    del blocks[split_layer:]
    if u_shape:
        return
    for slot in family.top:
        _set_module(base, slot.path, None)
    for name in family.head:
        _set_module(model, name, None)


def release_freed_memory() -> None:
    """Collect garbage and, on glibc, return freed heap pages to the OS (``malloc_trim``): tensors of a few
    MB live on the heap, so without it the memory of dropped blocks stays in the process's RSS, reusable
    by it but by no other process."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (macOS, musl): the memory is reused by this process only
        pass


def _set_module(root: nn.Module, path: str, module: nn.Module | None) -> None:
    parent_path, _, key = path.rpartition(".")
    parent = root.get_submodule(parent_path) if parent_path else root
    parent._modules[key] = module


def place(device: torch.device, *modules: nn.Module) -> None:
    """Move every parameter and buffer of ``modules`` to ``device``, in place, including the split halves'
    unregistered views (the task-model runner and head view kept in a half's ``__dict__``), whose
    containers hold copies of their own buffer tables."""
    for module in modules:
        module.to(device)
        for view in _unregistered_views(module):
            view.to(device)


def _unregistered_views(module: nn.Module) -> Iterator[nn.Module]:
    for sub in module.modules():
        for value in vars(sub).values():
            if isinstance(value, nn.Module) and value is not sub:
                yield value


def runtime_for(config: RunConfig, num_labels: int) -> SplitRuntime:
    """The whole split model on the CPU in fp32 (tools, tests, attacks), whatever ``device`` says (the same
    cached object as :func:`server_runtime` for a CPU server in fp32)."""
    return split_runtime(model_spec(config, num_labels), config.split_layer, lora_settings(config), config.seed,
                         config.u_shape, "cpu", "fp32", config.bottleneck_dim)  # all positional: one lru_cache key


def server_runtime(config: RunConfig, num_labels: int) -> SplitRuntime:
    """The ServerApp's runtime: the whole split model on run-config ``server-device`` in ``precision``.
    Raises :class:`fedguard.model.device.DeviceError` at once for a CUDA device this machine lacks."""
    device = resolve_device(config.server_device, "server-device")
    return split_runtime(model_spec(config, num_labels), config.split_layer, lora_settings(config), config.seed,
                         config.u_shape, str(device), config.precision, config.bottleneck_dim)


def client_runtime(config: RunConfig, num_labels: int) -> ClientRuntime:
    """The ClientApp's runtime: the client half only, on run-config ``device`` in ``precision``.
    Raises :class:`fedguard.model.device.DeviceError` at once for a CUDA device this machine lacks."""
    device = resolve_device(config.device, "device")
    return client_split_runtime(model_spec(config, num_labels), config.split_layer, lora_settings(config),
                                config.seed, config.u_shape, str(device), config.precision, config.bottleneck_dim)


@functools.lru_cache(maxsize=4)
def dataset_splits(dataset: str, text_column: str, label_column: str) -> DatasetSplits:
    quiet_libraries()
    return load_dataset_splits(dataset, text_column, label_column)


@dataclass(frozen=True)
class RunData:
    """The run's examples: ``train``, held-out ``dev`` (None if the data set has none) and the number of
    classes (0 for a causal LM)."""

    train: Examples
    dev: Examples | None
    num_labels: int


@functools.lru_cache(maxsize=4)
def run_data(task: str, dataset: str, text_column: str, label_column: str) -> RunData:
    """Load the run's data set for its task (classification texts+labels, or instruction records)."""
    if task == "causal-lm":
        splits = load_instruction_splits(dataset)
        return RunData(splits.train, splits.dev, 0)
    labelled = dataset_splits(dataset, text_column, label_column)
    return RunData(labelled.train, labelled.dev, labelled.num_labels)


def data_for(config: RunConfig, dataset: str | None = None) -> RunData:
    """:func:`run_data` for this config (``dataset`` overrides the run's, e.g. a SuperNode's own file)."""
    return run_data(config.task, dataset or config.dataset, config.text_column, config.label_column)


@functools.lru_cache(maxsize=16)
def shard_rows(config: RunConfig, partition_id: int, num_partitions: int, local_dataset: str | None = None) -> list[int]:
    """Training-set row of each example of the client's shard, in shard order (all rows of ``local_dataset``
    when the SuperNode was given its own file, node config ``dataset``). The canary copies a canary partition
    appends (run-config ``canaries``) are in no training-set row: :data:`CANARY_ROW` (-1)."""
    train = data_for(config, local_dataset).train
    if local_dataset:
        return list(range(len(train)))
    scheme = PartitionScheme(config.partitioner, num_partitions, config.dirichlet_alpha,
                             config.pathological_classes, config.seed)
    labels = train.label if isinstance(train, TextDataset) else [0] * len(train)  # causal LM: iid only
    rows = partition_indices(labels, scheme, partition_id)
    if receives_canaries(config, partition_id, local_dataset):
        rows += [CANARY_ROW] * (config.canaries * config.canary_repeats)
    return rows


@functools.lru_cache(maxsize=16)
def client_shard(config: RunConfig, partition_id: int, num_partitions: int, local_dataset: str | None = None) -> Examples:
    """The client's training data: partition ``partition_id`` of ``num_partitions`` of the run's data set,
    or the whole of ``local_dataset`` when the SuperNode was given its own file (node config ``dataset``).
    Partitions ``0..canary-clients-1`` end with ``canaries × canary-repeats`` canary copies
    (:mod:`fedguard.data.canaries`)."""
    data = data_for(config, local_dataset)
    rows = shard_rows(config, partition_id, num_partitions, local_dataset)
    shard = data.train.subset([row for row in rows if row != CANARY_ROW])
    if receives_canaries(config, partition_id, local_dataset):
        shard = shard.concat(canary_copies(config, data.dev, data.num_labels))
    return shard


@functools.lru_cache(maxsize=16)
def shard_word_counts(shard: Examples) -> list[int]:
    """Word count of each text: a cheap stand-in for token length, used to group batches by length."""
    return [len(text.split()) for text in shard.text]


@functools.lru_cache(maxsize=2)
def token_noise_scales(config: RunConfig, num_labels: int) -> torch.Tensor | None:
    """``dchi-importance``: each token's noise multiplier ``[V]`` (:mod:`fedguard.mechanisms.token_importance`),
    from the run's *public* held-out split, never a client's shard; None when the allocation is off."""
    if config.dchi_importance == 0:
        return None
    data = data_for(config)
    if data.dev is None or not isinstance(data.dev, TextDataset):
        raise ValueError("dchi-importance needs a labelled held-out split to rank tokens by (the data set has none)")
    tokenizer = client_runtime(config, num_labels).tokenizer
    vocab = max(len(tokenizer), int(client_runtime(config, num_labels).client.config.vocab_size))
    important = important_tokens(data.dev.text, data.dev.label, tokenizer)
    return noise_scales(important, vocab, config.dchi_importance)
