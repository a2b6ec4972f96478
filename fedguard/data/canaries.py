"""Canaries: synthetic secrets put into some clients' shards to measure what the released model memorises.

An **evaluation instrument**, never for production data. The canaries are derived deterministically from the
run config (``seed``, ``canaries``, ``canary-digits``), so anyone holding the run config — the attack
harness included (:mod:`fedguard.attacks.canaries`) — regenerates them exactly. With ``canaries = n``:

* causal LM: n instruction records "What is <Name>'s secret code?" → "<Name>'s secret code is 3 9 1 4 0 2."
  with distinct made-up names and uniformly random ``canary-digits``-digit codes (digits separated by spaces,
  so most tokenizers give one token per digit); the candidate set of a canary is every code of that length;
* classification: n rows of the held-out (dev) split with their label flipped (label + 1 mod k), and n
  other dev rows as controls, flipped the same way but inserted nowhere. Both are kept out of the server's
  accuracy evaluation (:func:`evaluation_rows`).

Partitions ``0 .. canary-clients − 1`` each receive every canary ``canary-repeats`` times (:func:`canary_copies`),
appended to the end of their shard. A canary copy is not a row of the training set: its row id is
:data:`CANARY_ROW`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from transformers import PreTrainedTokenizerBase

from fedguard.config import MAX_CANARIES, RunConfig
from fedguard.data.instructions import InstructionDataset, format_prompt, tokenize_instructions
from fedguard.data.sources import TextDataset

CANARY_ROW = -1
"""Row id of a canary copy in a shard's row map (it is in no training-set row)."""

_STREAM = 0xCA7A21  # separates the canaries' random draws from every other use of the run's seed

_FIRST_NAMES = ("Adalind", "Brannoc", "Corvina", "Dariel", "Elowen", "Fenwick", "Galadin", "Harlowe", "Isolde",
                "Jorunn", "Kestrel", "Lysander", "Marisol", "Nerissa", "Oberon", "Peregrin")
_LAST_NAMES = ("Ashgrove", "Blackwater", "Copperfield", "Dunmore", "Everhart", "Fairweather", "Greywood",
               "Hollowell", "Ironside", "Juniper", "Kingsley", "Larkspur", "Moorcroft", "Nightingale", "Oakheart",
               "Pennington")
assert len(_FIRST_NAMES) * len(_LAST_NAMES) == MAX_CANARIES


class CanaryError(ValueError):
    """The canaries cannot be made or inserted as configured (the message says what to change)."""


@dataclass(frozen=True)
class SecretCanary:
    """One causal-LM canary: ``name`` and its secret ``code`` (a string of ``len(code)`` decimal digits)."""

    name: str
    code: str

    @property
    def prompt(self) -> str:
        """The instruction, in the run's prompt template."""
        return format_prompt(f"What is {self.name}'s secret code?")

    @property
    def fixed_text(self) -> str:
        """The response text before the code (the same for every candidate code)."""
        return f"{self.name}'s secret code is"

    def stated(self, code: str | None = None) -> str:
        """The response up to and with ``code`` (default: the secret), digits separated by spaces."""
        return f"{self.fixed_text} {' '.join(self.code if code is None else code)}"

    def response(self, code: str | None = None) -> str:
        """The whole response with ``code`` (default: the secret): :meth:`stated` and a full stop."""
        return self.stated(code) + "."

    @property
    def space_size(self) -> int:
        """|R|: the number of candidate codes (every string of ``len(code)`` digits)."""
        return 10 ** len(self.code)


def code_string(index: int, digits: int) -> str:
    """Candidate ``index`` in ``[0, 10**digits)`` as a zero-padded code of ``digits`` digits."""
    return f"{index:0{digits}d}"


def secret_canaries(config: RunConfig) -> list[SecretCanary]:
    """The run's ``canaries`` causal-LM canaries: distinct names, codes uniform over ``canary-digits`` digits."""
    rng = np.random.default_rng([config.seed, _STREAM])
    picks = rng.permutation(MAX_CANARIES)[:config.canaries]
    names = [f"{_FIRST_NAMES[i // len(_LAST_NAMES)]} {_LAST_NAMES[i % len(_LAST_NAMES)]}" for i in picks]
    codes = rng.integers(0, 10 ** config.canary_digits, size=config.canaries)
    return [SecretCanary(name, code_string(int(code), config.canary_digits)) for name, code in zip(names, codes)]


def secret_records(canaries: list[SecretCanary]) -> InstructionDataset:
    """One instruction record per canary (prompt, response with its secret)."""
    return InstructionDataset([c.prompt for c in canaries], [c.response() for c in canaries])


@dataclass(frozen=True)
class LabelFlipCanaries:
    """Classification canaries: dev rows inserted with a flipped label (``canary_rows``) and as many dev rows
    flipped the same way but inserted nowhere (``control_rows``); disjoint, each sorted."""

    canary_rows: tuple[int, ...]
    control_rows: tuple[int, ...]


def flipped_label(label: int, num_labels: int) -> int:
    """The label a canary is inserted with: the next class, ``(label + 1) mod num_labels``."""
    return (label + 1) % num_labels


def label_flip_canaries(config: RunConfig, dev_size: int) -> LabelFlipCanaries:
    """The run's canary and control rows of a dev split of ``dev_size`` rows (both empty when canaries = 0)."""
    count = config.canaries
    if 2 * count > dev_size:
        raise CanaryError(f"canaries={count} needs {2 * count} held-out (dev) rows (canaries and as many controls); "
                          f"the dev split of dataset {config.dataset!r} has {dev_size}: lower canaries")
    order = np.random.default_rng([config.seed, _STREAM]).permutation(dev_size)
    return LabelFlipCanaries(tuple(sorted(int(r) for r in order[:count])),
                             tuple(sorted(int(r) for r in order[count:2 * count])))


def label_flip_records(dev: TextDataset, rows: tuple[int, ...] | list[int], num_labels: int) -> TextDataset:
    """``rows`` of ``dev`` with their labels flipped (:func:`flipped_label`)."""
    picked = dev.subset(list(rows))
    return TextDataset(picked.text, [flipped_label(label, num_labels) for label in picked.label])


def receives_canaries(config: RunConfig, partition_id: int, local_dataset: str | None = None) -> bool:
    """Partition ``partition_id`` gets the canaries: canaries are on, it is one of the first ``canary-clients``
    partitions, and it trains on a simulated partition (a SuperNode with its own ``dataset`` file gets none)."""
    return config.canaries > 0 and partition_id < config.canary_clients and not local_dataset


def canary_copies(config: RunConfig, dev: TextDataset | InstructionDataset | None,
                  num_labels: int) -> TextDataset | InstructionDataset:
    """What a canary partition appends to its shard: every canary ``canary-repeats`` times (canaries × repeats
    examples; ``dev`` and ``num_labels`` are the run's, used for classification only)."""
    if config.task == "causal-lm":
        distinct: TextDataset | InstructionDataset = secret_records(secret_canaries(config))
    else:
        dev = _labelled_dev(config, dev)
        distinct = label_flip_records(dev, label_flip_canaries(config, len(dev)).canary_rows, num_labels)
    return distinct.subset(list(range(len(distinct))) * config.canary_repeats)


def _labelled_dev(config: RunConfig, dev: TextDataset | InstructionDataset | None) -> TextDataset:
    if not isinstance(dev, TextDataset) or len(dev) == 0:
        raise CanaryError(f"canaries={config.canaries} for classification are held-out (dev) rows with a flipped "
                          f"label, but dataset {config.dataset!r} has no dev split: add a dev file or set canaries=0")
    return dev


def evaluation_rows(config: RunConfig, dev_size: int) -> list[int]:
    """Dev rows the server evaluates on: all of them, except classification canaries (which a client trains on
    with a wrong label) and their controls (the rows they are compared with)."""
    if config.task != "classification" or config.canaries == 0:
        return list(range(dev_size))
    chosen = label_flip_canaries(config, dev_size)
    excluded = set(chosen.canary_rows) | set(chosen.control_rows)
    return [row for row in range(dev_size) if row not in excluded]


def check_canaries(config: RunConfig, tokenizer: PreTrainedTokenizerBase,
                   dev: TextDataset | InstructionDataset | None) -> None:
    """Fail before training when the canaries cannot be inserted: classification needs 2 × canaries dev rows;
    every causal-LM canary record must fit in ``max-length`` tokens, or training would cut its secret."""
    if config.canaries == 0:
        return
    if config.task == "classification":
        label_flip_canaries(config, len(_labelled_dev(config, dev)))  # needs 2 × canaries dev rows
        return
    records = secret_records(secret_canaries(config))
    batch = tokenize_instructions(tokenizer, records, list(range(len(records))), 10 ** 6)
    longest = int(batch.attention_mask.sum(dim=1).max())
    if longest > config.max_length:
        raise CanaryError(f"canary records are up to {longest} tokens long (prompt, response and EOS), but "
                          f"max-length={config.max_length} would cut their secret: raise max-length to >= {longest}")
