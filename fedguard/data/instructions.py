"""Instruction-tuning data for the causal-LM task: prompt/response pairs, their template and loss masking.

:func:`load_instruction_splits` reads the packaged alpaca-libre copy or a local Alpaca-style or chat-style
JSON(L) file or folder into :class:`InstructionSplits`; :func:`tokenize_instructions` turns a batch of them
into token ids whose ``labels`` are the response tokens (plus EOS) and ``-100`` on the prompt and padding,
so the loss is computed on the response only. Nothing is downloaded.
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from fedguard.data.batches import TokenBatch
from fedguard.data.sources import DatasetError, packaged_data_dir, split_files

ALPACA_LIBRE = "alpaca-libre"
_ALPACA_LIBRE_DIR = "alpaca_libre"
_ALPACA_LIBRE_FILE = "tasks_v1.jsonl.gz"
# Seed of the permutation that picks the held-out dev records when a data set has no dev file. A constant,
# independent of the run's ``seed``, so every run (and every seed) evaluates on the same records.
DEV_HOLDOUT_SEED = 20_240_617
IGNORE_INDEX = -100  # label of positions that do not count in the loss (torch's cross_entropy default)

_SUFFIXES = (".jsonl", ".json", ".jsonl.gz", ".json.gz")

PROMPT_TEMPLATE = MappingProxyType({
    "input": (
        "Below is an instruction that describes a task, paired with an input that provides further context. "
        "Write a response that appropriately completes the request.\n\n"
        "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
    ),
    "no_input": (
        "Below is an instruction that describes a task. "
        "Write a response that appropriately completes the request.\n\n"
        "### Instruction:\n{instruction}\n\n### Response:\n"
    ),
})
"""The Stanford Alpaca prompt: ``"input"`` for records with a non-empty input, ``"no_input"`` otherwise."""

CHAT_TURN_TEMPLATE = "### {role}:\n{content}\n\n"
CHAT_RESPONSE_HEADER = "### Assistant:\n"


@dataclass(frozen=True, eq=False)
class InstructionDataset:
    """Parallel lists of prompts (template applied) and the responses the model should learn to produce."""

    prompt: list[str]
    response: list[str]

    def __post_init__(self) -> None:
        if len(self.prompt) != len(self.response):
            raise ValueError(f"{len(self.prompt)} prompts but {len(self.response)} responses")

    def __len__(self) -> int:
        return len(self.prompt)

    def subset(self, indices: list[int]) -> InstructionDataset:
        return InstructionDataset([self.prompt[i] for i in indices], [self.response[i] for i in indices])

    def concat(self, other: InstructionDataset) -> InstructionDataset:
        """This data set's records followed by ``other``'s."""
        return InstructionDataset(self.prompt + other.prompt, self.response + other.response)

    @property
    def text(self) -> list[str]:
        """Prompt and response joined, one string per record (e.g. for length-grouping by word count)."""
        return [p + r for p, r in zip(self.prompt, self.response)]


@dataclass(frozen=True)
class InstructionSplits:
    """``train`` and held-out ``dev`` records."""

    train: InstructionDataset
    dev: InstructionDataset


def format_prompt(instruction: str, input: str = "") -> str:  # noqa: A002 - the Alpaca field name
    """The Alpaca prompt for ``instruction`` (and ``input`` when it is not blank), ending in ``### Response:\\n``."""
    if input.strip():
        return PROMPT_TEMPLATE["input"].format(instruction=instruction, input=input)
    return PROMPT_TEMPLATE["no_input"].format(instruction=instruction)


def format_chat_prompt(messages: list[dict[str, str]]) -> str:
    """Role-tagged rendering of the turns before the answer, ending in ``### Assistant:\\n``.

    Each turn becomes ``### Role:\\n<content>\\n\\n`` (role capitalised: System, User, Assistant, ...). No
    tokenizer chat template is needed, so any causal LM can be tuned on chat data.
    """
    turns = "".join(CHAT_TURN_TEMPLATE.format(role=m["role"].capitalize(), content=m["content"]) for m in messages)
    return turns + CHAT_RESPONSE_HEADER


def load_instruction_splits(dataset: str, dev_examples: int = 100) -> InstructionSplits:
    """Load ``dataset`` ('alpaca-libre' or a local path) into train/dev prompt/response pairs.

    A local ``dataset`` is a ``.json``/``.jsonl`` file (optionally ``.gz``) or a folder with ``train.*`` and
    optionally ``dev.*``/``validation.*``/``valid.*``/``test.*``. Records are Alpaca-style (``instruction``,
    optional ``input``, ``output``; rows whose ``status`` field is present and not ``"ok"`` are dropped) or
    chat-style (``messages``: a list of ``{role, content}``; the last assistant message is the response and
    the turns before it the prompt). Without a dev file, ``dev_examples`` records are held out by a
    permutation with the fixed seed :data:`DEV_HOLDOUT_SEED` (the same records in every run; a smaller
    ``dev_examples`` holds out a subset of a larger one's); with a dev file ``dev_examples`` is ignored.
    """
    if dev_examples < 0:
        raise ValueError(f"dev_examples={dev_examples} must be >= 0")
    if dataset == ALPACA_LIBRE:
        files = {"train": packaged_data_dir(_ALPACA_LIBRE_DIR) / _ALPACA_LIBRE_FILE}
    else:
        files = split_files(Path(dataset).expanduser(), _SUFFIXES, ALPACA_LIBRE)
    parts = {split: _parse_records(_read_records(path), path) for split, path in files.items()}
    if "dev" in parts:
        return InstructionSplits(train=parts["train"], dev=parts["dev"])
    data = parts["train"]
    if dev_examples >= len(data):
        raise DatasetError(f"{files['train']}: {len(data)} usable records, too few to hold out "
                           f"dev_examples={dev_examples} and keep a training record")
    order = np.random.default_rng(DEV_HOLDOUT_SEED).permutation(len(data))
    dev = sorted(order[:dev_examples].tolist())
    train = sorted(order[dev_examples:].tolist())
    return InstructionSplits(train=data.subset(train), dev=data.subset(dev))


def _read_records(path: Path) -> list[object]:
    name = path.name.removesuffix(".gz")
    if not name.endswith((".json", ".jsonl")):
        raise DatasetError(f"{path}: unsupported file type for instruction data; use .json or .jsonl "
                           "(optionally .gz)")
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8") as handle:
            if name.endswith(".jsonl"):
                records = []
                for number, line in enumerate(handle, start=1):
                    if line.strip():
                        try:
                            records.append(json.loads(line))
                        except json.JSONDecodeError as error:
                            raise DatasetError(f"{path}: line {number} is not valid JSON ({error.msg})") from None
            else:
                text = handle.read()
                if not text.strip():
                    records = []
                else:
                    try:
                        records = json.loads(text)
                    except json.JSONDecodeError as error:
                        raise DatasetError(f"{path}: not valid JSON ({error.msg} at line {error.lineno})") from None
                    if isinstance(records, dict) and isinstance(records.get("data"), list):
                        records = records["data"]
                    if not isinstance(records, list):
                        raise DatasetError(f"{path}: expected a JSON list of records (or {{\"data\": [...]}})")
    except (OSError, EOFError, UnicodeDecodeError) as error:
        if isinstance(error, FileNotFoundError):
            raise DatasetError(f"{path}: no such file") from None
        raise DatasetError(f"{path}: cannot be read as UTF-8 JSON ({error})") from None
    if not records:
        raise DatasetError(f"{path}: no records")
    return records


def _parse_records(records: list[object], path: Path) -> InstructionDataset:
    prompts: list[str] = []
    responses: list[str] = []
    for number, record in enumerate(records, start=1):
        where = f"{path}: record {number}"
        if not isinstance(record, dict):
            raise DatasetError(f"{where} is a {type(record).__name__}, not a JSON object")
        if "messages" in record:
            prompt, response = _chat_pair(record["messages"], where)
        elif "instruction" in record or "output" in record:
            if "status" in record and record["status"] != "ok":
                continue
            prompt, response = _alpaca_pair(record, where)
        else:
            raise DatasetError(f"{where} has neither Alpaca fields ('instruction', 'output') nor chat "
                               f"'messages'; its fields are {sorted(record)}")
        prompts.append(prompt)
        responses.append(response)
    if not prompts:
        raise DatasetError(f"{path}: none of its {len(records)} records has status 'ok'")
    return InstructionDataset(prompts, responses)


def _alpaca_pair(record: dict, where: str) -> tuple[str, str]:
    for field in ("instruction", "output"):
        if field not in record:
            raise DatasetError(f"{where} lacks the field {field!r} (Alpaca records need 'instruction' and "
                               f"'output'); its fields are {sorted(record)}")
    values = {"instruction": record["instruction"], "input": record.get("input") or "", "output": record["output"]}
    for field, value in values.items():
        if not isinstance(value, str):
            raise DatasetError(f"{where}: field {field!r} is a {type(value).__name__}, not a string")
    if not values["instruction"].strip():
        raise DatasetError(f"{where}: field 'instruction' is empty")
    return format_prompt(values["instruction"], values["input"]), values["output"]


def _chat_pair(messages: object, where: str) -> tuple[str, str]:
    if not isinstance(messages, list) or not messages:
        raise DatasetError(f"{where}: 'messages' must be a non-empty list of {{role, content}} objects")
    for turn, message in enumerate(messages, start=1):
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise DatasetError(f"{where}: message {turn} must be an object with 'role' and 'content'")
        if not isinstance(message["role"], str) or not isinstance(message["content"], str):
            raise DatasetError(f"{where}: message {turn} has a non-string 'role' or 'content'")
    last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=None)
    if last is None:
        raise DatasetError(f"{where}: no message with role 'assistant' (the response to learn)")
    return format_chat_prompt(messages[:last]), messages[last]["content"]


def tokenize_instructions(
    tokenizer: PreTrainedTokenizerBase, data: InstructionDataset, indices: list[int], max_length: int
) -> TokenBatch:
    """Token ids, padding mask and per-token labels ``[B, T]`` of the records ``indices`` of ``data``.

    Each row is ``[BOS] + prompt + response + [EOS]``: prompt and response are tokenized separately without
    special tokens; BOS is whatever the tokenizer puts in front of a text on its own (e.g. ``<s>``, BERT's
    ``[CLS]``; nothing for tokenizers that add none) and EOS is its ``eos_token_id`` (else ``sep_token_id``).
    A row longer than ``max_length`` loses the end of its response first (EOS included), then the end of its
    prompt, keeping at least one response token when ``max_length`` allows. Rows are right-padded with
    ``pad_token_id`` to the longest row. ``labels`` equal ``input_ids`` on the response and EOS and are
    ``-100`` on BOS, the prompt and padding; they are not shifted (the loss shifts them). No ``indices``
    gives an empty ``[0, 1]`` batch.
    """
    if max_length < 1:
        raise ValueError(f"max_length={max_length} must be >= 1")
    if not indices:  # an empty Poisson batch
        empty = torch.zeros((0, 1), dtype=torch.long)
        return TokenBatch(empty, empty.clone(), empty.clone())
    if tokenizer.pad_token_id is None:
        raise ValueError("the tokenizer has no pad token (fedguard.model.loading.load_tokenizer sets one)")
    bos = _leading_special_ids(tokenizer)
    eos = end_of_response_id(tokenizer)
    prompts = tokenizer([data.prompt[i] for i in indices], add_special_tokens=False)["input_ids"]
    responses = tokenizer([data.response[i] for i in indices], add_special_tokens=False)["input_ids"]
    rows: list[tuple[list[int], list[int]]] = []
    for prompt, response in zip(prompts, responses):
        prompt, response = bos + list(prompt), list(response) + [eos]
        room = max_length - len(prompt)
        if room < 1:  # the prompt alone fills max_length: cut its end, keep one response token if possible
            keep_response = 1 if max_length > len(bos) else 0
            prompt = prompt[:max_length - keep_response]
            room = keep_response
        rows.append((prompt, response[:room]))
    width = max(len(p) + len(r) for p, r in rows)
    input_ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    for row, (prompt, response) in enumerate(rows):
        ids = torch.tensor(prompt + response, dtype=torch.long)
        input_ids[row, :len(ids)] = ids
        attention_mask[row, :len(ids)] = 1
        labels[row, len(prompt):len(ids)] = ids[len(prompt):]
    return TokenBatch(input_ids, attention_mask, labels)


def prompt_token_ids(tokenizer: PreTrainedTokenizerBase, prompt: str) -> list[int]:
    """``prompt`` encoded exactly as :func:`tokenize_instructions` encodes it (BOS, if any, + prompt tokens):
    the input to generate a response from."""
    return _leading_special_ids(tokenizer) + list(tokenizer(prompt, add_special_tokens=False)["input_ids"])


def end_of_response_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The token appended to every response: ``eos_token_id``, else ``sep_token_id`` (BERT-style vocabularies)."""
    eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
    if eos is None:
        raise ValueError("the tokenizer has neither an EOS nor a SEP token to end the response with")
    return eos


def _leading_special_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """The special tokens the tokenizer puts before a text when it adds special tokens (its BOS, if any)."""
    probe = "a"
    plain = tokenizer(probe, add_special_tokens=False)["input_ids"]
    full = tokenizer(probe)["input_ids"]
    special = set(tokenizer.all_special_ids)
    for start in range(len(full) - len(plain) + 1):
        if full[start:start + len(plain)] == plain:
            return [t for t in full[:start] if t in special]
    return []
