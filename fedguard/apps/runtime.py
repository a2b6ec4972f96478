"""Per-process caches of what is expensive to build: the split model with LoRA, the data, a client's shard.

A simulation worker process serves many virtual clients one after another, so these caches are keyed by
exactly what they hold (model, split, LoRA settings; data set and partition) and never by client. Anything
that differs per client — its adapter weights, optimiser moments, round progress — lives in the Flower
``Context.state`` and is loaded into the cached model before each use.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from fedguard.apps.quiet import quiet_libraries
from fedguard.config import RunConfig
from fedguard.data.batches import TokenBatch, tokenize
from fedguard.data.canaries import CANARY_ROW, canary_copies, receives_canaries
from fedguard.data.instructions import InstructionDataset, load_instruction_splits, tokenize_instructions
from fedguard.data.partition import PartitionScheme, partition_indices
from fedguard.data.sources import DatasetSplits, TextDataset, load_dataset_splits
from fedguard.model.loading import ModelSpec, load_task_model, load_tokenizer
from fedguard.model.lora import LoraSettings, attach_lora, check_targets_exist, unwrapped
from fedguard.model.split import Family, family_of, num_blocks, split_model

Examples = TextDataset | InstructionDataset


@dataclass
class SplitRuntime:
    """The loaded model cut in two, each half wrapped with its LoRA adapter.

    ``u_shape``: the client half also holds the head (:meth:`ClientHalf.head`) and the server half is the
    middle blocks only. ``task_model`` is the whole model; the halves are views over it, so with both
    adapters loaded it is the joined model (used to generate text).
    """

    tokenizer: PreTrainedTokenizerBase
    family: Family
    client: nn.Module
    server: nn.Module
    hidden_size: int
    num_blocks: int
    task_model: nn.Module
    task: str
    u_shape: bool

    def encode(self, data: Examples, indices: list[int], max_length: int) -> TokenBatch:
        """Tokenize examples ``indices`` of ``data`` for this task (labels ``[B]`` or ``[B, T]``)."""
        if self.task == "causal-lm":
            return tokenize_instructions(self.tokenizer, data, indices, max_length)
        return tokenize(self.tokenizer, data, indices, max_length)

    def logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The joined model's logits: ``server(client(x))``, or ``client.head(server(client(x)))`` (U-shape)."""
        hidden = self.server(self.client(input_ids, attention_mask), attention_mask)
        return unwrapped(self.client).head(hidden, attention_mask) if self.u_shape else hidden

    def eval_batches(self, data: Examples, max_length: int, batch_size: int = 64) -> list[TokenBatch]:
        """``data`` in batches of similar length (less padding; the metrics do not depend on the order)."""
        order = np.argsort([len(text) for text in data.text], kind="stable").tolist()
        return [self.encode(data, order[i:i + batch_size], max_length) for i in range(0, len(order), batch_size)]


def lora_settings(config: RunConfig) -> LoraSettings:
    return LoraSettings(config.lora_r, config.lora_alpha, config.lora_dropout, config.lora_target_modules)


def model_spec(config: RunConfig, num_labels: int) -> ModelSpec:
    return ModelSpec(config.model, config.task, num_labels)


@functools.lru_cache(maxsize=2)
def split_runtime(spec: ModelSpec, split_layer: int, lora: LoraSettings, seed: int,
                  u_shape: bool = False) -> SplitRuntime:
    """Load, split and LoRA-wrap the model. LoRA's initial A matrices are drawn with ``seed``."""
    quiet_libraries()
    tokenizer = load_tokenizer(spec)
    model = load_task_model(spec, tokenizer.pad_token_id)
    family = family_of(model)
    check_targets_exist(model, lora, family)
    client, server = split_model(model, split_layer, u_shape=u_shape)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        client = attach_lora(client, lora, family)
        server = attach_lora(server, lora, family)
    return SplitRuntime(tokenizer, family, client, server, model.config.hidden_size, num_blocks(model), model,
                        spec.task, u_shape)


def runtime_for(config: RunConfig, num_labels: int) -> SplitRuntime:
    return split_runtime(model_spec(config, num_labels), config.split_layer, lora_settings(config), config.seed,
                         config.u_shape)


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
