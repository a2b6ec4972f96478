"""A real (tiny) FedGuard run directory to attack: the real ServerApp and ClientApps in this process.

The model is a tiny random BERT classifier with the packaged MiniLM tokenizer, saved as a model folder; the
run uses the packaged SST-2 and writes config.json, metrics.json, adapter/ and captures/ as ``flwr run`` would
(only the transport differs: :mod:`tests.apps.loopback`).
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import torch
from flwr.app import Context, RecordDict
from transformers import BertConfig, BertModel

from fedguard.apps import server_app
from fedguard.model.loading import ModelSpec, load_tokenizer
from fedguard.testing import ensure_message_identity
from tests.apps.flwr_harness import ROOT
from tests.apps.loopback import LoopbackGrid, node_contexts


def save_tiny_bert(folder: Path, hidden: int = 64, layers: int = 2, dropout: float = 0.1) -> Path:
    """A random BERT encoder with the MiniLM vocabulary, loadable as ``model = folder``. Like the packaged MiniLM
    it is saved without a classification head, so loading it for classification initialises one at random.
    ``dropout``: its hidden and attention dropout (BERT's default 0.1)."""
    tokenizer = load_tokenizer(ModelSpec("", "classification"))
    torch.manual_seed(0)
    model = BertModel(BertConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=4,
        intermediate_size=2 * hidden, max_position_embeddings=128, pad_token_id=tokenizer.pad_token_id,
        hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def run_tiny(output: Path, model: Path, num_partitions: int = 2, **overrides: object) -> Path:
    """One short federated run with 2 clients holding partitions 0 and 1 of ``num_partitions``
    (``overrides``: run-config keys); returns its output dir."""
    ensure_message_identity()
    raw = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    raw.update({"model": str(model), "num-server-rounds": 1, "local-steps": 4, "batch-size": 8,
                "exchange-batches": 2, "max-length": 32, "eval-examples": 16, "split-layer": 0,
                "capture-activations": 16, "output-dir": str(output), **overrides})
    grid = LoopbackGrid(node_contexts(raw, 2, num_partitions=num_partitions))
    server_app.main(grid, Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=raw))
    return output
