"""Per-process caches of what is expensive to build: the split model with LoRA, the data, a client's shard.

A simulation worker process serves many virtual clients one after another, so these caches are keyed by
exactly what they hold (model, split, LoRA settings; data set and partition) and never by client. Anything
that differs per client — its adapter weights, optimiser moments, round progress — lives in the Flower
``Context.state`` and is loaded into the cached model before each use.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from fedguard.apps.quiet import quiet_libraries
from fedguard.config import RunConfig
from fedguard.data.partition import PartitionScheme, partition_indices
from fedguard.data.sources import DatasetSplits, TextDataset, load_dataset_splits
from fedguard.model.loading import ModelSpec, load_task_model, load_tokenizer
from fedguard.model.lora import LoraSettings, attach_lora, check_targets_exist
from fedguard.model.split import Family, family_of, num_blocks, split_model


@dataclass
class SplitRuntime:
    """The loaded model cut in two, each half wrapped with its LoRA adapter."""

    tokenizer: PreTrainedTokenizerBase
    family: Family
    client: nn.Module
    server: nn.Module
    hidden_size: int
    num_blocks: int


def lora_settings(config: RunConfig) -> LoraSettings:
    return LoraSettings(config.lora_r, config.lora_alpha, config.lora_dropout, config.lora_target_modules)


def model_spec(config: RunConfig, num_labels: int) -> ModelSpec:
    return ModelSpec(config.model, config.task, num_labels)


@functools.lru_cache(maxsize=2)
def split_runtime(spec: ModelSpec, split_layer: int, lora: LoraSettings, seed: int) -> SplitRuntime:
    """Load, split and LoRA-wrap the model. LoRA's initial A matrices are drawn with ``seed``."""
    quiet_libraries()
    tokenizer = load_tokenizer(spec)
    model = load_task_model(spec, tokenizer.pad_token_id)
    family = family_of(model)
    check_targets_exist(model, lora, family)
    client, server = split_model(model, split_layer)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        client = attach_lora(client, lora, family)
        server = attach_lora(server, lora, family)
    return SplitRuntime(tokenizer, family, client, server, model.config.hidden_size, num_blocks(model))


def runtime_for(config: RunConfig, num_labels: int) -> SplitRuntime:
    return split_runtime(model_spec(config, num_labels), config.split_layer, lora_settings(config), config.seed)


@functools.lru_cache(maxsize=4)
def dataset_splits(dataset: str, text_column: str, label_column: str) -> DatasetSplits:
    quiet_libraries()
    return load_dataset_splits(dataset, text_column, label_column)


@functools.lru_cache(maxsize=16)
def client_shard(config: RunConfig, partition_id: int, num_partitions: int, local_dataset: str | None = None) -> TextDataset:
    """The client's training data: partition ``partition_id`` of ``num_partitions`` of the run's data set,
    or the whole of ``local_dataset`` when the SuperNode was given its own file (node config ``dataset``)."""
    if local_dataset:
        return dataset_splits(local_dataset, config.text_column, config.label_column).train
    scheme = PartitionScheme(config.partitioner, num_partitions, config.dirichlet_alpha,
                             config.pathological_classes, config.seed)
    train = dataset_splits(config.dataset, config.text_column, config.label_column).train
    return train.subset(partition_indices(train.label, scheme, partition_id))


@functools.lru_cache(maxsize=16)
def shard_word_counts(shard: TextDataset) -> list[int]:
    """Word count of each text: a cheap stand-in for token length, used to group batches by length."""
    return [len(text.split()) for text in shard.text]
