"""Data sources: the packaged SST-2 copy is complete and found offline; local files load; bad columns fail."""

from __future__ import annotations

import gzip
import hashlib
import json

import pytest

from fedguard.data.sources import DatasetError, load_dataset_splits, packaged_data_dir


def test_packaged_sst2_is_the_documented_bytes_with_provenance():
    folder = packaged_data_dir("sst2")
    assert (folder / "PROVENANCE.md").exists() and (folder / "LICENSE-source-repo").exists()
    digests = {name: hashlib.sha256(gzip.open(folder / f"{name}.tsv.gz").read()).hexdigest()
               for name in ("train", "dev")}
    provenance = (folder / "PROVENANCE.md").read_text()
    assert digests["train"] in provenance and digests["dev"] in provenance


def test_sst2_loads_with_glue_row_counts_and_binary_labels():
    splits = load_dataset_splits("sst2", "sentence", "label")
    assert len(splits.train) == 67_349 and len(splits.dev) == 872
    assert splits.label_names == ("0", "1")
    assert sum(splits.dev.label) == 444
    # Read verbatim (no CSV quoting): the trailing space before the tab is part of the sentence.
    assert splits.train.text[0] == "hide new secretions from the parental units "


def test_local_csv_with_string_labels(tmp_path):
    (tmp_path / "train.csv").write_text('review,stars\n"good, really",pos\nbad,neg\nfine,pos\n')
    (tmp_path / "test.csv").write_text("review,stars\nawful,neg\n")
    splits = load_dataset_splits(str(tmp_path), "review", "stars")
    assert splits.label_names == ("neg", "pos")
    assert splits.train.text[0] == "good, really" and splits.train.label == [1, 0, 1]
    assert splits.dev is not None and splits.dev.label == [0]


def test_local_jsonl_file(tmp_path):
    path = tmp_path / "mine.jsonl"
    path.write_text("\n".join(json.dumps({"t": f"text {i}", "y": i % 3}) for i in range(6)))
    splits = load_dataset_splits(str(path), "t", "y")
    assert splits.num_labels == 3 and splits.dev is None and len(splits.train) == 6


def test_missing_column_names_the_columns_that_exist(tmp_path):
    path = tmp_path / "train.tsv"
    path.write_text("sentence\tlabel\nhello\t1\nbye\t0\n")
    with pytest.raises(DatasetError, match=r"text-column='text' not found; columns are \['sentence', 'label'\]"):
        load_dataset_splits(str(path), "text", "label")


def test_missing_path_is_a_clear_error(tmp_path):
    with pytest.raises(DatasetError, match="no such file or folder"):
        load_dataset_splits(str(tmp_path / "nope.csv"), "text", "label")
