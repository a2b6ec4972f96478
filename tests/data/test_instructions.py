"""Instruction data: the packaged alpaca-libre copy, local Alpaca/chat files, the prompt template, and
tokenization whose labels mask exactly the prompt and the padding."""

from __future__ import annotations

import copy
import gzip
import hashlib
import json
from collections import Counter

import pytest
import torch

from fedguard.data.instructions import (
    DEV_HOLDOUT_SEED,
    InstructionDataset,
    format_prompt,
    load_instruction_splits,
    prompt_token_ids,
    tokenize_instructions,
)
from fedguard.data.sources import DatasetError, packaged_data_dir
from fedguard.model.loading import ModelSpec, load_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(ModelSpec("", "classification"))  # the packaged MiniLM: [CLS] ... [SEP], [PAD] = 0


def _pairs(data: InstructionDataset) -> Counter:
    return Counter(zip(data.prompt, data.response))


def _packaged_rows() -> list[dict]:
    with gzip.open(packaged_data_dir("alpaca_libre") / "tasks_v1.jsonl.gz", "rt", encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


# --- the packaged copy ------------------------------------------------------------------------------------

def test_packaged_alpaca_libre_is_the_documented_bytes_with_provenance():
    folder = packaged_data_dir("alpaca_libre")
    provenance = (folder / "PROVENANCE.md").read_text()
    assert (folder / "LICENSE-source-repo").read_text().startswith("MIT License")
    packed = (folder / "tasks_v1.jsonl.gz").read_bytes()
    assert hashlib.sha256(gzip.decompress(packed)).hexdigest() in provenance  # the original file's digest
    assert hashlib.sha256(packed).hexdigest() in provenance  # and the shipped .gz's
    assert "1,202" in provenance


def test_alpaca_libre_keeps_exactly_the_status_ok_rows_split_into_train_and_100_dev():
    rows = _packaged_rows()
    ok = Counter((format_prompt(r["instruction"], r["input"]), r["output"]) for r in rows if r["status"] == "ok")
    assert len(rows) == 2_375 and sum(ok.values()) == 1_202
    splits = load_instruction_splits("alpaca-libre")
    assert len(splits.dev) == 100 and len(splits.train) == 1_102
    # Train and dev together are the status-ok rows, each exactly once: disjoint, nothing dropped or added.
    assert _pairs(splits.train) + _pairs(splits.dev) == ok


def test_dev_hold_out_is_stable_across_calls_and_nested_and_not_just_the_file_head():
    first, again = load_instruction_splits("alpaca-libre"), load_instruction_splits("alpaca-libre")
    assert first.dev.prompt == again.dev.prompt and first.dev.response == again.dev.response
    assert first.train.prompt == again.train.prompt
    smaller = load_instruction_splits("alpaca-libre", dev_examples=40)
    assert len(smaller.dev) == 40 and not _pairs(smaller.dev) - _pairs(first.dev)  # a subset of the 100
    ok = [r for r in _packaged_rows() if r["status"] == "ok"]
    head = [r["output"] for r in ok[:100]]
    assert first.dev.response != head and first.dev.response != [r["output"] for r in ok[-100:]]
    assert isinstance(DEV_HOLDOUT_SEED, int)


def test_text_joins_prompt_and_response_and_subset_keeps_pairs():
    data = InstructionDataset(["p0 ", "p1 ", "p2 "], ["r0", "r1", "r2"])
    assert data.text == ["p0 r0", "p1 r1", "p2 r2"]
    part = data.subset([2, 0])
    assert part.prompt == ["p2 ", "p0 "] and part.response == ["r2", "r0"] and len(part) == 2


# --- the template -----------------------------------------------------------------------------------------

def test_format_prompt_is_the_alpaca_template_with_and_without_input():
    assert format_prompt("Add the numbers.", "2 and 3") == (
        "Below is an instruction that describes a task, paired with an input that provides further context. "
        "Write a response that appropriately completes the request.\n\n"
        "### Instruction:\nAdd the numbers.\n\n### Input:\n2 and 3\n\n### Response:\n"
    )
    no_input = ("Below is an instruction that describes a task. Write a response that appropriately completes "
                "the request.\n\n### Instruction:\nName a colour.\n\n### Response:\n")
    assert format_prompt("Name a colour.") == no_input
    assert format_prompt("Name a colour.", "  \n") == no_input  # a blank input is no input


# --- local files ------------------------------------------------------------------------------------------

def test_local_alpaca_json_drops_non_ok_status_and_uses_the_dev_file(tmp_path):
    rows = [
        {"instruction": "Say hi.", "input": "", "output": "Hi!", "status": "ok"},
        {"instruction": "Say bye.", "input": "", "output": "Bye.", "status": "too similar"},
        {"instruction": "Echo.", "input": None, "output": "x"},  # no status: kept; null input = none
        {"instruction": "Translate.", "input": "chat", "output": "cat", "status": "ok"},
    ]
    (tmp_path / "train.json").write_text(json.dumps(rows))
    (tmp_path / "validation.jsonl").write_text(json.dumps({"instruction": "Count.", "output": "1 2 3"}) + "\n")
    splits = load_instruction_splits(str(tmp_path), dev_examples=3)  # a dev file: nothing is held out
    assert splits.train.response == ["Hi!", "x", "cat"]
    assert splits.train.prompt == [format_prompt("Say hi."), format_prompt("Echo."),
                                   format_prompt("Translate.", "chat")]
    assert splits.dev.prompt == [format_prompt("Count.")] and splits.dev.response == ["1 2 3"]


def test_chat_jsonl_gz_prompt_is_the_turns_before_the_last_assistant_message(tmp_path):
    record = {"messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "And 3+3?"},
        {"role": "assistant", "content": "6"},
    ]}
    trailing_user = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
                                  {"role": "user", "content": "ignored"}]}
    with gzip.open(tmp_path / "train.jsonl.gz", "wt", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n\n" + json.dumps(trailing_user) + "\n")
    splits = load_instruction_splits(str(tmp_path / "train.jsonl.gz"), dev_examples=1)
    data = InstructionDataset(splits.train.prompt + splits.dev.prompt, splits.train.response + splits.dev.response)
    by_response = dict(zip(data.response, data.prompt))
    assert by_response["6"] == ("### System:\nBe brief.\n\n### User:\n2+2?\n\n### Assistant:\n4\n\n"
                                "### User:\nAnd 3+3?\n\n### Assistant:\n")
    assert by_response["Hello"] == "### User:\nHi\n\n### Assistant:\n"


def test_held_out_dev_from_a_local_file_is_disjoint_from_train(tmp_path):
    rows = [{"instruction": f"Task {i}.", "output": f"answer {i}"} for i in range(30)]
    (tmp_path / "data.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    splits = load_instruction_splits(str(tmp_path / "data.jsonl"), dev_examples=7)
    assert len(splits.dev) == 7 and len(splits.train) == 23
    assert set(splits.dev.response).isdisjoint(splits.train.response)
    assert sorted(splits.dev.response + splits.train.response) == sorted(r["output"] for r in rows)
    again = load_instruction_splits(str(tmp_path / "data.jsonl"), dev_examples=7)
    assert splits.dev.response == again.dev.response


_OK = '{"instruction": "a", "output": "b"}'
BAD_FILES = [  # (file name, content, what the error must say)
    ("bad.jsonl", _OK + '\n{"instruction": "c"}\n', r"bad\.jsonl: record 2 lacks the field 'output'"),
    ("bad.jsonl", '{"prompt": "a", "completion": "b"}\n',
     r"record 1 has neither Alpaca fields .* fields are \['completion', 'prompt'\]"),
    ("bad.jsonl", '{"messages": [{"role": "user", "content": "hi"}]}\n', r"record 1: no message with role 'assistant'"),
    ("bad.jsonl", '{"messages": [{"role": "user"}, {"role": "assistant", "content": "x"}]}\n',
     r"record 1: message 1 must be an object with 'role' and 'content'"),
    ("bad.jsonl", '{"instruction": "a", "output": 3}\n', r"record 1: field 'output' is a int"),
    ("bad.jsonl", _OK + "\nnot json\n", r"bad\.jsonl: line 2 is not valid JSON"),
    ("bad.json", _OK, r"bad\.json: expected a JSON list of records"),
    ("empty.jsonl", "\n\n", r"empty\.jsonl: no records"),
    ("empty.json", "[]", r"empty\.json: no records"),
    ("bad.jsonl", '{"instruction": "a", "output": "b", "status": "too similar"}\n',
     r"none of its 1 records has status 'ok'"),
    ("data.csv", "instruction,output\na,b\n", r"data\.csv: unsupported file type"),
]


@pytest.mark.parametrize(("name", "content", "message"), BAD_FILES)
def test_bad_files_fail_naming_the_file_and_record(tmp_path, name, content, message):
    (tmp_path / name).write_text(content)
    with pytest.raises(DatasetError, match=message):
        load_instruction_splits(str(tmp_path / name), dev_examples=0)


def test_missing_paths_folders_without_train_and_too_small_sets_fail(tmp_path):
    with pytest.raises(DatasetError, match="no such file or folder"):
        load_instruction_splits(str(tmp_path / "nope.jsonl"))
    (tmp_path / "dev.jsonl").write_text('{"instruction": "a", "output": "b"}\n')
    with pytest.raises(DatasetError, match="has no train file"):
        load_instruction_splits(str(tmp_path))
    with pytest.raises(DatasetError, match=r"dev\.jsonl: 1 usable records, too few to hold out dev_examples=1"):
        load_instruction_splits(str(tmp_path / "dev.jsonl"), dev_examples=1)


# --- tokenization -----------------------------------------------------------------------------------------

def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def test_labels_mask_exactly_bos_prompt_and_padding(tokenizer):
    data = InstructionDataset([format_prompt("Name a colour."), format_prompt("Add.", "2 and 3")],
                              ["Blue, like the sky on a clear day.", "5"])
    batch = tokenize_instructions(tokenizer, data, [0, 1], max_length=128)
    cls, sep, pad = tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id
    assert batch.input_ids.shape == batch.labels.shape == batch.attention_mask.shape
    assert batch.labels.dtype == torch.long
    for row, i in enumerate([0, 1]):
        prompt, response = [cls] + _ids(tokenizer, data.prompt[i]), _ids(tokenizer, data.response[i]) + [sep]
        n = len(prompt) + len(response)
        assert batch.input_ids[row, :n].tolist() == prompt + response
        assert batch.attention_mask[row].tolist() == [1] * n + [0] * (batch.input_ids.shape[1] - n)
        assert (batch.input_ids[row, n:] == pad).all()
        expected = [-100] * len(prompt) + response + [-100] * (batch.input_ids.shape[1] - n)
        assert batch.labels[row].tolist() == expected  # unshifted: label t is the token at t
        assert prompt_token_ids(tokenizer, data.prompt[i]) == prompt  # generation sees the training prompt
    lengths = batch.attention_mask.sum(dim=1)
    assert lengths.max() == batch.input_ids.shape[1] > lengths.min()  # padded to the longest row; one is padded


def test_eos_is_a_label_even_when_it_is_also_the_pad_token(tokenizer):
    same = copy.deepcopy(tokenizer)
    same.eos_token = same.pad_token  # like SmolLM2 / GPT-2: padding with EOS, and EOS id 0 here
    data = InstructionDataset(["Q: long question here? A:", "Q? A:"], ["yes", "no"])
    batch = tokenize_instructions(same, data, [0, 1], max_length=64)
    short = batch.attention_mask[1].sum().item()
    assert batch.input_ids[1, short - 1] == same.pad_token_id == same.eos_token_id
    assert batch.labels[1, short - 1] == same.eos_token_id  # the real EOS is learned...
    assert (batch.labels[1, short:] == -100).all() and short < batch.input_ids.shape[1]  # ...padding is not


def test_truncation_cuts_the_response_end_first_then_the_prompt_end(tokenizer):
    prompt, response = "one two three four five six", "alpha beta gamma delta"
    p, r = _ids(tokenizer, prompt), _ids(tokenizer, response)
    data = InstructionDataset([prompt], [response])
    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id

    fits = tokenize_instructions(tokenizer, data, [0], max_length=1 + len(p) + len(r) + 1)
    assert fits.input_ids[0].tolist() == [cls] + p + r + [sep]

    cut_response = tokenize_instructions(tokenizer, data, [0], max_length=1 + len(p) + 2)
    assert cut_response.input_ids[0].tolist() == [cls] + p + r[:2]  # the response's end (and EOS) go
    assert cut_response.labels[0].tolist() == [-100] * (1 + len(p)) + r[:2]

    cut_prompt = tokenize_instructions(tokenizer, data, [0], max_length=4)
    assert cut_prompt.input_ids[0].tolist() == [cls] + p[:2] + r[:1]  # the prompt's start and one response token
    assert cut_prompt.labels[0].tolist() == [-100, -100, -100, r[0]]

    assert tokenize_instructions(tokenizer, data, [0], max_length=1).input_ids[0].tolist() == [cls]


def test_empty_indices_give_an_empty_batch(tokenizer):
    batch = tokenize_instructions(tokenizer, InstructionDataset(["a"], ["b"]), [], max_length=16)
    assert batch.input_ids.shape == batch.attention_mask.shape == batch.labels.shape == (0, 1)
    assert batch.labels.dtype == torch.long


def _word_tokenizer(add_bos: bool):
    """A whitespace word-level tokenizer with <s>/</s>/<pad>, optionally adding <s> like Llama's does."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, "hello": 4, "world": 5, "hi": 6}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    if add_bos:
        backend.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>", unk_token="<unk>")


@pytest.mark.parametrize(("add_bos", "start"), [(True, [1]), (False, [])])
def test_bos_is_added_only_if_the_tokenizer_adds_it_and_eos_ends_the_response(add_bos, start):
    tokenizer = _word_tokenizer(add_bos)
    assert tokenizer("hello")["input_ids"] == start + [4]
    batch = tokenize_instructions(tokenizer, InstructionDataset(["hello world", "hi"], ["hi", "world"]), [0, 1], 16)
    assert batch.input_ids.tolist() == [start + [4, 5, 6, 2], start + [6, 5, 2, 0]]
    assert batch.labels.tolist() == [[-100] * len(start) + [-100, -100, 6, 2],
                                     [-100] * len(start) + [-100, 5, 2, -100]]
    assert prompt_token_ids(tokenizer, "hello world") == start + [4, 5]
